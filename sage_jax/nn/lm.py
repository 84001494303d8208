"""SageLM: token embedding, the scanned stack of decoder blocks, final norm, unembedding, meta head.

Blocks are scanned (`nn.scan`), so every block parameter has a leading `[n_layers]` axis; `Trace` fields come
out with the same leading axis and `Edits` go in with it. The scan is unrolled unless `cfg.remat` (see below).
Out-of-vocabulary ids never reach here from `sage_jax.forward` with concrete tokens (they raise); under
`jit` they embed as NaN rather than being clipped to a valid id, so the error is visible downstream. Negative ids
are moved past the vocabulary first: `jnp.take` wraps them like numpy (id -1 would read row `V - 1`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.nn.block import Block
from sage_jax.nn.meta import MetaHead
from sage_jax.nn.norm import RMSNorm
from sage_jax.nn.weight import Weight, param
from sage_jax.quant import as_array, embed_rows
from sage_jax.trace import Edits, Record, Trace, trace_shapes


class LMOutput(NamedTuple):
    """logits `[B, T, V]` in `cfg.accum_dtype` (float32 unless the model is float64); trace (leading layer axis);
    meta_logits `[B, T]` or `None`; hidden `[B, T, D]` the final normed residual stream;
    kv `([L, B, S, K, d], [L, B, S, K, d])` or `None`."""

    logits: jax.Array
    trace: Trace
    meta_logits: Optional[jax.Array]
    hidden: jax.Array
    kv: Optional[tuple[jax.Array, jax.Array]]


class SageLM(nn.Module):
    """The SAGE-nano forward model."""

    cfg: SageConfig
    record: Record = Record()

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array, edits: Edits = Edits(),
                 kv: Optional[tuple[jax.Array, jax.Array]] = None, index: jax.Array | int = 0,
                 query_rows: Optional[jax.Array] = None) -> LMOutput:
        """Runs the model.

        Args:
          tokens: `[B, T]` token ids.
          positions: `[B, T]` rotary positions.
          mask: `[B, H, T, S]` keys each head may see (`sage_jax.nn.masks.attention_mask`).
          edits: `Edits` with a leading layer axis on every set field.
          kv: stacked key/value buffers `[L, B, S, K, d]` to attend over and write into at `index`.
          index: first free cache slot (ignored without `kv`).
          query_rows: `[B, R, T]` weights over the queries that `Trace.attn_rows` reduces attention by.
        """
        cfg = self.cfg
        embed = param(self, "embed", nn.initializers.normal(cfg.init_std), (cfg.vocab_size, cfg.d_model),
                      cfg.params_dtype)
        ids = jnp.where(tokens < 0, cfg.vocab_size, tokens)  # negative ids would wrap around: make them fill
        x = embed_rows(embed, ids, cfg.compute_dtype)
        # Under a training mesh (`sharding.activation_rules`), rows follow the batch axes; otherwise the stream
        # would follow the embedding's fsdp-sharded width and XLA would all-reduce whole activations per layer.
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        block = nn.remat(Block, prevent_cse=False) if cfg.remat else Block
        # Unrolled unless rematerialised: the looped backward spends a large share of a CPU step filling and
        # slicing the stacked per-layer residuals, which straight-line code does not need. Large remat'ed
        # models keep the loop (compile time, memory). Parameters are stacked `[n_layers, ...]` either way.
        unroll = 1 if cfg.remat else cfg.n_layers
        layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(0, nn.broadcast), length=cfg.n_layers, unroll=unroll)(cfg, self.record,
                                                                                         name="layers")
        meta0 = (jnp.zeros(tokens.shape + (cfg.n_meta_heads * cfg.head_dim,), cfg.compute_dtype)
                 if cfg.meta_head else None)
        kept = None
        if self.record.layers is not None:  # buffers for the selected layers only, written inside the scan
            rows = 0 if query_rows is None else query_rows.shape[1]
            shapes = trace_shapes(cfg, self.record, tokens.shape[0], tokens.shape[1], mask.shape[-1], rows)
            kept = Trace(**{name: jnp.zeros((len(self.record.layers),) + s.shape, s.dtype)
                            for name, s in shapes.items()})
        (x, meta_sum, kept), (trace, new_kv) = layers(
            (x, meta0, kept), (edits, kv, jnp.arange(cfg.n_layers)), (positions, mask, jnp.asarray(index), query_rows))
        trace = trace if kept is None else kept

        hidden = RMSNorm(cfg, name="final_norm")(x)
        if cfg.tie_embeddings:
            unembed = as_array(embed, hidden.dtype).T
        else:  # under unembed/kernel, where nn.Dense put it
            unembed = Weight(cfg, cfg.d_model, (cfg.vocab_size,), nn.initializers.normal(cfg.init_std),
                             name="unembed")()
        logits = project_logits(hidden, unembed, cfg)
        meta_logits = MetaHead(cfg, name="meta_head")(meta_sum / cfg.n_layers) if cfg.meta_head else None
        return LMOutput(logits, trace, meta_logits, hidden, new_kv)


def project_logits(hidden: jax.Array, unembed: jax.Array, cfg: SageConfig) -> jax.Array:
    """`[..., V]` logits in `cfg.accum_dtype` from the final normed hidden state `[..., D]` and `unembed [D, V]`."""
    logits = (hidden.reshape(-1, cfg.d_model) @ unembed).reshape(hidden.shape[:-1] + (cfg.vocab_size,))
    return logits.astype(cfg.accum_dtype)
