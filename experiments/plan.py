r"""Does a model's train step fit a cluster, and with which mesh, microbatches and remat? Ask the compiler.

    python -m experiments.plan --config=nano_4b --devices=12 --device_memory=16GB --seq_len=4096 \
        --global_batch=48 --analysis_len=4096 --out=plan.json

Compiles the real train step ahead of time for every candidate on `--devices` simulated CPU devices (this
entry point creates them itself when jax has not started yet), reads each executable's per-device memory and
collective traffic, prints a table and the choice, and optionally writes the plan as JSON
(`sage_jax.train.plan` says what is measured and how the choice is made). Sizes are decimal: 16GB is 16e9
bytes, 16GiB 16 * 2**30.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app, flags

from sage_jax import configs
from sage_jax.train import plan as planner

_CONFIG = flags.DEFINE_string("config", "nano_4b", f"Model preset: one of {', '.join(configs.names())}.")
_DEVICES = flags.DEFINE_integer("devices", None, "Devices in the cluster (simulated as CPU devices).",
                                required=True)
_DEVICE_MEMORY = flags.DEFINE_string("device_memory", None, "Memory of each device: 16GB, 141GB, 16GiB, ...",
                                     required=True)
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Tokens per row (default: the model's max_seq_len).")
_GLOBAL_BATCH = flags.DEFINE_integer("global_batch", None,
                                     "Rows per update (default: 4 per device, so 4 microbatches of one row).")
_FSDP = flags.DEFINE_list("fsdp", None, "fsdp axis sizes to try (default: every divisor of --devices).")
_MICROBATCHES = flags.DEFINE_list("microbatches", [str(k) for k in planner.DEFAULT_MICROBATCHES],
                                  "Microbatch counts to try.")
_REMAT = flags.DEFINE_list("remat", ["on", "off"], "Rematerialisation settings to try: on, off.")
_HEADROOM = flags.DEFINE_float("headroom", planner.DEFAULT_HEADROOM,
                               "Share of each device's memory left to the runtime.")
_PRUNE = flags.DEFINE_boolean("prune", True, "Skip settings that keep no fewer activations than one of the same "
                              "mesh that did not fit.")
_INVERSE = flags.DEFINE_boolean("inverse", False, "Plan the stage-3 step (the Inverse Analysis Layer and its "
                                "consistency loss) instead of the model-only step of stages 1 and 2.")
_ANALYSIS_LEN = flags.DEFINE_integer("analysis_len", None, "Also compile the exact analysis of one chain of "
                                     "this many tokens on one device.")
_ANALYSIS_STEPS = flags.DEFINE_integer("analysis_steps", planner.DEFAULT_ANALYSIS_STEPS,
                                       "Steps of that chain.")
_OUT = flags.DEFINE_string("out", None, "Write the plan as JSON here.")


def main(argv):
    del argv
    planner.simulate_devices(_DEVICES.value)
    try:
        planner.simulated_devices(_DEVICES.value)
        cfg = configs.get(_CONFIG.value)
        device_memory = planner.parse_bytes(_DEVICE_MEMORY.value)
        trials = planner.candidate_trials(_DEVICES.value, _ints(_MICROBATCHES), _remat_values(),
                                          None if _FSDP.value is None else _ints(_FSDP))
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    seq_len = _SEQ_LEN.value or cfg.max_seq_len
    global_batch = _GLOBAL_BATCH.value or 4 * _DEVICES.value
    start = time.perf_counter()

    def progress(i: int, n: int, trial: planner.Trial) -> None:
        print(f"compiling candidate {i}/{n}: {trial.describe()} ({time.perf_counter() - start:.0f} s elapsed)",
              file=sys.stderr, flush=True)

    result = planner.plan(cfg, devices=_DEVICES.value, device_memory=device_memory, seq_len=seq_len,
                          global_batch=global_batch, trials=trials, headroom=_HEADROOM.value, inverse=_INVERSE.value,
                          prune=_PRUNE.value, analysis_len=_ANALYSIS_LEN.value, analysis_steps=_ANALYSIS_STEPS.value,
                          progress=progress)
    print(report(result))
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(result.to_dict(), indent=2))


def _ints(flag: flags.FlagHolder) -> list[int]:
    if not all(v.isdigit() and int(v) > 0 for v in flag.value):
        raise ValueError(f"--{flag.name}={','.join(flag.value)}: give positive integers, e.g. 1,2,4")
    return [int(v) for v in flag.value]


def _remat_values() -> list[bool]:
    values = {"on": True, "off": False}
    bad = [v for v in _REMAT.value if v not in values]
    if bad:
        raise ValueError(f"--remat={','.join(_REMAT.value)}: each value must be on or off")
    return [values[v] for v in _REMAT.value]


def report(result: planner.Plan) -> str:
    """The candidates as a table, then the analysis and the choice in words."""
    g = planner.format_bytes
    step = "stage-3 step (model + IAL)" if result.inverse else "model-only step (stages 1-2)"
    lines = [f"{result.model}, {step}: batch {result.global_batch} x {result.seq_len} tokens on "
             f"{result.devices} x {g(result.device_memory)} (budget {g(result.budget)} per device, "
             f"{result.headroom:.0%} headroom)",
             f"{'mesh':>10} {'micro':>5} {'remat':>5} {'args':>9} {'temps':>9} {'total':>9} {'collectives':>11}  "
             f"{'by kind':<44} {'fits':>4} {'compile':>7}"]
    for group in _grouped(result.candidates):
        c = group[0]
        if c.memory is None:
            settings = ", ".join(f"{s.trial.microbatches} {'on' if s.trial.remat else 'off'}" for s in group)
            lines.append(f"{f'{c.trial.data}x{c.trial.fsdp}':>10} ({settings}) skipped: {c.skipped}")
            continue
        kinds = ", ".join(f"{kind} {g(n)}" for kind, n in sorted(c.collective_bytes.items())) or "none"
        lines.append(f"{f'{c.trial.data}x{c.trial.fsdp}':>10} {c.trial.microbatches:>5} "
                     f"{'on' if c.trial.remat else 'off':>5} {g(c.memory.arguments):>9} "
                     f"{g(c.memory.temporaries):>9} {g(c.memory.total):>9} {g(c.total_collective_bytes):>11}  "
                     f"{kinds:<44} {'yes' if c.fits else 'no':>4} {c.compile_seconds:>6.0f}s")
    if result.analysis is not None:
        a = result.analysis
        verdict = "fits" if a.fits else "does not fit"
        lines.append(f"exact analysis of one {a.seq_len}-token chain with {a.n_steps} steps on one device: "
                     f"{g(a.memory.total)} (arguments {g(a.memory.arguments)}, temporaries "
                     f"{g(a.memory.temporaries)}); {verdict} in {g(result.budget)} (compiled in "
                     f"{a.compile_seconds:.0f} s)")
    lines.append(result.summary())
    return "\n".join(lines)


def _grouped(candidates) -> list[list[planner.Candidate]]:
    """Candidates in order, consecutive ones skipped for the same reason on the same mesh in one group."""
    groups: list[list[planner.Candidate]] = []
    for c in candidates:
        last = groups[-1][-1] if groups else None
        same = (last is not None and c.memory is None and last.memory is None and c.skipped == last.skipped
                and (c.trial.data, c.trial.fsdp) == (last.trial.data, last.trial.fsdp))
        if same:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


if __name__ == "__main__":
    app.run(main)
