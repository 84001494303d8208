"""RMSNorm, as in Llama: `x / rms(x) * scale`, computed in `cfg.accum_dtype` (at least float32)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig


class RMSNorm(nn.Module):
    """Root-mean-square layer norm over the last axis `[..., D]`."""

    cfg: SageConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.cfg.params_dtype)
        acc = self.cfg.accum_dtype
        xa = x.astype(acc)
        normed = xa * jax.lax.rsqrt(jnp.mean(jnp.square(xa), axis=-1, keepdims=True) + self.cfg.norm_eps)
        return (normed * scale.astype(acc)).astype(self.cfg.compute_dtype)
