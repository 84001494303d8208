"""sage_jax: SAGE-nano in JAX/Flax, with traceable, editable attention. Every concept is one hop from `sj`:

- `sj.SageConfig`, `sj.configs.get(name)`: static configuration and presets.
- `sj.init_params(cfg, key)`, `sj.forward(params, tokens, cfg, *, edits, record)`: the pure functional core;
  tokens `[B, T]` -> logits `[B, T, V]`, a `Trace`, meta-head logits `[B, T]`.
- `sj.generate(params, cfg, prompt, *, max_new_tokens, ...)`: KV-cache decoding to tokens `[B, P + N]`.
- `sj.Trace`, `sj.Edits`, `sj.Record`: what a forward recorded (`attn [L, B, H, T, S]`, the named activations
  `queries` ... `resid_post`, ...), what to change (the same layout; `sj.Edit` changes one named activation),
  what to record (and which layers and positions).
- `sj.layout`: how a problem becomes tokens (`SAGE.encode(codec, question, steps, answer)` -> tokens `[T]`,
  segments, step spans, answer mask), `Steps` (`[n_steps, T]` masks), the answer, the explanation grammar.
- `sj.interpret`: steps, significance (Eq. 7: maps `[n_steps, T]`), decision points, `explain`, the
  intervention builders (`interpret.interventions`), patching and faithfulness. It never imports training.
- `sj.load_run(run_dir, *, stage=None) -> sj.Run`: a trained run in one call (`cfg`, `params`, `inverse`: the
  trained Inverse Analysis Layer or None, `tokenizer`, `curriculum`, `config`).
- `sj.load_inverse(workdir, cfg) -> (inverse_params, icfg)`: an Inverse Analysis Layer trained for any frozen model
  (`sage_jax.train.inverse_only`, `python -m experiments.train_inverse`), for `interpret.amortised.analyse`.
- `sj.probes`: the standard probes over a trace: logit lens, direct logit attribution, head detectors,
  attribution patching (imported on first use).
- `sj.quant`: weight-only int4 / int8 (`quant.quantize(params, cfg, bits=4)`), a params pytree that `forward`,
  `generate`, the analysis and `Edits` take unchanged; GGUF blocks load into it (`load_gguf(..., quantized=True)`).
- `sj.interop`: real checkpoints (Hugging Face directories, GGUF files, `interop.load("smollm2-135m-instruct")`).
- `sj.data`, `sj.train`, `sj.evaluate`, `sj.viz`, `sj.interop`, and `sj.load_run` / `sj.Run`, are imported on first use:
  training pulls in orbax and grain, which `import sage_jax` should not pay for.
"""

import importlib

from sage_jax import configs, layout, quant
from sage_jax.config import ConfigError, SageConfig
from sage_jax.decode import GenerateOutput, generate
from sage_jax.model import ForwardOutput, forward, init_params, param_count, param_shapes
from sage_jax.trace import Edit, Edits, Record, Trace
from sage_jax import interpret

_LAZY_MODULES = ("data", "evaluate", "interop", "probes", "train", "viz")
_LAZY_NAMES = {"Run": "sage_jax.train.run", "load_run": "sage_jax.train.run",
               "load_inverse": "sage_jax.train.inverse_only"}

__all__ = ["ConfigError", "Edit", "Edits", "ForwardOutput", "GenerateOutput", "Record", "Run", "SageConfig", "Trace",
           "configs", "data", "evaluate", "forward", "generate", "init_params", "interop", "interpret", "layout",
           "load_inverse", "load_run", "param_count", "param_shapes", "probes", "quant", "train", "viz"]


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"sage_jax.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'sage_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
