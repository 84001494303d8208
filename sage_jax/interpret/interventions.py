"""Builders of `sage_jax.Edits`: ablate or replace heads, cut or rescale attention edges, patch residuals.

Every builder is a pure function that returns an `Edits` whose set fields have their full shape
(`[L, B, H]`, `[L, B, T, H, D]`, `[L, B, H, T, S]`, `[L, B, T, D]`, no broadcast axes), so edits can be
stacked along a sweep axis, vmapped over, inspected and merged (`merge_edits`). Unset fields stay `None` and
cost nothing. None of them runs the model.

Conventions: `L` layers, `B` batch, `H` query heads, `T` query positions, `S` key positions (`S == T`),
`D` model width. An *edge* `(t, s)` is the attention paid by query `t` to key `s`; an edge set is a
`[T, S]` (or `[B, T, S]`) boolean array, usually built by `edges(queries, sources)`.

Two ways to cut an edge:

- `cut_edges` (the sound deletion): `Edits.edge_mask` is `False` on the edge, so the key is removed before
  the softmax and the query renormalises over its remaining keys, as if the key were absent. Cutting every
  edge into a token is exactly masking that token out of the sequence.
- `zero_edges` (a zero-value ablation): `Edits.prob_scale` is 0 on the edge, after the softmax. The key
  keeps its share of the softmax, so the query receives a zero value from it and its row sums to less
  than 1.

Replacing a head's output. `Edits.head_mask` 0 removes a head's weighted values and `Edits.head_delta`
adds a vector to its contribution to the residual stream, so the pair replaces that contribution exactly,
in any layer (`mean_ablate_heads`, `patch_head_outputs`). The meta-cognitive head reads the weighted values
before the output projection: a replaced meta head contributes zero to the meta readout.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.trace import ACTIVATIONS, Edit, Edits, Trace

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


def replace_heads(cfg: SageConfig, heads: Array, outputs: Array) -> Edits:
    """Replaces the selected heads' contributions to the residual stream by `outputs`, in any layer.

    The head's weighted values are zeroed (`head_mask`) and `outputs` is added in their place
    (`head_delta`), so the head contributes exactly `outputs` whatever else is edited upstream.

    Args:
      cfg: the model config.
      heads: `[L, H]` bool, the heads to replace.
      outputs: `[L, B, T, H, D]` the replacement contributions (the layout of `Trace.head_out`); read only
        at the selected heads.

    Returns:
      `Edits(head_mask [L, B, H], head_delta [L, B, T, H, D])`, the delta 0 off the selected heads.
    """
    heads = _check_mask("heads", heads, (cfg.n_layers, cfg.n_heads))
    outputs = jnp.asarray(outputs)
    if outputs.ndim != 5 or outputs.shape[0] != cfg.n_layers or outputs.shape[3:] != (cfg.n_heads, cfg.d_model):
        raise ValueError(f"outputs has shape {outputs.shape}; expected [layers, batch, T, heads, d_model] = "
                         f"[{cfg.n_layers}, B, T, {cfg.n_heads}, {cfg.d_model}]")
    return _replacement(heads, outputs)


def mean_ablate_heads(cfg: SageConfig, heads: Array, reference: Trace, *, batch: int, seq_len: int,
                      over_batch: bool = True) -> Edits:
    """Replaces heads' outputs by their mean over positions (and batch) of a reference trace.

    Exact in every layer, the last included: see `replace_heads`.

    Args:
      cfg: the model config.
      heads: `[L, H]` bool, the heads to mean-ablate.
      reference: a `Trace` with `head_out` `[L, B', T', H, D]` recorded (any length; any batch when
        `over_batch`).
      batch: batch size of the forward pass the edit is for.
      seq_len: sequence length `T` of that forward pass.
      over_batch: average over the reference batch and positions (one mean per head), or, when `False`,
        over positions only (the reference batch must equal `batch`; row `b` gets row `b`'s mean).

    Returns:
      `Edits(head_mask [L, B, H], head_delta [L, B, T, H, D])`.
    """
    if reference.head_out is None:
        raise ValueError("mean_ablate_heads: reference.head_out is None; record it with record=('head_out',)")
    head_out = reference.head_out  # [L, B', T', H, D]
    if not over_batch and head_out.shape[1] != batch:
        raise ValueError(f"mean_ablate_heads: over_batch=False needs reference batch {head_out.shape[1]} "
                         f"== batch {batch}")
    mean = head_out.mean(axis=(1, 2) if over_batch else 2, keepdims=True)  # [L, 1|B, 1, H, D]
    return replace_heads(cfg, heads, jnp.broadcast_to(mean, (cfg.n_layers, batch, seq_len) + mean.shape[3:]))


def patch_head_outputs(this: Trace, other: Trace, heads: Array, *, positions: Optional[Array] = None) -> Edits:
    """Patches the selected heads' outputs from another run (`other.head_out`) into this one.

    At patched positions a selected head contributes exactly the other run's output, whatever else is
    edited. `head_mask` has no position axis, so a selected head is replaced at every position: at the
    unpatched ones by this run's recorded output, which is what it would output unless another edit upstream
    changes it there (patch all positions, the default, and the question does not arise).

    Args:
      this: `Trace` of the run to edit, with `head_out` `[L, B, T, H, D]`.
      other: `Trace` of the run to copy from, same shape.
      heads: `[L, H]` bool, the heads to patch.
      positions: `[T]` or `[B, T]` bool, the positions to patch (default all).

    Returns:
      `Edits(head_mask [L, B, H], head_delta [L, B, T, H, D])`.
    """
    for name, trace in (("this", this), ("other", other)):
        if trace.head_out is None:
            raise ValueError(f"patch_head_outputs: {name}.head_out is None; record it with record=('head_out',)")
    if this.head_out.shape != other.head_out.shape:
        raise ValueError(f"patch_head_outputs: head_out shapes differ: this {this.head_out.shape}, "
                         f"other {other.head_out.shape}")
    n_layers, batch, seq, n_heads, _ = this.head_out.shape
    if positions is None:
        outputs = other.head_out
    else:
        positions = jnp.broadcast_to(jnp.asarray(positions, bool), (batch, seq))
        outputs = jnp.where(positions[None, :, :, None, None], other.head_out, this.head_out)
    return _replacement(_check_mask("heads", heads, (n_layers, n_heads)), outputs)


def edges(queries: Array, sources: Array) -> Array:
    """`[T, S]` edge set `queries[t] & sources[s]` from `[T]` query and `[S]` source masks (or `[B, .]`)."""
    queries, sources = jnp.asarray(queries, bool), jnp.asarray(sources, bool)
    return queries[..., :, None] & sources[..., None, :]


def cut_edges(cfg: SageConfig, edge_set: Array, *, layers: Optional[Array] = None,
              heads: Optional[Array] = None, batch: int = 1) -> Edits:
    """Removes an edge set before the softmax: each query renormalises over its remaining keys.

    Cutting every edge into a token equals masking that token out of the sequence (one forward pass). A
    query whose every key is cut attends to nothing (a zero attention output).

    Args:
      cfg: the model config.
      edge_set: `[T, S]` or `[B, T, S]` bool edges to cut (see `edges`).
      layers: `[L]` bool, the layers to edit (default all).
      heads: `[H]` bool, the heads to edit (default all).
      batch: batch size of the forward pass.

    Returns:
      `Edits(edge_mask [L, B, H, T, S])`, `False` on the selected edges.
    """
    return Edits(edge_mask=~_edge_selection(cfg, edge_set, layers, heads, batch))


def scale_edges(cfg: SageConfig, edge_set: Array, scale: float | Array, *, layers: Optional[Array] = None,
                heads: Optional[Array] = None, batch: int = 1) -> Edits:
    """Multiplies the attention probabilities of an edge set by `scale` (after the softmax, not renormalised).

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
    where = _edge_selection(cfg, edge_set, layers, heads, batch)
    scale = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), where.shape)
    return Edits(prob_scale=jnp.where(where, scale, jnp.ones(where.shape, jnp.float32)))


def zero_edges(cfg: SageConfig, edge_set: Array, *, layers: Optional[Array] = None,
               heads: Optional[Array] = None, batch: int = 1) -> Edits:
    """Zero-value ablation of an edge set: `prob_scale = 0`, so the rows are not renormalised (module docstring).

    Same arguments as `cut_edges`; returns `Edits(prob_scale [L, B, H, T, S])`.
    """
    return scale_edges(cfg, edge_set, 0.0, layers=layers, heads=heads, batch=batch)


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


def merge_edits(*all_edits: Edits) -> Edits:
    """Composes edits: masks and scales multiply, edge masks intersect, deltas add.

    Multiplying `head_mask`, `logit_scale` and `prob_scale` applies each edit's scaling in turn; `edge_mask`
    keeps an edge only if every edit keeps it; `head_delta` and `residual_delta` add each shift. So two
    edits that replace the *same* head (`replace_heads`) add their replacements: merge replacements of
    disjoint heads. Two `attn_where` replacements cannot compose unambiguously and raise. The `Edit`s of a named
    activation compose in order (the first's scale and add, then the next's); one that replaces (`where`) composes
    with nothing else, and raises.
    """
    fields = {}
    for name, merge in (("head_mask", jnp.multiply), ("head_delta", jnp.add), ("edge_mask", jnp.logical_and),
                        ("logit_scale", jnp.multiply), ("prob_scale", jnp.multiply), ("residual_delta", jnp.add)):
        values = [getattr(e, name) for e in all_edits if getattr(e, name) is not None]
        fields[name] = None if not values else _reduce(merge, values)
    replacing = [e for e in all_edits if e.attn_where is not None]
    if len(replacing) > 1:
        raise ValueError("merge_edits: more than one Edits sets attn_where/attn_value; merge them by hand")
    if replacing:
        fields.update(attn_where=replacing[0].attn_where, attn_value=replacing[0].attn_value)
    for name in ACTIVATIONS:
        edits = [getattr(e, name) for e in all_edits if getattr(e, name) is not None and not getattr(e, name).is_null()]
        fields[name] = None if not edits else _reduce(functools.partial(_compose, name), edits)
    return Edits(**fields)


def _compose(name: str, first: Edit, then: Edit) -> Edit:
    """`then` applied after `first`: `(x * s1 + a1) * s2 + a2` is one `Edit` (scale `s1 s2`, add `a1 s2 + a2`);
    a replacement followed by anything but nothing is ambiguous as one `Edit`, and raises."""
    if first.where is not None or then.where is not None:
        raise ValueError(f"merge_edits: more than one Edits changes {name} and one of them replaces it "
                         f"(Edits.{name}.where); merge them by hand")
    scale = first.scale if then.scale is None else then.scale if first.scale is None else first.scale * then.scale
    add = first.add
    if add is not None and then.scale is not None:
        add = add * then.scale
    add = then.add if add is None else add if then.add is None else add + then.add
    return Edit(scale=scale, add=add)


def _replacement(heads: Array, outputs: Array) -> Edits:
    """`head_mask` 0 and `head_delta = outputs` at the `[L, H]` selected heads, for `[L, B, T, H, D]` outputs."""
    n_layers, batch, _, n_heads, _ = outputs.shape
    mask = jnp.where(heads, 0.0, 1.0).astype(jnp.float32)
    return Edits(head_mask=jnp.broadcast_to(mask[:, None, :], (n_layers, batch, n_heads)),
                 head_delta=jnp.where(heads[:, None, None, :, None], outputs, jnp.zeros((), outputs.dtype)))


def _edge_selection(cfg: SageConfig, edge_set: Array, layers: Optional[Array], heads: Optional[Array],
                    batch: int) -> Array:
    """`[L, B, H, T, S]` bool: the edge set at the selected layers and heads."""
    edge_set = jnp.asarray(edge_set, bool)
    if edge_set.ndim not in (2, 3):
        raise ValueError(f"edge_set must be [T, S] or [B, T, S] bool, got shape {edge_set.shape}")
    t, s = edge_set.shape[-2:]
    edge_set = jnp.broadcast_to(edge_set, (batch, t, s))
    layers = _check_mask("layers", jnp.ones(cfg.n_layers, bool) if layers is None else layers, (cfg.n_layers,))
    heads = _check_mask("heads", jnp.ones(cfg.n_heads, bool) if heads is None else heads, (cfg.n_heads,))
    return layers[:, None, None, None, None] & heads[None, None, :, None, None] & edge_set[None, :, None]


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
