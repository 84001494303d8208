"""Builders of `sage_jax.Edits`: ablate heads, cut or rescale attention edges, patch residuals.

Every builder is a pure function that returns an `Edits` whose set fields have their full shape
(`[L, B, H]`, `[L, B, H, T, S]`, `[L, B, T, D]`, no broadcast axes), so edits can be stacked along a sweep
axis, vmapped over, inspected and combined (`combine`). Unset fields stay `None` and cost nothing.

Conventions: `L` layers, `B` batch, `H` query heads, `T` query positions, `S` key positions (`S == T`),
`D` model width. An *edge* `(t, s)` is the attention paid by query `t` to key `s`; an edge set is a
`[T, S]` (or `[B, T, S]`) boolean array, usually built by `edges(queries, sources)`.

Two ways to cut an edge:

- `cut_edges`: `prob_scale = 0` on the edge, one forward pass. The key keeps its share of the softmax,
  so the query receives a zero value from it and the row sums to less than 1 (a zero-value ablation).
- `renormalised_cut`: the query attends as if the key did not exist (softmax over the remaining keys);
  this is what masking the token out of the sequence does, so cutting every edge into a token is exactly
  the model never seeing it. `Edits` has no pre-softmax mask, so the builder finds the per-row scale
  `1 / sum of the kept probabilities` by a fixed-point iteration: layer `l`'s attention depends only on
  the edits of layers `< l`, so `L` forward passes make every layer exact. (Exact unless the kept keys'
  probabilities underflow to 0 in float32, i.e. the cut keys held all but ~1e-38 of a row: that row then
  keeps a zero output.) An `Edits.attn_mask` applied before the softmax would make this one pass.

Mean ablation. `Edits` can multiply a head's output (`head_mask`) but cannot replace it by a vector, and
its only additive field, `residual_delta`, enters at the start of a block. `mean_ablate_heads` therefore
zeroes the head in its own layer and adds the reference mean of its output to the stream entering the
next block: every later block sees exactly the mean-ablated stream, but the FFN of the head's own layer
sees the zero-ablated one, and a head in the last layer cannot be mean-ablated (there is no next block).
An `Edits.head_out_delta` `[L, B, T, H, D]` field (the layout of `Trace.head_out`) would make it exact.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.model import forward
from sage_jax.trace import Edits, Trace

Array = jax.Array


def head_selection(cfg: SageConfig, heads: Sequence[tuple[int, int]]) -> Array:
    """`[L, H]` bool, `True` at each `(layer, head)` pair of `heads`; raises on an index out of range."""
    selection = jnp.zeros((cfg.n_layers, cfg.n_heads), bool)
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise ValueError(f"head (layer {layer}, head {head}) is outside the model's "
                             f"{cfg.n_layers} layers x {cfg.n_heads} heads")
        selection = selection.at[layer, head].set(True)
    return selection


def ablate_heads(cfg: SageConfig, heads: Array, *, batch: int = 1) -> Edits:
    """Zero-ablates heads: their weighted values are multiplied by 0 before the output projection.

    Args:
      cfg: the model config.
      heads: `[L, H]` bool, `True` for each head to ablate (see `head_selection`).
      batch: batch size of the forward pass the edit is for.

    Returns:
      `Edits(head_mask [L, B, H])`, 1 everywhere except 0 at the selected heads.
    """
    heads = _check_mask("heads", heads, (cfg.n_layers, cfg.n_heads))
    mask = jnp.where(heads, 0.0, 1.0).astype(jnp.float32)
    return Edits(head_mask=jnp.broadcast_to(mask[:, None, :], (cfg.n_layers, batch, cfg.n_heads)))


def mean_ablate_heads(cfg: SageConfig, heads: Array, reference: Trace, *, batch: int, seq_len: int,
                      over_batch: bool = True) -> Edits:
    """Replaces heads' outputs by their mean over positions (and batch) of a reference trace.

    The head is zeroed in its own layer (`head_mask`) and its reference mean output is added to the stream
    entering the next block (`residual_delta`); see the module docstring for why and for what that leaves
    inexact (the FFN of the head's own layer sees the zero-ablated head).

    Args:
      cfg: the model config.
      heads: `[L, H]` bool (concrete, not traced), the heads to mean-ablate; none may be in the last layer.
      reference: a `Trace` with `head_out` `[L, B', T', H, D]` recorded (any batch and length).
      batch: batch size of the forward pass the edit is for.
      seq_len: sequence length `T` of that forward pass.
      over_batch: average over the reference batch too (otherwise the reference batch must equal `batch`
        and each row gets its own positional mean).

    Returns:
      `Edits(head_mask [L, B, H], residual_delta [L, B, T, D])`.
    """
    heads = _check_mask("heads", heads, (cfg.n_layers, cfg.n_heads))
    if reference.head_out is None:
        raise ValueError("mean_ablate_heads: reference.head_out is None; record it with record=('head_out',)")
    last = np.asarray(heads[-1])
    if last.any():
        raise ValueError(f"mean_ablate_heads: head(s) {np.flatnonzero(last).tolist()} of the last layer "
                         f"({cfg.n_layers - 1}) cannot be mean-ablated: Edits.residual_delta enters at the start "
                         "of a block and no block follows the last one; zero-ablate them with ablate_heads")
    head_out = reference.head_out  # [L, B', T', H, D]
    if not over_batch and head_out.shape[1] != batch:
        raise ValueError(f"mean_ablate_heads: over_batch=False needs reference batch {head_out.shape[1]} "
                         f"== batch {batch}")
    mean = head_out.mean(axis=(1, 2) if over_batch else 2, keepdims=over_batch)  # [L, 1|B, H, D]
    if over_batch:
        mean = mean[:, 0]
    added = jnp.einsum("lbhd,lh->lbd", jnp.broadcast_to(mean, (cfg.n_layers, batch) + mean.shape[2:]),
                       heads.astype(mean.dtype))  # [L, B, D]: what layer l's ablated heads should add
    shifted = jnp.concatenate([jnp.zeros_like(added[:1]), added[:-1]], axis=0)  # enters block l + 1
    delta = jnp.broadcast_to(shifted[:, :, None, :], (cfg.n_layers, batch, seq_len, cfg.d_model))
    return combine(ablate_heads(cfg, heads, batch=batch), Edits(residual_delta=delta))


def edges(queries: Array, sources: Array) -> Array:
    """`[T, S]` edge set `queries[t] & sources[s]` from `[T]` query and `[S]` source masks (or `[B, .]`)."""
    queries, sources = jnp.asarray(queries, bool), jnp.asarray(sources, bool)
    return queries[..., :, None] & sources[..., None, :]


def scale_edges(cfg: SageConfig, edge_set: Array, scale: float | Array, *, layers: Optional[Array] = None,
                heads: Optional[Array] = None, batch: int = 1) -> Edits:
    """Multiplies the attention probabilities of an edge set by `scale` (after the softmax).

    Args:
      cfg: the model config.
      edge_set: `[T, S]` or `[B, T, S]` bool edges to rescale (see `edges`).
      scale: the multiplier (a scalar, or anything broadcasting to `[L, B, H, T, S]`).
      layers: `[L]` bool, the layers to edit (default all).
      heads: `[H]` bool, the heads to edit (default all).
      batch: batch size of the forward pass.

    Returns:
      `Edits(prob_scale [L, B, H, T, S])`, 1 off the selected edges.
    """
    edge_set = jnp.asarray(edge_set, bool)
    if edge_set.ndim not in (2, 3):
        raise ValueError(f"edge_set must be [T, S] or [B, T, S] bool, got shape {edge_set.shape}")
    t, s = edge_set.shape[-2:]
    edge_set = jnp.broadcast_to(edge_set, (batch, t, s))
    layers = _check_mask("layers", jnp.ones(cfg.n_layers, bool) if layers is None else layers, (cfg.n_layers,))
    heads = _check_mask("heads", jnp.ones(cfg.n_heads, bool) if heads is None else heads, (cfg.n_heads,))
    where = layers[:, None, None, None, None] & heads[None, None, :, None, None] & edge_set[None, :, None]
    shape = (cfg.n_layers, batch, cfg.n_heads, t, s)
    scale = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), shape)
    return Edits(prob_scale=jnp.where(where, scale, jnp.ones(shape, jnp.float32)))


def cut_edges(cfg: SageConfig, edge_set: Array, *, layers: Optional[Array] = None,
              heads: Optional[Array] = None, batch: int = 1) -> Edits:
    """Cuts an edge set with `prob_scale = 0` (no renormalisation; see the module docstring)."""
    return scale_edges(cfg, edge_set, 0.0, layers=layers, heads=heads, batch=batch)


@functools.partial(jax.jit, static_argnames=("cfg",))
def renormalised_cut(params, cfg: SageConfig, tokens: Array, edge_set: Array, *,
                     layers: Optional[Array] = None, heads: Optional[Array] = None) -> Edits:
    """Cuts an edge set as if the cut keys were masked out of each query's softmax.

    Runs `cfg.n_layers` forward passes (a fixed-point iteration, exact after the last one; see the module
    docstring). A row whose every visible key is cut keeps a zero output, as `cut_edges` would give it.

    Args:
      params: model parameters.
      cfg: the model config.
      tokens: `[B, T]` the tokens of the forward pass the edit is for.
      edge_set: `[T, S]` or `[B, T, S]` bool edges to cut.
      layers, heads: `[L]`, `[H]` bool restrictions (default all).

    Returns:
      `Edits(prob_scale [L, B, H, T, S])`: 0 on cut edges, the renormalising row scale on kept ones.
    """
    batch = jnp.shape(tokens)[0]
    base = cut_edges(cfg, edge_set, layers=layers, heads=heads, batch=batch).prob_scale
    row_cut = (base == 0).any(axis=-1, keepdims=True)  # [L, B, H, T, 1]

    def refine(_, row_scale):
        attn = forward(params, tokens, cfg, edits=Edits(prob_scale=base * row_scale), record=("attn",)).trace.attn
        kept = attn.sum(axis=-1, keepdims=True)
        return jnp.where(row_cut & (kept > 0), row_scale / jnp.where(kept > 0, kept, 1.0), row_scale)

    row_scale = jax.lax.fori_loop(0, cfg.n_layers, refine, jnp.ones(row_cut.shape, base.dtype))
    return Edits(prob_scale=base * row_scale)


def patch_residual(this: Trace, other: Trace, *, layers: Array, positions: Array) -> Edits:
    """Patches the residual stream of another run into this one at chosen layers and positions.

    `residual_delta[l, b, t] = other.residual[l, b, t] - this.residual[l, b, t]` where selected, 0 elsewhere,
    so the stream entering block `l` at `t` becomes the other run's. Deltas are relative to this run's clean
    trace: patching several layers at once sets each to the other run's stream only if the earlier patches
    do not reach it (patch one layer, or positions that later layers' patches do not depend on).

    Args:
      this: `Trace` of the run to edit, with `residual` `[L, B, T, D]`.
      other: `Trace` of the run to copy from, same shape.
      layers: `[L]` bool, the layers to patch.
      positions: `[T]` or `[B, T]` bool, the positions to patch.

    Returns:
      `Edits(residual_delta [L, B, T, D])`.
    """
    for name, trace in (("this", this), ("other", other)):
        if trace.residual is None:
            raise ValueError(f"patch_residual: {name}.residual is None; record it with record=('residual',)")
    if this.residual.shape != other.residual.shape:
        raise ValueError(f"patch_residual: residual shapes differ: this {this.residual.shape}, "
                         f"other {other.residual.shape}")
    n_layers, batch, seq, _ = this.residual.shape
    layers = _check_mask("layers", layers, (n_layers,))
    positions = jnp.broadcast_to(jnp.asarray(positions, bool), (batch, seq))
    where = layers[:, None, None, None] & positions[None, :, :, None]
    return Edits(residual_delta=jnp.where(where, other.residual - this.residual, 0.0))


def combine(*all_edits: Edits) -> Edits:
    """Composes edits: masks and scales multiply, residual deltas add, attention replacements must not overlap.

    Multiplying `head_mask`, `logit_scale` and `prob_scale` applies each edit's scaling in turn; adding
    `residual_delta` adds each shift. Two `attn_where` replacements cannot compose unambiguously and raise.
    """
    fields = {}
    for name, merge in (("head_mask", jnp.multiply), ("logit_scale", jnp.multiply),
                        ("prob_scale", jnp.multiply), ("residual_delta", jnp.add)):
        values = [getattr(e, name) for e in all_edits if getattr(e, name) is not None]
        fields[name] = None if not values else _reduce(merge, values)
    replacing = [e for e in all_edits if e.attn_where is not None]
    if len(replacing) > 1:
        raise ValueError("combine: more than one Edits sets attn_where/attn_value; merge them by hand")
    if replacing:
        fields.update(attn_where=replacing[0].attn_where, attn_value=replacing[0].attn_value)
    return Edits(**fields)


def _reduce(merge, values):
    out = values[0]
    for value in values[1:]:
        out = merge(out, value)
    return out


def _check_mask(name: str, value, want: tuple[int, ...]) -> Array:
    value = jnp.asarray(value)
    if value.shape != want:
        raise ValueError(f"{name} has shape {value.shape}; expected {want}")
    return value.astype(bool)
