"""Multiscale grouped-query attention with recordable and editable internals.

Shapes: `B` batch, `T` queries, `S` keys, `H` query heads, `K` key/value heads, `G = H // K` query heads
per key/value head (head `h` reads key/value head `h // G`, as Hugging Face's `repeat_kv`), `d` head width.
The mask (causality, padding, per-group spans) arrives precomputed as `[B, H, T, S]`; the edits arrive for
this layer only (no layer axis), in the order documented in `sage_jax.trace`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.nn.norm import RMSNorm
from sage_jax.nn.rotary import apply_rotary
from sage_jax.nn.weight import Weight, param
from sage_jax.quant import as_array
from sage_jax.trace import Edits, Record, Trace, apply_edit


class LayerCache(NamedTuple):
    """One layer's key/value buffers: `k`, `v` are `[B, S, K, d]`, `index` the first free slot (scalar)."""

    k: jax.Array
    v: jax.Array
    index: jax.Array


class AttentionOutput(NamedTuple):
    """out `[B, T, D]`; trace fields for this layer; meta `[B, T, n_meta * d]` (weighted values of the meta
    heads, after edits); the updated cache or `None`."""

    out: jax.Array
    trace: Trace
    meta: Optional[jax.Array]
    cache: Optional[LayerCache]


@jax.custom_jvp
def softmax(logits: jax.Array) -> jax.Array:
    """`jax.nn.softmax` over the last axis, with the derivative `y * (dx - sum(y * dx))`.

    The forward is `jax.nn.softmax`'s arithmetic, bit for bit. The rule matters for speed: differentiated
    through `exp` and the division (what `jax.nn.softmax` does unless `jax_softmax_custom_jvp` is set), the
    backward pass stores and re-reads extra `[B, H, T, S]` arrays; this rule needs only the output.
    """
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (logits,), (logits_dot,) = primals, tangents
    probs = softmax(logits)
    return probs, probs * (logits_dot - jnp.sum(probs * logits_dot, axis=-1, keepdims=True))


def value_norms(probs: jax.Array, v: jax.Array, w_o: jax.Array) -> jax.Array:
    """`[B, H, T, S]`: `probs * ||v_s W_O^h||`, the norm each key contributes through each head.

    A function of the values and the output projection alone, so decoding computes it once from the final
    KV cache instead of at every step.

    Args:
      probs: `[B, H, T, S]` attention probabilities.
      v: `[B, S, K, d]` values (query head `h` reads value head `h // G`).
      w_o: `[H, d, D]` the output projection.
    """
    v_heads = jnp.repeat(v, w_o.shape[0] // v.shape[2], axis=2)  # [B, S, H, d]
    norms = jnp.linalg.norm(jnp.einsum("bshd,hde->bhse", v_heads, w_o).astype(probs.dtype), axis=-1)
    return probs * norms[:, :, None, :]


def attention_rows(query_rows: jax.Array, probs: jax.Array) -> jax.Array:
    """`[B, H, R, S]`: `query_rows [B, R, T] @ probs [B, H, T, S]` for each head (`Trace.attn_rows`).

    Reduced here, inside the layer, so that only `R` rows per head leave it: the `[T, S]` matrices are freed
    (or, under rematerialisation, never saved) once the layer is done.
    """
    return jnp.einsum("brt,bhts->bhrs", query_rows.astype(probs.dtype), probs)


class Attention(nn.Module):
    """Self-attention over the three head groups, with Llama-compatible parameters."""

    cfg: SageConfig
    record: Record

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array, edits: Edits,
                 cache: Optional[LayerCache] = None, query_rows: Optional[jax.Array] = None) -> AttentionOutput:
        """Attends `x` `[B, T, D]` at `positions` `[B, T]` over itself or, with `cache`, over the cache.

        `query_rows` `[B, R, T]` (weights over the queries) is what `Trace.attn_rows` reduces the attention by
        (needed only when it is recorded)."""
        cfg = self.cfg
        b, t, _ = x.shape
        n_h, n_kv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        g = n_h // n_kv
        init = nn.initializers.normal(cfg.init_std)
        w_q, w_k, w_v = (Weight(cfg, cfg.d_model, (heads, d), init, name=name)()
                         for heads, name in ((n_h, "q"), (n_kv, "k"), (n_kv, "v")))
        w_o = as_array(param(self, "o", nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5),
                             (n_h, d, cfg.d_model), cfg.params_dtype), cfg.compute_dtype)

        # One [B*T, D] x [D, (H + 2K) d] matmul for q, k and v; rotary on q and k together.
        w_qkv = jnp.concatenate([w.reshape(cfg.d_model, -1) for w in (w_q, w_k, w_v)], axis=1)
        qkv = (x.reshape(b * t, -1) @ w_qkv).reshape(b, t, n_h + 2 * n_kv, d)
        if cfg.qkv_bias:  # Qwen2: [H, d], [K, d], [K, d] under q_bias, k_bias, v_bias
            qkv = qkv + jnp.concatenate(
                [self.param(name, nn.initializers.zeros, (heads, d), cfg.params_dtype)
                 for heads, name in ((n_h, "q_bias"), (n_kv, "k_bias"), (n_kv, "v_bias"))]).astype(qkv.dtype)
        qk = qkv[:, :, :n_h + n_kv]
        if cfg.qk_norm:  # Qwen3: one [d] scale for all query heads, one for all key heads, before the rotation
            qk = jnp.concatenate([RMSNorm(cfg, name="q_norm")(qk[:, :, :n_h]),
                                  RMSNorm(cfg, name="k_norm")(qk[:, :, n_h:])], axis=2)
        qk = apply_rotary(qk, positions, cfg.rope_base, cfg.rope_scaling)
        q = apply_edit(edits.queries, qk[:, :, :n_h])  # [B, T, H, d]
        k = apply_edit(edits.keys, qk[:, :, n_h:])  # [B, T, K, d]
        v = apply_edit(edits.values, qkv[:, :, n_h + n_kv:])
        recorded = dict(queries=q, keys=k, values=v)
        q = q * jnp.asarray(d ** -0.5, q.dtype)  # scaled here: T*d, not T*S

        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, cache.index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, cache.index, 0, 0))
            cache = LayerCache(k, v, cache.index + t)
        s = k.shape[1]

        # Head-major operands ([B, K, G, T, d], [B, K, S, d]) keep both attention matmuls free of transposes
        # of the [T, S] matrices, forward and backward.
        q_heads = q.reshape(b, t, n_kv, g, d).transpose(0, 2, 3, 1, 4)
        k_heads, v_heads = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        logits = jnp.einsum("bkgtd,bksd->bkgts", q_heads, k_heads)
        logits = logits.reshape(b, n_h, t, s).astype(cfg.accum_dtype)
        if edits.logit_scale is not None:
            logits = logits * edits.logit_scale
        logits = apply_edit(edits.scores, logits)
        if edits.edge_mask is not None:
            mask = mask & edits.edge_mask
        if self.record.scores:  # 0 at hidden keys: a decoding step cannot see the keys of later slots
            recorded["scores"] = jnp.where(mask, logits, 0.0)
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        probs = softmax(logits)
        if edits.edge_mask is not None:
            probs = jnp.where(jnp.any(mask, axis=-1, keepdims=True), probs, 0.0)
        if edits.prob_scale is not None:
            probs = probs * edits.prob_scale
        if edits.attn_where is not None:
            probs = jnp.where(edits.attn_where, edits.attn_value, probs)

        probs_c = probs.astype(cfg.compute_dtype)
        heads = jnp.einsum("bkgts,bksd->bkgtd", probs_c.reshape(b, n_kv, g, t, s), v_heads)
        heads = heads.reshape(b, n_h, t, d).transpose(0, 2, 1, 3)  # [B, T, H, d]
        if edits.head_mask is not None:
            heads = heads * edits.head_mask[:, None, :, None].astype(heads.dtype)
        out = (heads.reshape(b * t, n_h * d) @ w_o.reshape(n_h * d, cfg.d_model)).reshape(b, t, cfg.d_model)
        head_out = None
        if self.record.head_out:
            head_out = jnp.einsum("bthd,hde->bthe", heads, w_o)
        if edits.head_delta is not None:
            delta = jnp.broadcast_to(edits.head_delta, (b, t, n_h, cfg.d_model)).astype(out.dtype)
            out = out + jnp.sum(delta, axis=-2)
            head_out = None if head_out is None else head_out + delta
        out = apply_edit(edits.attn_out, out)
        recorded["attn_out"] = out

        trace = Trace(
            attn=probs if self.record.attn else None,
            value_norms=value_norms(probs, v, w_o) if self.record.value_norms else None,
            head_out=head_out,
            attn_rows=attention_rows(query_rows, probs) if self.record.attn_rows else None,
            **{name: value if getattr(self.record, name) else None for name, value in recorded.items()},
        )
        meta = heads[:, :, n_h - cfg.n_meta_heads:, :].reshape(b, t, -1) if cfg.meta_head else None
        return AttentionOutput(out, trace, meta, cache)
