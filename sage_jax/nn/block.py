"""The pre-norm decoder block, written as a scan body over layers.

Carry: the residual stream `[B, T, D]` and the running sum of the meta-cognitive heads' weighted values
`[B, T, n_meta * d]` (the meta head reads their mean over layers). Scanned inputs: this layer's `Edits`
and key/value buffers. Scanned outputs: this layer's `Trace` and updated key/value buffers.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from sage_jax.config import SageConfig
from sage_jax.nn.attention import Attention, LayerCache
from sage_jax.nn.ffn import GatedFFN
from sage_jax.nn.norm import RMSNorm
from sage_jax.trace import Edits, Record

Carry = tuple[jax.Array, Optional[jax.Array]]
KV = Optional[tuple[jax.Array, jax.Array]]
Shared = tuple[jax.Array, jax.Array, jax.Array, Optional[jax.Array]]


class Block(nn.Module):
    """`x + Attn(norm(x))`, then `+ gate * FFN(norm(x))`, with `Edits.residual_delta` added on entry."""

    cfg: SageConfig
    record: Record

    @nn.compact
    def __call__(self, carry: Carry, layer_in: tuple[Edits, KV], shared: Shared):
        """One block.

        Args:
          carry: (residual `[B, T, D]`, meta sum `[B, T, n_meta * d]` or `None`).
          layer_in: (this layer's edits, this layer's `(k, v)` buffers `[B, S, K, d]` or `None`).
          shared: (positions `[B, T]`, attention mask `[B, H, T, S]`, cache write index scalar, query weights
            `[B, R, T]` for `Trace.attn_rows` or `None`).

        Returns:
          The new carry and (this layer's trace, its updated `(k, v)` or `None`).
        """
        x, meta_sum = carry
        edits, kv = layer_in
        positions, mask, index, query_rows = shared
        if edits.residual_delta is not None:
            x = x + edits.residual_delta.astype(x.dtype)
        residual = x if self.record.residual else None
        cache = None if kv is None else LayerCache(kv[0], kv[1], index)
        attn = Attention(self.cfg, self.record, name="attn")(
            RMSNorm(self.cfg, name="attn_norm")(x), positions, mask, edits, cache, query_rows)
        x = x + attn.out
        ffn_out, gate = GatedFFN(self.cfg, name="ffn")(RMSNorm(self.cfg, name="ffn_norm")(x))
        x = x + ffn_out
        if meta_sum is not None:
            meta_sum = meta_sum + attn.meta
        trace = attn.trace.replace(gate=gate if self.record.gate else None, residual=residual)
        new_kv = None if attn.cache is None else (attn.cache.k, attn.cache.v)
        return (x, meta_sum), (trace, new_kv)
