"""The pre-norm decoder block, written as a scan body over layers.

Carry: the residual stream `[B, T, D]`, the running sum of the meta-cognitive heads' weighted values
`[B, T, n_meta * d]` (the meta head reads their mean over layers), and, when `Record.layers` selects layers,
the trace buffers of those layers. Scanned inputs: this layer's `Edits`, key/value buffers and index. Scanned
outputs: this layer's `Trace` (empty when layers are selected: they are in the carry) and updated key/value
buffers.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.nn.attention import Attention, LayerCache
from sage_jax.nn.ffn import GatedFFN
from sage_jax.nn.norm import RMSNorm
from sage_jax.trace import Edits, Record, Trace, apply_edit, select_rows

Carry = tuple[jax.Array, Optional[jax.Array], Optional[Trace]]
KV = Optional[tuple[jax.Array, jax.Array]]
Shared = tuple[jax.Array, jax.Array, jax.Array, Optional[jax.Array]]


class Block(nn.Module):
    """`x + Attn(norm(x))`, then `+ gate * FFN(norm(x))`, with `Edits.residual_delta` added on entry."""

    cfg: SageConfig
    record: Record

    @nn.compact
    def __call__(self, carry: Carry, layer_in: tuple[Edits, KV, jax.Array], shared: Shared):
        """One block.

        Args:
          carry: (residual `[B, T, D]`, meta sum `[B, T, n_meta * d]` or `None`, the `Trace` buffers of
            `record.layers` (`trace_shapes` with a leading `len(layers)` axis) or `None`).
          layer_in: (this layer's edits, this layer's `(k, v)` buffers `[B, S, K, d]` or `None`, this layer's
            index).
          shared: (positions `[B, T]`, attention mask `[B, H, T, S]`, cache write index scalar, query weights
            `[B, R, T]` for `Trace.attn_rows` or `None`).

        Returns:
          The new carry and (this layer's trace, or an empty one with `record.layers`; its updated `(k, v)` or
          `None`).
        """
        x, meta_sum, kept = carry
        edits, kv, layer = layer_in
        positions, mask, index, query_rows = shared
        if edits.residual_delta is not None:
            x = x + edits.residual_delta.astype(x.dtype)
        residual = x if self.record.residual else None
        cache = None if kv is None else LayerCache(kv[0], kv[1], index)
        attn = Attention(self.cfg, self.record, name="attn")(
            RMSNorm(self.cfg, name="attn_norm")(x), positions, mask, edits, cache, query_rows)
        x = apply_edit(edits.resid_mid, x + attn.out)
        resid_mid = x
        ffn = GatedFFN(self.cfg, name="ffn")(RMSNorm(self.cfg, name="ffn_norm")(x), edits.mlp_hidden)
        mlp_out = apply_edit(edits.mlp_out, ffn.out)
        x = apply_edit(edits.resid_post, x + mlp_out)
        if meta_sum is not None:
            meta_sum = meta_sum + attn.meta
        stream = dict(gate=ffn.gate, residual=residual, resid_mid=resid_mid, mlp_hidden=ffn.hidden, mlp_out=mlp_out,
                      resid_post=x)
        trace = attn.trace.replace(**{k: v if getattr(self.record, k) else None for k, v in stream.items()})
        trace = select_rows(trace, self.record, layer_axis=False)
        if kept is not None:
            kept, trace = keep_layer(kept, trace, layer, self.record.layers), Trace()
        new_kv = None if attn.cache is None else (attn.cache.k, attn.cache.v)
        return (x, meta_sum, kept), (trace, new_kv)


def keep_layer(kept: Trace, trace: Trace, layer: jax.Array, layers: tuple[int, ...]) -> Trace:
    """`kept` (buffers `[len(layers), ...]`) with `trace` written into the slot of `layer` when it is selected.

    The slot is read and written back unchanged for a layer not selected, so each layer costs one slice of each
    buffer, not a select over all of it."""
    selected = jnp.asarray(layers) == layer
    slot = jnp.argmax(selected)

    def write(buffer, value):
        if buffer is None:
            return None
        old = jax.lax.dynamic_index_in_dim(buffer, slot, keepdims=False)
        new = jnp.where(jnp.any(selected), value.astype(buffer.dtype), old)
        return jax.lax.dynamic_update_index_in_dim(buffer, new, slot, 0)

    return jax.tree_util.tree_map(write, kept, trace, is_leaf=lambda v: v is None)
