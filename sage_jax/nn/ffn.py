"""The reasoning-gated SwiGLU FFN.

`FFN(x) = g(x) * W_down(silu(W_gate x) * W_up x)` with a per-token gate `g(x) = sigma(w_r . x + b)`.
The bias starts positive (`cfg.gate_init_bias`) so the gate is open at initialisation and the block
behaves like a plain SwiGLU FFN until training teaches it which tokens carry reasoning. With
`cfg.reasoning_gate=False` the gate is absent and the FFN is exactly Llama's.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.nn.weight import Weight
from sage_jax.trace import Edit, apply_edit


class FFNOutput(NamedTuple):
    """out `[B, T, D]` (gate applied); gate `[B, T]` or `None`; hidden `[B, T, F]` (after `hidden_edit`)."""

    out: jax.Array
    gate: Optional[jax.Array]
    hidden: jax.Array


class GatedFFN(nn.Module):
    """SwiGLU FFN with the reasoning gate; maps `[B, T, D]` to `FFNOutput`."""

    cfg: SageConfig

    @nn.compact
    def __call__(self, x: jax.Array, hidden_edit: Optional[Edit] = None) -> FFNOutput:
        """`hidden_edit` changes this layer's hidden activations (`Trace.mlp_hidden`) before the down projection."""
        cfg = self.cfg
        init = nn.initializers.normal(cfg.init_std)
        out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
        w_gate = Weight(cfg, cfg.d_model, (cfg.d_ff,), init, name="wi_gate")()
        w_up = Weight(cfg, cfg.d_model, (cfg.d_ff,), init, name="wi_up")()
        w_out = Weight(cfg, cfg.d_ff, (cfg.d_model,), out_init, name="wo")()
        rows = x.reshape(-1, cfg.d_model)  # [B*T, D]: plain matrix products, forward and backward
        gate_up = rows @ jnp.concatenate([w_gate, w_up], axis=1)  # one [D, 2F] matmul for both branches
        hidden = nn.silu(gate_up[:, :cfg.d_ff]) * gate_up[:, cfg.d_ff:]
        if hidden_edit is not None and not hidden_edit.is_null():
            hidden = apply_edit(hidden_edit, hidden.reshape(x.shape[:-1] + (cfg.d_ff,))).reshape(hidden.shape)
        out = (hidden @ w_out).reshape(x.shape)
        hidden = hidden.reshape(x.shape[:-1] + (cfg.d_ff,))
        if not cfg.reasoning_gate:
            return FFNOutput(out, None, hidden)
        w_r = self.param("gate_w", nn.initializers.zeros, (cfg.d_model,), cfg.params_dtype)
        b_r = self.param("gate_b", nn.initializers.constant(cfg.gate_init_bias), (), cfg.params_dtype)
        gate = jax.nn.sigmoid((rows @ w_r.astype(x.dtype)).reshape(x.shape[:-1]) + b_r.astype(x.dtype))
        return FFNOutput(out * gate[..., None], gate, hidden)
