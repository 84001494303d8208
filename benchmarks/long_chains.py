r"""Long chains in bounded memory (issue 16): the exact analysis (Eq. 7) of one SmolLM2 chain of 512 ... 4,096
tokens, the full path (`significance(memory="full")`) against the bounded one (`memory="bounded"`), side by side.

    python -m benchmarks.long_chains --out=benchmarks/results/long_chains.json

The model is `--model` (SmolLM2-135M-Instruct by default, float32, through `sage_jax.interop.load`). The chain is a
conversation in its own chat template (`ChatLayout`): the user asks for a sum of many small numbers and the
assistant's reply works it one addition per line (`12 + 8 = 20`), with as many lines as it takes to reach the
length; the conversation is then cut to exactly `T` tokens. `--steps` of the reply's complete lines, evenly spaced
from the first to the last one inside the cut, are the analysed steps; the lines between them stay in the chain as
context. So the last steps rest on thousands of tokens, and every length analyses the same number of steps.

Each (length, path) runs in a fresh process (`--probe`): load the model, build the chain, compile the analysis of
all its steps ahead of time, time one plain forward, run the analysis once. Reported: load, compile, forward and
run times, XLA's buffer plan of the compiled analysis (`benchmarks.memory.stage_bytes`), the process's peak
resident size (`VmHWM`, as `benchmarks.memory_probe`: interpreter, libraries, the model, compilation and the
run), and the load average around it (the machine may be shared: times are only as quiet as it was). Where both
paths ran, the largest score difference.

Budgets. The full path records `attn [L, H, T, T]` and pulls all `n` steps back at once, so it runs only while
its memory stays under `--full_limit_gib`: first a lower bound of its buffers, the record (`4 L H T^2` bytes) plus
the backward's `n` lanes of one layer's attention gradient (`4 n H T^2`) and of the logits' gradient
(`4 n T V`), else "skipped: predicted N GiB" without compiling; then, compiled, the process's resident size plus
1.5 times XLA's plan, else "skipped: XLA plans N GiB" (the run takes about 1.3 times the plan: the full path at
1,024 tokens planned 7.8 GiB and peaked at 11.6 GiB). The bounded path's time is about `n` backward passes,
minutes each at 4,096 tokens on 2 CPU cores, so where `--run_steps` gives fewer steps than `--steps` it runs only
the last `run_steps` of them (its memory is that of `lanes` steps at once whatever `n`: the plan of all `n` is
reported beside the run's) and estimates the time of all: `forward + (run - forward) * chunks(n) /
chunks(run_steps)`, with `chunks(k) = ceil(k / lanes)` (each chunk recomputes the blocks, then pulls `lanes`
steps back).
Each row is printed as it finishes, and the JSON is rewritten after every row.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import sage_jax as sj
from benchmarks.cases.pretrained import problem
from benchmarks.memory import stage_bytes
from benchmarks.workloads import aot
from sage_jax import interop
from sage_jax.chat import ChatLayout
from sage_jax.interpret.significance import significance
from sage_jax.layout import Steps, from_spans

PATHS = ("full", "bounded")

_OUT = flags.DEFINE_string("out", "benchmarks/results/long_chains.json", "Where to write the JSON.")
_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "A named model, a .gguf file or a HF directory.")
_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096"], "Chain lengths in tokens.")
_STEPS = flags.DEFINE_integer("steps", 16, "Analysed steps (reply lines) per chain.")
_LANES = flags.DEFINE_list("lanes", ["512:16", "1024:8", "2048:4", "4096:1"],
                           "length:lanes, the bounded path's step cotangents per pullback (the nearest length "
                           "listed at or below; lanes=1 keeps 4,096 tokens of SmolLM2 under 8 GB).")
_RUN_STEPS = flags.DEFINE_list("run_steps", ["4096:2"],
                               "length:steps the bounded path runs where fewer than --steps (time budget).")
_FULL_LIMIT = flags.DEFINE_float("full_limit_gib", 10.0, "Run the full path only while its memory stays under this.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 900, "Seconds one probe may take.")
_PROBE = flags.DEFINE_enum("probe", None, PATHS, "Internal: run one path in this process and print one JSON line.")
_LENGTH = flags.DEFINE_integer("length", None, "Internal (--probe): the chain length.")
_PROBE_LANES = flags.DEFINE_integer("probe_lanes", None, "Internal (--probe): lanes of the bounded path.")
_PROBE_RUN = flags.DEFINE_integer("probe_run_steps", None, "Internal (--probe): the steps to run.")
_SAVE = flags.DEFINE_string("save", None, "Internal (--probe): where to save the scores (.npy).")


def chain(chat: ChatLayout, length: int, n_steps: int) -> tuple[np.ndarray, Steps]:
    """`[length]` ids of a worked sum in the chat template, and `n_steps` of its reply's lines as `Steps`.

    The question lists every number, so the reply gets about three quarters of the tokens; the line count doubles
    until the conversation reaches `length`. The steps are lines evenly spaced over those complete inside the cut.
    """
    n_lines = 8
    while True:
        example = chat.encode(chat.codec, *problem(n_lines))
        spans = [span for span in example.step_spans if span[1] <= length]
        if len(example) >= length and len(spans) >= n_steps:
            break
        if len(example) >= length:  # a longer sum only lengthens the question
            raise ValueError(f"length={length} holds {len(spans)} complete lines, fewer than --steps={n_steps}")
        n_lines *= 2
    chosen = np.linspace(0, len(spans) - 1, n_steps).round().astype(int)
    return np.asarray(example.tokens[:length], np.int32), from_spans([spans[k] for k in chosen], length)


def full_lower_bound(cfg: sj.SageConfig, length: int, n_steps: int) -> int:
    """Bytes the full path holds at least: the attention record and the backward's `n` lanes (module docstring)."""
    heads_t2 = cfg.n_heads * length ** 2
    return 4 * (cfg.n_layers * heads_t2 + n_steps * heads_t2 + n_steps * length * cfg.vocab_size)


def status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`), in bytes."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} field")


def timed(fn, *args) -> tuple[np.ndarray, float]:
    """`fn(*args)` as numpy, and the seconds it took."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return np.asarray(out), time.perf_counter() - start


def probe(path: str, length: int, n_steps: int, run_steps: int, lanes: int, save: str) -> dict:
    """In this process: load the model, compile one path's analysis of the chain's `n_steps` steps (its XLA plan),
    time one plain forward, and run the analysis of the last `run_steps` of them once (compiled apart if fewer)."""
    start = time.perf_counter()
    model = interop.load(_MODEL.value)
    row = dict(load_s=time.perf_counter() - start, load_average_before=os.getloadavg()[0])
    tokens, steps = chain(ChatLayout.for_pretrained(model), length, n_steps)
    tokens = jnp.asarray(tokens)
    options = dict(memory=path, lanes=lanes if path == "bounded" else None)

    def analysis(p, t, s):
        return significance(p, model.cfg, t, s, **options).score

    compiled, row["compile_s"] = aot(analysis, model.params, tokens, steps)
    row["xla_bytes"] = stage_bytes(compiled)
    if run_steps < n_steps:
        steps = jax.tree_util.tree_map(lambda x: x[n_steps - run_steps:], steps)
        compiled, _ = aot(analysis, model.params, tokens, steps)
        row["run_xla_bytes"] = stage_bytes(compiled)
    forward, _ = aot(lambda p, t: sj.forward(p, t[None], model.cfg).logits, model.params, tokens)
    row["before_rss_bytes"] = status_bytes("VmRSS")
    predicted = row["before_rss_bytes"] + 1.5 * row["xla_bytes"]
    if path == "full" and predicted > _FULL_LIMIT.value * 2**30:
        return row | dict(skipped=f"skipped: XLA plans {row['xla_bytes'] / 2**30:.1f} GiB, predicted peak "
                                  f"{predicted / 2**30:.1f} GiB")
    _, row["forward_s"] = timed(forward, model.params, tokens)
    score, row["run_s"] = timed(compiled, model.params, tokens, steps)
    row |= dict(run_steps=run_steps, peak_rss_bytes=status_bytes("VmHWM"), load_average_after=os.getloadavg()[0])
    np.save(save, score)
    return row


def run_probe(path: str, length: int, run_steps: int, lanes: int, save: pathlib.Path) -> dict:
    """`probe` in a fresh process; its JSON line, or what it failed of."""
    command = [sys.executable, "-m", "benchmarks.long_chains", f"--probe={path}", f"--length={length}",
               f"--steps={_STEPS.value}", f"--probe_run_steps={run_steps}", f"--probe_lanes={lanes}",
               f"--model={_MODEL.value}", f"--full_limit_gib={_FULL_LIMIT.value}", f"--save={save}"]
    root = pathlib.Path(__file__).resolve().parent.parent
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=_TIMEOUT.value)
    except subprocess.TimeoutExpired:
        return dict(skipped=f"failed: no result after {_TIMEOUT.value} s")
    if done.returncode:
        return dict(skipped=f"failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]) | dict(process_s=time.perf_counter() - start)


def per_length(flag: list[str], length: int, default: int) -> int:
    """The value a `length:value` list gives `length`: that of the nearest length listed at or below it."""
    table = {int(k): int(v) for k, v in (item.split(":") for item in flag)}
    below = [k for k in table if k <= length]
    return table[max(below)] if below else default


def estimate_all_steps(result: dict, n_steps: int, lanes: int) -> float:
    """Seconds the bounded analysis of all `n_steps` would take, from a run of fewer (module docstring)."""
    per_chunk = (result["run_s"] - result["forward_s"]) / math.ceil(result["run_steps"] / lanes)
    return result["forward_s"] + per_chunk * math.ceil(n_steps / lanes)


def measure(cfg: sj.SageConfig, length: int, scratch: pathlib.Path) -> dict:
    """One row: both paths at `length` (the full one within its budget), compared where both ran."""
    n = _STEPS.value
    row = dict(tokens=length, steps=n, lanes=per_length(_LANES.value, length, n),
               full_predicted_bytes=full_lower_bound(cfg, length, n))
    saves = {path: scratch / f"{path}_{length}.npy" for path in PATHS}
    if row["full_predicted_bytes"] > _FULL_LIMIT.value * 2**30:
        row["full"] = dict(skipped=f"skipped: predicted {row['full_predicted_bytes'] / 2**30:.1f} GiB")
    else:
        row["full"] = run_probe("full", length, n, row["lanes"], saves["full"])
    print(json.dumps(dict(tokens=length, full=row["full"])), flush=True)
    run_steps = min(per_length(_RUN_STEPS.value, length, n), n)
    row["bounded"] = run_probe("bounded", length, run_steps, row["lanes"], saves["bounded"])
    if run_steps < n and "run_s" in row["bounded"]:
        row["bounded"]["estimated_all_steps_s"] = estimate_all_steps(row["bounded"], n, row["lanes"])
    if run_steps == n and all(path.exists() for path in saves.values()):  # a subset's scores share another max
        row["max_abs_score_diff"] = float(np.max(np.abs(np.load(saves["full"]) - np.load(saves["bounded"]))))
    print(json.dumps(dict(tokens=length, bounded=row["bounded"], diff=row.get("max_abs_score_diff"))), flush=True)
    return row


def write(out: pathlib.Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)


def table(rows: list[dict]) -> str:
    """The rows as text: each path's run time (steps run), peak RSS and XLA plan."""
    def cell(result: dict) -> str:
        if "peak_rss_bytes" not in result:
            return f"{result.get('skipped', '?'):>42}"
        return (f"{result['run_s']:7.1f} s ({result['run_steps']:2d}) {result['peak_rss_bytes'] / 2**30:5.2f} GiB "
                f"{result['xla_bytes'] / 2**30:5.2f} GiB")

    head = f"{'T':>5} {'lanes':>5} | {'full: run (steps), peak RSS, XLA plan':>42} | {'bounded: same':>42}"
    return "\n".join([head] + [f"{r['tokens']:>5} {r['lanes']:>5} | {cell(r['full'])} | {cell(r['bounded'])}"
                               for r in rows])


def main(argv):
    del argv
    if _PROBE.value is not None:
        print(json.dumps(probe(_PROBE.value, _LENGTH.value, _STEPS.value, _PROBE_RUN.value, _PROBE_LANES.value,
                               _SAVE.value)))
        return
    cfg = interop.load(_MODEL.value).cfg
    out = pathlib.Path(_OUT.value)
    report = dict(benchmark="long_chains", machine=platform.platform(), processor=platform.processor(),
                  cpus=os.cpu_count(), jax=jax.__version__, model=_MODEL.value, steps=_STEPS.value,
                  full_limit_gib=_FULL_LIMIT.value, analysis=dict(weighting="attention", layer=0, sources="preceding"),
                  rows=[])
    with tempfile.TemporaryDirectory() as scratch:
        for length in (int(x) for x in _LENGTHS.value):
            report["rows"].append(measure(cfg, length, pathlib.Path(scratch)))
            write(out, report)
    print(table(report["rows"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
