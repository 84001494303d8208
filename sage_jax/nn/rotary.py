"""Rotary position embeddings (RoPE), in the Hugging Face Llama layout (`rotate_half` over two halves).

Angles are computed from the positions on the fly, so any position is valid; the context limit is
enforced by `sage_jax.model`, not by a table that would silently clip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rotary(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotates query or key heads by their positions.

    Args:
      x: `[B, T, N, d]` heads (`d` even).
      positions: `[B, T]` integer positions.
      base: the frequency base (10 000 in Llama 2).

    Returns:
      `[B, T, N, d]`, same dtype as `x`; the rotation itself runs in at least float32.
    """
    acc = jnp.promote_types(x.dtype, jnp.float32)
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=acc) / half))
    angles = positions.astype(acc)[..., None] * inv_freq  # [B, T, d/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xa = x.astype(acc)
    x1, x2 = xa[..., :half], xa[..., half:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
