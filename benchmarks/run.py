r"""sage_jax against its peers, side by side in one run: writes `results.json` and `results.md`.

    python -m benchmarks.run                       # every case on `tiny` (several minutes)
    python -m benchmarks.run --cases=train,decode --repeats=7
    python -m benchmarks.run --quick               # seconds: the `test` preset, small shapes

Cases (`benchmarks/cases/`): `train` (train-step tokens/s and MFU against a Hugging Face Llama in torch),
`decode` (KV-cache tokens/s at batch 1 and 8 against HF `generate`), `inverse_overhead` (tracked generation
plus the amortised analysis against plain generation: time and memory), `significance` (exact Eq. 7 for all
steps of a 256- and 1024-token chain against one forward+backward and against a torch per-step backward loop),
`trace_memory` (recording the full Trace against a plain forward), `pretrained` (SmolLM2-135M-Instruct, or
`--pretrained=NAME|GGUF|HF_DIR`, in sage_jax against the same file in transformers: forward, greedy decoding and
exact significance; and the inverse-reasoning overhead on that model; `--quick` keeps the model and shrinks the
shapes), `quantized` (weight-only int4 and int8 against float32: weight memory of the preset, of SmolLM2-135M's
float reading, its GGUF blocks and our int4, and of `nano_4b` from `eval_shape`; greedy decoding and one exact
analysis, int4 against float32; SmolLM2's figures are skipped without its package), `probes` (recording one field
at one layer, one field at every layer, and its mean over positions, against the full cache `Record.all()` that
TransformerLens's `run_with_cache` keeps: time, XLA peak, output bytes).

Method: the contenders of a case alternate, `--repeats` rounds, medians reported; each one's first call
(compilation, warm-up) is timed and reported apart. torch is pinned to as many threads as XLA's CPU pool
uses (the usable cores). The torch side needs `requirements-bench.txt`; without it every peer figure is
recorded as skipped, a warning is printed, and the run still succeeds. Ratios are comparable within one run
only (the machine may be shared).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import sys
from typing import Optional, Sequence

from absl import app, flags

import sage_jax as sj
from benchmarks import machine, peer as peer_lib, report, workloads
from benchmarks.cases import CASES
from benchmarks.cases.context import PRETRAINED, Context

_CASES = flags.DEFINE_list("cases", list(CASES), f"Cases to run, of {list(CASES)}.")
_PRESET = flags.DEFINE_string("preset", "tiny", "Model preset (sage_jax.configs).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds per comparison (the median is reported).")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Directory for results.json and results.md.")
_RSS = flags.DEFINE_bool("rss", True, "Measure peak RSS of the memory workloads in fresh processes.")
_PEER = flags.DEFINE_bool("peer", True, "Run the torch peer when it is installed; --nopeer skips it (e.g. on a GPU "
                                        "host, where the JAX side runs on the device and the peer would not).")
_QUICK = flags.DEFINE_bool("quick", False, "A seconds-long smoke run: the `test` preset, small shapes, and 2 "
                                           "repeats unless --repeats is given.")

_PRETRAINED = flags.DEFINE_string("pretrained", PRETRAINED, "The `pretrained` case's model: a named model "
                                  "(sage_jax.interop.MODELS), a .gguf file or a Hugging Face directory.")

QUICK_REPEATS = 2
MISSING_PEER_WARNING = ("!" * 78 + "\n!! torch / transformers are not installed: every peer (torch) figure is "
                        "SKIPPED.\n!! Install them with: .venv/bin/pip install -r requirements-bench.txt\n" + "!" * 78)


def run_benchmark(cases: Sequence[str], preset: str, repeats: int, out: str, quick: bool, rss: bool = True,
                  command: Optional[str] = None, use_peer: bool = True, pretrained: str = PRETRAINED) -> dict:
    """Runs `cases` and writes `<out>/results.json` and `<out>/results.md`; returns the JSON's content.

    Args:
      cases: names from `benchmarks.cases.CASES`.
      preset: the SAGE preset (`quick` forces `test`).
      repeats: timed rounds per comparison.
      out: output directory (created).
      quick: the seconds-long sizes.
      rss: measure fresh-process peak RSS (else those figures are recorded as skipped).
      command: the command line to record.
      use_peer: run the torch peer when it is installed (else its figures are recorded as skipped).
      pretrained: the `pretrained` case's model (a named model, a `.gguf` file or a Hugging Face directory).
    """
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"--cases: unknown case(s) {unknown}; choose from {list(CASES)}")
    cfg = sj.configs.get("test" if quick else preset)
    load_at_start = list(os.getloadavg())
    threads = machine.usable_cores()
    peer = peer_lib.import_peer() if use_peer else None
    if peer is None and use_peer:
        print(MISSING_PEER_WARNING, file=sys.stderr, flush=True)
    threads_torch = None if peer is None else peer_lib.set_threads(peer, threads)
    ctx = Context(cfg=cfg, sizes=workloads.sizes_for(cfg, quick), repeats=repeats, quick=quick, peer=peer,
                  threads=threads, rss=rss, pretrained=pretrained)
    results = {}
    for name in cases:
        ctx.log(name, f"start ({cfg.name}, {repeats} repeats)")
        results[name] = CASES[name](ctx).to_dict()
        ctx.log(name, "done")
    targets = [report.Target(**{k: t[k] for k in ("case", "name", "relation", "threshold", "ratio", "measured")})
               for case in results.values() for t in case["targets"]]
    mirror = peer_lib.mirror_config(cfg)
    document = dict(
        benchmark="sage_jax against Hugging Face Llama in torch",
        command=command or "python -m benchmarks.run",
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine.machine(), versions=machine.versions(),
        settings=dict(preset=cfg.name, quick=quick, repeats=repeats, cases=list(cases), rss=rss, pretrained=pretrained,
                      load_average_at_start=load_at_start, load_average_at_end=list(os.getloadavg()),
                      omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                      threads=dict(xla=threads, torch=threads_torch,
                                   note="XLA's CPU thread pool uses every usable core; torch is pinned to as many"),
                      timing="contenders alternate; medians of `repeats` rounds; the first call (warm-up, "
                             "compilation) is reported apart as *_warmup_s"),
        peer=dict(available=peer is not None,
                  reason=None if peer else (peer_lib.SKIPPED if use_peer else "not run (--nopeer)"),
                  model="transformers.LlamaForCausalLM", config=peer_lib.llama_kwargs(cfg),
                  sage_param_count=sj.param_count(cfg), mirror_param_count=sj.param_count(mirror),
                  peer_param_count=None if peer is None else peer_lib.param_count(peer_lib.build_model(peer, cfg)),
                  **peer_lib.differences(cfg)),
        cases=results, targets=[t.to_dict() for t in targets])
    directory = pathlib.Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "results.json", json.dumps(document, indent=2) + "\n")
    _write(directory / "results.md", markdown(document, targets))
    print(f"wrote {directory / 'results.json'} and {directory / 'results.md'}", file=sys.stderr, flush=True)
    return document


def markdown(document: dict, targets: Sequence[report.Target]) -> str:
    m, v = document["machine"], document["versions"]
    device = "" if m["backend"] == "cpu" else f"{', '.join(sorted(set(m['devices'])))} ({m['backend']}) with "
    settings = document["settings"]
    pretrained = f", pretrained `{settings['pretrained']}`" if "pretrained" in settings["cases"] else ""
    header = (f"`{document['command']}` on {device}{m['cpu_model']}, {m['usable_cores']} usable cores, "
              f"{m['ram_bytes'] / 2 ** 30:.0f} GiB RAM; jax {v['jax']}, flax {v['flax']}, torch {v['torch']}, "
              f"transformers {v['transformers']}, python {m['python']}; preset `{document['settings']['preset']}`"
              f"{pretrained}, {document['settings']['repeats']} alternating repeats (medians), "
              f"{document['created_utc']}.\n\n")
    return header + report.markdown(targets)


def _write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    repeats = _REPEATS.value
    if _QUICK.value and not flags.FLAGS["repeats"].present:
        repeats = QUICK_REPEATS
    run_benchmark(_CASES.value, _PRESET.value, repeats, _OUT.value, _QUICK.value, _RSS.value,
                  command=" ".join(["python -m benchmarks.run"] + [
                      flags.FLAGS[name].serialize()
                      for name in ("cases", "preset", "repeats", "out", "quick", "rss", "peer", "pretrained")
                      if flags.FLAGS[name].present]), use_peer=_PEER.value, pretrained=_PRETRAINED.value)


if __name__ == "__main__":
    app.run(main)
