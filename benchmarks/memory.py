"""Peak memory, two ways (both reported; CPU devices have no `memory_stats()` in jax 0.10).

- XLA buffers (`xla_peak_bytes`): for each compiled stage of a pipeline, arguments + outputs + temporaries
  - aliased bytes, from `compiled.memory_analysis()`; the pipeline's peak is the largest stage. This is the
  CPU analogue of a GPU's peak device memory (the paper's Table 4 measure): exact, deterministic, and
  independent of the Python runtime and the compiler. The overhead targets are judged on it.
- Process peak RSS (`rss_probe`): a fresh `python -m benchmarks.memory_probe` builds, compiles and runs one
  workload once and reports its peak resident size (`VmHWM`); it includes the interpreter, the imported
  libraries, the JAX runtime and compilation, so relative overheads come out smaller than the buffers' own.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax

from benchmarks.report import figure, skipped
from benchmarks.workloads import Pipeline

ROOT = pathlib.Path(__file__).resolve().parent.parent
RSS_OFF = "skipped: --norss"


def stage_bytes(compiled: jax.stages.Compiled) -> int:
    """Arguments + outputs + temporaries - aliased bytes of a compiled XLA executable."""
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


def xla_peak_bytes(pipeline: Pipeline) -> int:
    """The largest `stage_bytes` over a pipeline's stages."""
    return max(stage_bytes(c) for c in pipeline.compiled)


def pipeline_figures(name: str, pipeline: Pipeline, timing) -> dict[str, dict]:
    """The figures every side-by-side case reports of one compiled pipeline: `<name>_s` (median), `_warmup_s`,
    `_compile_s` and `_xla_bytes` (its peak XLA buffers); `timing` is its `benchmarks.timing` result."""
    return {f"{name}_s": figure(timing.median_s, "s"), f"{name}_warmup_s": figure(timing.warmup_s, "s"),
            f"{name}_compile_s": figure(pipeline.compile_s, "s"),
            f"{name}_xla_bytes": figure(xla_peak_bytes(pipeline), "bytes")}


def rss_probe(workload: str, preset: str, quick: bool, eos_id: int, timeout_s: float = 600) -> dict:
    """Runs `workload` once in a fresh process; returns its `peak_rss_bytes` and `before_rss_bytes` (built and
    compiled, just before the run)."""
    command = [sys.executable, "-m", "benchmarks.memory_probe", f"--workload={workload}", f"--preset={preset}",
               f"--eos_id={eos_id}", f"--quick={'true' if quick else 'false'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_figures(name: str, workload: str, preset: str, quick: bool, eos_id: int, enabled: bool) -> dict:
    """`<name>_peak_rss_bytes` and `<name>_before_rss_bytes` from `rss_probe`, or both skipped (`RSS_OFF`)."""
    if not enabled:
        return {f"{name}_{key}": skipped("bytes", RSS_OFF) for key in ("peak_rss_bytes", "before_rss_bytes")}
    rss = rss_probe(workload, preset, quick, eos_id)
    return {f"{name}_{key}": figure(rss[key], "bytes") for key in ("peak_rss_bytes", "before_rss_bytes")}
