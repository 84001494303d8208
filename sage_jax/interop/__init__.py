"""Real checkpoints in and out: Hugging Face directories, GGUF files, and named models that ship as packages.

- `load(name) -> Pretrained`: a named model from an installed package (`MODELS`; `"smollm2-135m-instruct"`).
- `load_hf(dir)`, `save_hf(cfg, params, dir)`: Llama, Mistral, Qwen2, Qwen3 directories, in and out.
- `load_gguf(path)`: llama.cpp's `llama`, `qwen2`, `qwen3` files, dequantised, with their tokenizer.
- `LoadError`: the one error a bad checkpoint raises (a `ValueError` naming the file and the tensor).

`Pretrained(cfg, params, tokenizer, chat_template, source, architecture)`: `sage_jax.forward(params, tokens, cfg)`
and `sage_jax.generate(params, cfg, prompt, ...)` run it as any other sage_jax model.
"""

from sage_jax.interop.errors import LoadError, Pretrained
from sage_jax.interop.gguf import load_gguf
from sage_jax.interop.hf import config_from_hf, config_to_hf, load_hf, save_hf
from sage_jax.interop.named import MODELS, MissingModelError, load, model_path

__all__ = ["MODELS", "LoadError", "MissingModelError", "Pretrained", "config_from_hf", "config_to_hf", "load",
           "load_gguf", "load_hf", "model_path", "save_hf"]
