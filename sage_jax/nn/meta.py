"""The meta-cognitive head: a per-position confidence read from the meta-cognitive attention heads.

It sees only what the meta heads gathered (their weighted values, averaged over layers), not the whole
residual stream, so that its confidence is a readout of the heads the paper dedicates to self-monitoring,
and an ablation of those heads (a head mask) reaches it. It returns logits; `sigmoid` gives the confidence.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from sage_jax.config import SageConfig
from sage_jax.nn.norm import RMSNorm


class MetaHead(nn.Module):
    """`[B, T, n_meta * d]` meta-head features to `[B, T]` confidence logits."""

    cfg: SageConfig

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        h = RMSNorm(self.cfg, name="norm")(features)
        logit = nn.Dense(1, dtype=self.cfg.compute_dtype, param_dtype=self.cfg.params_dtype,
                         kernel_init=nn.initializers.normal(self.cfg.init_std), name="proj")(h)
        return logit[..., 0].astype(self.cfg.accum_dtype)
