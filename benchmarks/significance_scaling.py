r"""How the exact analysis scales with chain length and step count, against one forward pass.

    python -m benchmarks.significance_scaling --out=benchmarks/results/significance_scaling.json

Random token chains on `tiny` with its context widened to 1024 (`cfg.replace(max_seq_len=1024)`, the analysis
is defined for any length), `n` equal steps. Times are medians of `--repeats` runs after compilation; memory is
XLA's compiled temporary buffer size. Writes JSON with the machine and versions.
"""

from __future__ import annotations

import json
import pathlib
import platform
import time

import jax
import numpy as np
from absl import app, flags

import sage_jax as sj
from benchmarks.workloads import chain
from sage_jax.interpret.significance import significance

_OUT = flags.DEFINE_string("out", "benchmarks/results/significance_scaling.json", "Where to write the JSON.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per case (median reported).")
_CASES = flags.DEFINE_list("cases", ["64:8", "256:8", "1024:8", "256:2", "256:32"], "tokens:steps pairs.")


def _median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return float(np.median(runs))


def _temp_mib(fn, *args) -> float:
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


def main(argv):
    del argv
    cfg = sj.configs.get("tiny").replace(max_seq_len=1024)
    params = sj.init_params(cfg, jax.random.key(0))
    fwd = jax.jit(lambda p, t: sj.forward(p, t[None], cfg, record="attn").logits)
    sig = jax.jit(lambda p, t, s: significance(p, cfg, t, s).score)
    rows = []
    for case in _CASES.value:
        length, n_steps = (int(x) for x in case.split(":"))
        tokens, steps = chain(cfg, length, n_steps)
        row = dict(tokens=length, steps=n_steps,
                   forward_s=_median_seconds(fwd, params, tokens, repeats=_REPEATS.value),
                   analysis_s=_median_seconds(sig, params, tokens, steps, repeats=_REPEATS.value),
                   forward_temp_mib=_temp_mib(fwd, params, tokens),
                   analysis_temp_mib=_temp_mib(sig, params, tokens, steps))
        row["analysis_over_forward"] = row["analysis_s"] / row["forward_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = dict(benchmark="significance_scaling", machine=platform.platform(), processor=platform.processor(),
                  cpus=jax.local_device_count(), jax=jax.__version__, config=cfg.name, rows=rows)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
