r"""Quantize a model and measure what it costs: weight memory, accuracy, and whether the explanation moves.

    python -m experiments.quantize --workdir=runs/demo                      # the trained default, int8 and int4
    python -m experiments.quantize --model=smollm2-135m-instruct --problems=20

Each variant (float32; int8 and int4 by `sage_jax.quant.quantize`, each weight in groups of `--group_size`
along its input axis, by default its largest up to GGUF's 32; with a GGUF `--model`, also its own blocks as they
are, `load_gguf(..., quantized=True)`) is measured for its weight bytes (the live buffers of its params), its
accuracy on held-out chained sums (a run: the `eval` section's task and seed, the difficulties it was trained on; a chat model: chained sums in words, as
`experiments.evaluate --model`), and, against float32, how far the analysis of the same true chains moves
(`sage_jax.evaluate.quantization.explanation_shift`: Spearman and top-k overlap of the maps, decision points
changed, branching positions moved). A GGUF model's float32 is its file's float reading: the Q4_1 SmolLM2 ships
has no full-precision original offline, so its int4 / int8 rows quantize that reading again. Writes JSON to
`--out` (default `<workdir>/quantize.json` or `quantize_<model>.json`).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import app, flags
from absl import logging as absl_logging

import sage_jax as sj
from sage_jax import quant
from sage_jax.data.procedural import SpokenSumKnobs
from sage_jax.evaluate import accuracy_by, predict, procedural_by_difficulty
from sage_jax.evaluate.quantization import explanation_shift, format_shift
from sage_jax.evaluate.suite import trained_steps

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run (it holds config.json and stage<N>/ckpt).")
_MODEL = flags.DEFINE_string("model", None, "A pretrained chat model instead: a name, a GGUF file or a Hugging "
                                            "Face directory.")
_BITS = flags.DEFINE_list("bits", ["8", "4"], "Bit widths to quantize to (4, 8).")
_GROUP = flags.DEFINE_integer("group_size", 0, "Weights per scale; 0: each weight's largest up to GGUF's 32 "
                                               "(quant.largest_group_sizes).")
_ASYMMETRIC = flags.DEFINE_bool("asymmetric", False, "Scales and minimums (Q4_1) instead of scales (Q4_0, Q8_0).")
_PROBLEMS = flags.DEFINE_integer("problems", 100, "Held-out problems per difficulty for accuracy.")
_MAP_PROBLEMS = flags.DEFINE_integer("map_problems", 5, "True chains per difficulty whose analysis is compared.")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "3"], "With --model: the step counts of the problems.")
_SEED = flags.DEFINE_integer("seed", 7, "With --model: the problems' seed (a run uses its eval seed).")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON.")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    if (_WORKDIR.value is None) == (_MODEL.value is None):
        raise app.UsageError("pass exactly one of --workdir (a trained run) and --model (a pretrained chat model)")
    setup = _from_run() if _WORKDIR.value else _from_model()
    cfg, params = setup["cfg"], setup["params"]
    variants = {"float32": params}
    for bits in (int(b) for b in _BITS.value):
        group = _GROUP.value or quant.largest_group_sizes(cfg, bits)
        name = f"int{bits} ({quant.describe_groups(group)}{', minimums' if _ASYMMETRIC.value else ''})"
        variants[name] = quant.quantize(params, cfg, bits=bits, group_size=group, symmetric=not _ASYMMETRIC.value)
    variants.update(setup.get("extra", {}))
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    results: dict[str, Any] = {"source": setup["source"], "bfloat16_bytes": quant.weight_bytes(bf16), "variants": {}}
    start = time.perf_counter()
    for name, p in variants.items():
        row = {"weight_bytes": quant.weight_bytes(p), "accuracy_by_steps": setup["accuracy"](p)}
        row["reduction_vs_float32"] = 1 - row["weight_bytes"] / quant.weight_bytes(params)
        if name != "float32":
            row["explanation_shift"] = explanation_shift(params, p, cfg, setup["codec"], setup["chains"],
                                                         layout=setup["layout"], batch_size=setup["batch_size"])
        results["variants"][name] = row
        print(f"{name}: measured, {time.perf_counter() - start:.0f} s in", flush=True)
    print(format_results(results))
    out = pathlib.Path(_OUT.value or setup["out"])
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    print(f"written to {out}")


def _from_run() -> dict[str, Any]:
    run = sj.load_run(_WORKDIR.value)
    eval_cfg = run.config["eval"]
    knobs = getattr(run.curriculum, eval_cfg["procedural"])
    steps = tuple(trained_steps(run.curriculum, eval_cfg))
    held_out = procedural_by_difficulty(knobs, steps, _PROBLEMS.value, seed=eval_cfg["seed"]).examples
    generation = dict(max_new_tokens=eval_cfg["max_new_tokens"], batch_size=eval_cfg["batch_size"])

    def accuracy(params) -> dict:
        predictions = predict(params, run.cfg, run.tokenizer, held_out, **generation)
        return {int(s): row for s, row in accuracy_by(predictions, key=lambda ex: len(ex.steps)).items()}

    chains = procedural_by_difficulty(knobs, steps, _MAP_PROBLEMS.value, seed=eval_cfg["seed"]).examples
    return dict(cfg=run.cfg, params=run.params, source=str(run.run_dir), accuracy=accuracy, codec=run.tokenizer,
                chains=chains, layout=sj.layout.SAGE, batch_size=None, out=run.run_dir / "quantize.json")


def _from_model() -> dict[str, Any]:
    from sage_jax import interop
    from sage_jax.chat import ChatLayout
    from sage_jax.evaluate.pretrained import evaluate_pretrained

    loaded = interop.load(_MODEL.value)
    layout = ChatLayout.for_pretrained(loaded)
    steps = [int(s) for s in _STEPS.value]
    accuracy: Callable[[Any], dict] = lambda params: evaluate_pretrained(  # noqa: E731
        params, loaded.cfg, layout, steps=steps, per_difficulty=_PROBLEMS.value, seed=_SEED.value,
        truth_problems=0)["accuracy_by_steps"]
    extra = {}
    if pathlib.Path(loaded.source).suffix == ".gguf":
        extra["GGUF blocks as stored"] = interop.load(_MODEL.value, quantized=True).params
    chains = procedural_by_difficulty(SpokenSumKnobs(), tuple(steps), _MAP_PROBLEMS.value, seed=_SEED.value).examples
    return dict(cfg=loaded.cfg, params=loaded.params, source=loaded.source, accuracy=accuracy, codec=layout.codec,
                chains=chains, layout=layout, batch_size=16, extra=extra,
                out=f"quantize_{pathlib.Path(_MODEL.value).stem}.json")


def format_results(results: dict[str, Any]) -> str:
    """The variants as a table: bytes, reduction, accuracy by steps, and the explanation shift."""
    lines = [f"{results['source']} (bfloat16 would hold {results['bfloat16_bytes'] / 2 ** 20:.1f} MiB)"]
    for name, row in results["variants"].items():
        accuracy = ", ".join(f"{s} steps {100 * r['accuracy']:.1f}%" for s, r in row["accuracy_by_steps"].items())
        lines.append(f"{name}: {row['weight_bytes'] / 2 ** 20:.1f} MiB ({100 * row['reduction_vs_float32']:.1f}% "
                     f"below float32); accuracy {accuracy}")
        if "explanation_shift" in row:
            lines.append(format_shift(row["explanation_shift"]))
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
