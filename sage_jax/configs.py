"""Named presets of `SageConfig`: `sage_jax.configs.get("tiny")`.

- `test`: for unit tests; a forward pass takes milliseconds. Short spans so that span masks are exercised.
- `tiny`: the embedded default; a few million parameters, trainable on 2 CPU cores in minutes.
- `small`: a step up for a single GPU.
- `nano_4b`: the paper's model: 24 layers, 32 heads split 16 reasoning / 8 memory / 8 meta-cognitive,
  6 inverse layers, about 4.0e9 parameters in the forward model (see WORKSPACE.md for the width choices).
"""

from __future__ import annotations

from sage_jax import layout
from sage_jax.config import ConfigError, SageConfig

_PRESETS = {
    "test": dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=32,
                 n_reasoning_heads=2, n_memory_heads=1, n_meta_heads=1, reasoning_span=4, memory_span=None,
                 meta_span=3, boundary_token_ids=(layout.STEP,), n_inverse_layers=2, tie_embeddings=False),
    "tiny": dict(vocab_size=512, d_model=256, n_layers=6, n_heads=8, n_kv_heads=8, d_ff=688, max_seq_len=256,
                 n_reasoning_heads=4, n_memory_heads=2, n_meta_heads=2, reasoning_span=64, memory_span=None,
                 meta_span=None, n_inverse_layers=6, tie_embeddings=True),
    "small": dict(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, d_ff=1376,
                  max_seq_len=512, n_reasoning_heads=4, n_memory_heads=2, n_meta_heads=2, reasoning_span=128,
                  memory_span=None, meta_span=None, n_inverse_layers=6, tie_embeddings=True),
    "nano_4b": dict(vocab_size=32_000, d_model=3072, n_layers=24, n_heads=32, n_kv_heads=32, d_ff=13_056,
                    max_seq_len=4096, n_reasoning_heads=16, n_memory_heads=8, n_meta_heads=8, reasoning_span=512,
                    memory_span=None, meta_span=None, n_inverse_layers=6, tie_embeddings=False, remat=True),
}


def names() -> tuple[str, ...]:
    """The preset names."""
    return tuple(_PRESETS)


def get(name: str, **overrides) -> SageConfig:
    """The preset `name`, with `overrides` applied (and validated)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {names()}")
    return SageConfig(name=name, **{**_PRESETS[name], **overrides})
