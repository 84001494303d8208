"""The reasoning-gated SwiGLU FFN.

`FFN(x) = g(x) * W_down(silu(W_gate x) * W_up x)` with a per-token gate `g(x) = sigma(w_r . x + b)`.
The bias starts positive (`cfg.gate_init_bias`) so the gate is open at initialisation and the block
behaves like a plain SwiGLU FFN until training teaches it which tokens carry reasoning. With
`cfg.reasoning_gate=False` the gate is absent and the FFN is exactly Llama's.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig


class GatedFFN(nn.Module):
    """SwiGLU FFN with the reasoning gate; maps `[B, T, D]` to (`[B, T, D]`, gate `[B, T]` or `None`)."""

    cfg: SageConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, Optional[jax.Array]]:
        cfg = self.cfg
        init = nn.initializers.normal(cfg.init_std)
        out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
        dense = lambda features, name, kernel_init: nn.Dense(  # noqa: E731
            features, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
            kernel_init=kernel_init, name=name)
        hidden = nn.silu(dense(cfg.d_ff, "wi_gate", init)(x)) * dense(cfg.d_ff, "wi_up", init)(x)
        out = dense(cfg.d_model, "wo", out_init)(hidden)
        if not cfg.reasoning_gate:
            return out, None
        w_r = self.param("gate_w", nn.initializers.zeros, (cfg.d_model,), cfg.params_dtype)
        b_r = self.param("gate_b", nn.initializers.constant(cfg.gate_init_bias), (), cfg.params_dtype)
        gate = jax.nn.sigmoid(jnp.einsum("btd,d->bt", x, w_r.astype(x.dtype)) + b_r.astype(x.dtype))
        return out * gate[..., None], gate
