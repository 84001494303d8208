r"""Inverse-reasoning overhead on a pretrained chat model (the paper's 14% time / 10% memory), side by side.

    python -m benchmarks.inverse_pretrained --model=smollm2-135m-instruct --inverse_dir=/tmp/ial_smol \
        --new_tokens=64 --rounds=5 --out=/tmp/ial_overhead.json

The `inverse_overhead` case's measure (`benchmarks/cases/inverse_overhead.py`) on a real model: greedy
generation of `--new_tokens` tokens after the model's chat prompt for a spoken sum, batch 1, plain against
generation that records what the Inverse Analysis Layer reads (attention, value norms, hidden states) followed
by the IAL over the generated chain (`workloads.tracked_analysed`: `--analysis_steps` equal steps, no second
forward). The IAL is the one `experiments.train_inverse` trained in `--inverse_dir` (without it, a fresh one:
the cost is the same). Both sides generate exactly `--new_tokens` tokens (an end token greedy decoding never
emits, `workloads.free_eos`). Time: medians of `--rounds` alternating rounds after a warm-up call each, so the
ratio is measured under the same load. Memory: XLA's buffer accounting of each compiled stage
(`benchmarks.memory.stage_bytes`; the weights are arguments of both), the largest stage per side.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import sage_jax as sj
from benchmarks import memory, workloads
from benchmarks.timing import side_by_side
from sage_jax import interop
from sage_jax.chat import ChatLayout
from sage_jax.nn.inverse import init_inverse_params
from sage_jax.train.inverse_only import load_inverse

_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "A pretrained chat model (name, GGUF file or "
                             "Hugging Face directory).")
_INVERSE_DIR = flags.DEFINE_string("inverse_dir", None, "experiments.train_inverse's workdir (default: a fresh IAL).")
_QUESTION = flags.DEFINE_string("question", "What is 3 + 4 + 5?", "The question whose reply is generated.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per call.")
_STEPS = flags.DEFINE_integer("analysis_steps", 3, "Equal steps the generated tokens are split into for the IAL.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating timed rounds (medians).")
_OUT = flags.DEFINE_string("out", None, "Where to write the figures as JSON.")


def main(argv):
    del argv
    model = interop.load(_MODEL.value)
    cfg, params = model.cfg, model.params
    chat = ChatLayout.for_pretrained(model)
    prompt = jnp.asarray(np.asarray(chat.prompt(chat.codec, _QUESTION.value), np.int32)[None])
    if _INVERSE_DIR.value is None:
        inverse, source = init_inverse_params(cfg, jax.random.key(1)), "fresh (untrained) IAL"
    else:
        (inverse, _), source = load_inverse(_INVERSE_DIR.value, cfg), f"IAL trained in {_INVERSE_DIR.value}"
    sizes = dataclasses.replace(workloads.sizes_for(sj.configs.get("test"), quick=True),
                                prompt_len=int(prompt.shape[1]), new_tokens=_NEW_TOKENS.value,
                                analysis_steps=_STEPS.value)
    eos_id = workloads.free_eos(params, cfg, prompt, sizes.new_tokens)
    gen, gen_s = workloads.aot(workloads.generation(cfg, sizes.new_tokens, eos_id, track=False), params, prompt)
    plain = workloads.Pipeline(lambda: jax.block_until_ready(gen(params, prompt)), (gen,), gen_s)
    inverse_side = workloads.tracked_analysed(cfg, params, inverse, prompt, sizes, eos_id)
    recording, _ = inverse_side.compiled
    timings = side_by_side({"plain": plain.run, "inverse": inverse_side.run,
                            "recording_only": lambda: jax.block_until_ready(recording(params, prompt))},
                           _ROUNDS.value)
    stage_bytes = {"plain": memory.xla_peak_bytes(plain), "inverse": memory.xla_peak_bytes(inverse_side),
                   "recording_generation": memory.stage_bytes(recording),
                   "ial": memory.stage_bytes(inverse_side.compiled[1])}
    result = {"model": _MODEL.value, "ial": source, "prompt_len": sizes.prompt_len, "new_tokens": sizes.new_tokens,
              "analysis_steps": sizes.analysis_steps, "rounds": _ROUNDS.value,
              "median_s": {name: t.median_s for name, t in timings.items()},
              "runs_s": {name: list(t.runs_s) for name, t in timings.items()},
              "time_ratio": timings["inverse"].median_s / timings["plain"].median_s,
              "recording_ratio": timings["recording_only"].median_s / timings["plain"].median_s,
              "xla_bytes": stage_bytes, "memory_ratio": stage_bytes["inverse"] / stage_bytes["plain"],
              "compile_s": {"plain": plain.compile_s, "inverse": inverse_side.compile_s}}
    print(f"{_MODEL.value}, {source}, prompt {sizes.prompt_len} + {sizes.new_tokens} new tokens, "
          f"{_ROUNDS.value} rounds: time x{result['time_ratio']:.3f} (recording generation alone "
          f"x{result['recording_ratio']:.3f}), XLA memory x{result['memory_ratio']:.3f} "
          f"({stage_bytes['inverse'] / 2 ** 20:.1f} MiB vs {stage_bytes['plain'] / 2 ** 20:.1f} MiB; the IAL stage "
          f"{stage_bytes['ial'] / 2 ** 20:.1f} MiB)")
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    app.run(main)
