"""Rotary position embeddings (RoPE), in the Hugging Face Llama layout (`rotate_half` over two halves).

Angles are computed from the positions on the fly, so any position is valid; the context limit is
enforced by `sage_jax.model`, not by a table that would silently clip. `RopeScaling` (Llama 3, linear)
changes only the frequencies, as in Hugging Face's `modeling_rope_utils`.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from sage_jax.config import RopeScaling


def rope_frequencies(half: int, base: float, scaling: Optional[RopeScaling], dtype) -> jax.Array:
    """`[half]` inverse frequencies `base^(-i / half)`, stretched by `scaling` when given."""
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=dtype) / half))
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    low_wavelen = scaling.original_max_len / scaling.low_freq_factor
    high_wavelen = scaling.original_max_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    stretched = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((scaling.original_max_len / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * stretched / scaling.factor + smooth * stretched
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, stretched)


def apply_rotary(x: jax.Array, positions: jax.Array, base: float, scaling: Optional[RopeScaling] = None
                 ) -> jax.Array:
    """Rotates query or key heads by their positions.

    Args:
      x: `[B, T, N, d]` heads (`d` even).
      positions: `[B, T]` integer positions.
      base: the frequency base (10 000 in Llama 2).
      scaling: how the frequencies are stretched (`cfg.rope_scaling`), or `None`.

    Returns:
      `[B, T, N, d]`, same dtype as `x`; the rotation itself runs in at least float32.
    """
    acc = jnp.promote_types(x.dtype, jnp.float32)
    half = x.shape[-1] // 2
    inv_freq = rope_frequencies(half, base, scaling, acc)
    angles = positions.astype(acc)[..., None] * inv_freq  # [B, T, d/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xa = x.astype(acc)
    x1, x2 = xa[..., :half], xa[..., half:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
