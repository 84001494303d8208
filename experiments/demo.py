r"""The main job at this stage: initialise a model, generate with tracking on, show where each token looked.

    python -m experiments.demo --preset=tiny --question='3+1+9+8=?' --max_new_tokens=16

The prompt is laid out as `<bos> <question> question <step>` (see `sage_jax.special`), so the model is asked
for its first rationale step. The shipped tokenizer needs `cfg.vocab_size` to match one of its vocabularies.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

import sage_jax as sj
from sage_jax import special
from sage_jax.data import Tokenizer

_PRESET = flags.DEFINE_enum("preset", "tiny", sj.configs.names(), "Model preset.")
_QUESTION = flags.DEFINE_string("question", "3+1+9+8=?", "Question text.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 16, "Tokens to generate.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed.")
_TOP = flags.DEFINE_integer("top", 3, "Earlier tokens to list per generated token.")

_GROUPS = ("reasoning", "memory", "meta")


def main(argv):
    del argv
    cfg = sj.configs.get(_PRESET.value)
    params = sj.init_params(cfg, jax.random.key(_SEED.value))
    print(f"SAGE-nano preset {cfg.name!r}: {sj.param_count(cfg):,} parameters, {cfg.n_layers} layers, heads "
          f"{cfg.n_reasoning_heads} reasoning / {cfg.n_memory_heads} memory / {cfg.n_meta_heads} meta "
          "(untrained: the tokens are noise, the tracking is real)")
    tokenizer = Tokenizer.load(cfg.vocab_size)
    show = lambda token: repr(tokenizer.render([token]))  # noqa: E731
    prompt = [special.BOS, special.QUESTION] + tokenizer.encode(_QUESTION.value) + [special.STEP]
    start = time.perf_counter()
    out = sj.generate(params, cfg, [prompt], max_new_tokens=_MAX_NEW.value, track=True)
    out.tokens.block_until_ready()
    elapsed = time.perf_counter() - start
    tokens = np.asarray(out.tokens[0])
    n = int(out.num_generated[0])
    print(f"generated {n} tokens in {elapsed:.2f}s (compile included)\n")
    attention = np.asarray(out.attention[0])  # [N, L, H, S]
    groups = np.asarray(cfg.head_groups)
    p = len(prompt)
    for i in range(n):
        mean = attention[i].mean(axis=(0, 1))[: p + i]  # over layers and heads, earlier slots only
        top = np.argsort(mean)[::-1][: _TOP.value]
        looked = ", ".join(f"{show(int(tokens[j]))}@{j} ({mean[j]:.2f})" for j in top)
        by_group = " ".join(
            f"{name}->{show(int(tokens[j]))}@{j}"
            for g, name in enumerate(_GROUPS) if (groups == g).any()
            for j in [int(np.argmax(attention[i][:, groups == g].mean(axis=(0, 1))[: p + i]))])
        print(f"token {i:2d} {show(int(tokens[p + i])):>7}  looked at {looked}  | {by_group}")


if __name__ == "__main__":
    app.run(main)
