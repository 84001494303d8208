"""Real checkpoints in and out: Hugging Face directories, GGUF files, and named models that ship as packages.

- `load_hf(dir) -> Pretrained`, `save_hf(cfg, params, dir)`: Llama, Mistral, Qwen2, Qwen3 directories.
- `LoadError`: the one error a bad checkpoint raises (a `ValueError` naming the file and the tensor).
"""

from sage_jax.interop.errors import LoadError, Pretrained
from sage_jax.interop.hf import config_from_hf, config_to_hf, load_hf, save_hf

__all__ = ["LoadError", "Pretrained", "config_from_hf", "config_to_hf", "load_hf", "save_hf"]
