r"""Inverse-reasoning overhead on a pretrained chat model (the paper's 14% time / 10% memory), side by side.

    python -m benchmarks.inverse_pretrained --model=smollm2-135m-instruct --inverse_dir=/tmp/ial_smol \
        --new_tokens=64 --rounds=5 --out=/tmp/ial_overhead.json

The measure is `benchmarks.cases.inverse_overhead.generation_overhead`, which the `pretrained` case of
`benchmarks.run` also runs (with a fresh IAL, on its own prompt and sizes): greedy generation of `--new_tokens`
tokens after the model's chat prompt for a spoken sum, batch 1, plain against generation that records what the
Inverse Analysis Layer reads (attention, value norms, hidden states) followed by the IAL over the generated chain
(`--analysis_steps` equal steps, no second forward). This script picks the question, the sizes and the IAL: the
one `experiments.train_inverse` trained in `--inverse_dir` (without it, a fresh one: the cost is the same), and
writes every timed round. Both sides generate exactly `--new_tokens` tokens (an end token greedy decoding never
emits, `workloads.free_eos`). Time: medians of `--rounds` alternating rounds after a warm-up call each, so the
ratio is measured under the same load. Memory: XLA's buffer accounting of each compiled stage
(`benchmarks.memory.stage_bytes`; the weights are arguments of both), the largest stage per side.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import workloads
from benchmarks.cases.inverse_overhead import generation_overhead
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
    eos_id = workloads.free_eos(params, cfg, prompt, _NEW_TOKENS.value)
    overhead = generation_overhead(cfg, params, inverse, prompt, _NEW_TOKENS.value, _STEPS.value, eos_id,
                                   _ROUNDS.value)
    timings, stage_bytes = overhead.timings, overhead.xla_bytes
    result = {"model": _MODEL.value, "ial": source, "prompt_len": int(prompt.shape[1]),
              "new_tokens": _NEW_TOKENS.value, "analysis_steps": _STEPS.value, "rounds": _ROUNDS.value,
              "median_s": {name: t.median_s for name, t in timings.items()},
              "runs_s": {name: list(t.runs_s) for name, t in timings.items()},
              "time_ratio": overhead.time_ratio, "recording_ratio": overhead.recording_ratio,
              "xla_bytes": stage_bytes, "memory_ratio": overhead.memory_ratio, "compile_s": overhead.compile_s}
    print(f"{_MODEL.value}, {source}, prompt {result['prompt_len']} + {_NEW_TOKENS.value} new tokens, "
          f"{_ROUNDS.value} rounds: time x{overhead.time_ratio:.3f} (recording generation alone "
          f"x{overhead.recording_ratio:.3f}), XLA memory x{overhead.memory_ratio:.3f} "
          f"({stage_bytes['inverse'] / 2 ** 20:.1f} MiB vs {stage_bytes['plain'] / 2 ** 20:.1f} MiB; the IAL stage "
          f"{stage_bytes['ial'] / 2 ** 20:.1f} MiB)")
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    app.run(main)
