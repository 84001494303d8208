"""The pytrees every part of sage_jax shares: what a forward pass recorded, and what to change in it.

Conventions (all fields carry a leading layer axis, because the decoder blocks are scanned):

- `L` layers, `B` batch, `H` query heads, `T` query positions, `S` key positions (`S == T` in a plain
  forward; the cache length while decoding), `D` model width, `R` weighted sets of queries (`forward`'s
  `query_rows`).
- Heads are ordered `[reasoning | memory | meta]` (see `sage_jax.config`).
- `Trace.residual[l]` is the residual stream entering block `l` (after any `Edits.residual_delta[l]` was
  added), so `residual[0]` is the token embedding; `resid_post[l]` is the stream leaving it (`resid_post[-1]` is
  what the final norm reads).
- `NAMES` maps every field to its TransformerLens hook name.

`Trace` fields are `None` unless asked for through `Record`, so a plain forward computes and stores nothing
extra. `Edits` fields are `None` unless set; a field that is set applies to every layer, so set the
identity value (1 for masks and scales, `False` for `attn_where`, 0 for deltas) at layers and positions you
do not want to change. An edit may have size 1 on any axis to broadcast over it (a `[L, 1, H]` head mask
applies to every batch row). The named activations (`queries` ... `resid_post`) are each changed by an `Edit`
(scale, add, replace where) under the `Edits` field of the same name, recorded after their edit.

Order inside a block: `residual_delta` -> norm -> q, k, v (rotary applied; `Edit`s `queries`, `keys`, `values`)
-> logits `q.k / sqrt(d)` x `logit_scale` -> `scores` (edited; recorded masked) -> span/causal mask and
`edge_mask` -> softmax ->
x `prob_scale` -> replaced where `attn_where` -> weighted values x `head_mask` -> output projection ->
+ `head_delta` -> `attn_out` -> `resid_mid` -> norm -> FFN hidden (`mlp_hidden`) -> down projection x gate
-> `mlp_out` -> `resid_post`.

`Record` can also keep only some `layers` (the trace's leading axis then follows that tuple), only some query
`positions`, or their mean (`reduce="mean"`, the query axis kept with size 1), so that a forward stores what
was asked for and no more.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sage_jax.config import SageConfig

Array = jax.Array

NEEDS_INPUT = ("attn_rows",)
"""`Trace` fields that a forward records only from an extra input (`attn_rows`: `query_rows`)."""

NAMES = dict(
    residual="blocks.{l}.hook_resid_pre", queries="blocks.{l}.attn.hook_rot_q", keys="blocks.{l}.attn.hook_rot_k",
    values="blocks.{l}.attn.hook_v", scores="blocks.{l}.attn.hook_attn_scores", attn="blocks.{l}.attn.hook_pattern",
    head_out="blocks.{l}.attn.hook_result", attn_out="blocks.{l}.hook_attn_out",
    resid_mid="blocks.{l}.hook_resid_mid", mlp_hidden="blocks.{l}.mlp.hook_post", gate=None,
    mlp_out="blocks.{l}.hook_mlp_out", resid_post="blocks.{l}.hook_resid_post", value_norms=None, attn_rows=None)
"""Each `Trace` field's TransformerLens hook name (`None`: TransformerLens has none). Differences: `queries` and
`keys` are TransformerLens's rotated ones, before the `1 / sqrt(d)` scale; `keys` and `values` keep the `K`
key/value heads of grouped-query attention (TransformerLens repeats them to `H`); `scores` are 0 where a mask
hides the key (TransformerLens writes `-inf` there; here `attn` is 0 there);
`mlp_out` includes SAGE's reasoning gate."""


@dataclasses.dataclass(frozen=True)
class Record:
    """Which `Trace` fields a forward pass records, and how much of them (static; part of the jit cache key).

    The boolean attributes mirror the `Trace` fields of the same name. The options apply to every recorded field:

    Attributes:
      layers: record only these layers (indices into `[0, L)`, no repeats): each field's leading axis is then
        `len(layers)`, in this order. The selected layers are written into buffers carried through the layer
        scan, so the other layers' activations are never stacked.
      positions: record only these query positions (indices into the forward's `T`; negative counts from the
        end): each field's query axis (`TRACE_QUERY_AXIS`) is then `len(positions)`. `attn_rows` has no query
        axis and is unaffected.
      reduce: `"mean"` averages each field over its (selected) query positions, keeping the axis with size 1.
    """

    attn: bool = False
    value_norms: bool = False
    head_out: bool = False
    gate: bool = False
    residual: bool = False
    attn_rows: bool = False
    queries: bool = False
    keys: bool = False
    values: bool = False
    scores: bool = False
    attn_out: bool = False
    resid_mid: bool = False
    mlp_hidden: bool = False
    mlp_out: bool = False
    resid_post: bool = False
    layers: Optional[tuple[int, ...]] = None
    positions: Optional[tuple[int, ...]] = None
    reduce: Optional[str] = None

    def __post_init__(self):
        for option in ("layers", "positions"):
            value = getattr(self, option)
            if value is None:
                continue
            value = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
            if not value or not all(isinstance(i, (int, np.integer)) for i in value) or len(set(value)) != len(value):
                raise ValueError(f"Record.{option} must be a non-empty tuple of distinct ints, "
                                 f"got {getattr(self, option)!r}")
            object.__setattr__(self, option, tuple(int(i) for i in value))
        if self.reduce not in (None, "mean"):
            raise ValueError(f"Record.reduce must be None or 'mean', got {self.reduce!r}")

    @classmethod
    def all(cls, **options) -> "Record":
        """Every field that the tokens alone determine: not `attn_rows`, which needs `forward`'s `query_rows`."""
        return cls(**{name: name not in NEEDS_INPUT for name in TRACE_FIELDS}, **options)

    @classmethod
    def of(cls, spec: Union["Record", Iterable[str], str, None], **options) -> "Record":
        """Normalises `None`, `"all"`, a field name, or an iterable of field names into a `Record`; `options` are
        `layers`, `positions` and `reduce`."""
        if isinstance(spec, Record):
            return dataclasses.replace(spec, **options) if options else spec
        if spec is None:
            return cls(**options)
        if spec == "all":
            return cls.all(**options)
        names = (spec,) if isinstance(spec, str) else tuple(spec)
        unknown = [n for n in names if n not in TRACE_FIELDS]
        if unknown:
            raise ValueError(f"record: unknown Trace field(s) {unknown}; choose from {sorted(TRACE_FIELDS)} or 'all'")
        return cls(**{n: True for n in names}, **options)

    @property
    def names(self) -> tuple[str, ...]:
        """The recorded `Trace` fields."""
        return tuple(name for name in TRACE_FIELDS if getattr(self, name))

    def check(self, cfg: SageConfig, length: int) -> None:
        """Raises `ValueError` naming the option that cannot apply to `cfg` and a forward over `length` queries."""
        bad = [i for i in self.layers or () if not 0 <= i < cfg.n_layers]
        if bad:
            raise ValueError(f"Record.layers {list(bad)} outside [0, {cfg.n_layers}) (n_layers of {cfg.name!r})")
        bad = [i for i in self.positions or () if not -length <= i < length]
        if bad:
            raise ValueError(f"Record.positions {list(bad)} outside [-{length}, {length}) for {length} query positions")
        positions = [i % length for i in self.positions or ()]
        if len(set(positions)) != len(positions):
            raise ValueError(f"Record.positions {list(self.positions)} name one position twice for length {length}")

    @property
    def rows_only(self) -> "Record":
        """This record without `positions` and `reduce`: the full rows that `select_rows` reduces."""
        return dataclasses.replace(self, positions=None, reduce=None)


@struct.dataclass
class Trace:
    """What a forward pass recorded; unrecorded fields are `None`. The shapes below are those of a full record (see
    `Record` for selected layers, positions or a mean); `F` is the FFN width, `K` the key/value heads, `d` the head
    width.

    Attributes:
      attn: `[L, B, H, T, S]` attention probabilities after all edits.
      value_norms: `[L, B, H, T, S]` value contributions `a_ts * ||v_s W_O^h||`: how much of key `s` reached
        query `t` through head `h`, in residual-stream norm.
      head_out: `[L, B, T, H, D]` each head's contribution to the residual stream, `o_h W_O^h`; the block's
        attention output is their sum over `H`.
      gate: `[L, B, T]` reasoning-gate values `sigma(w_r . x + b)` of each block's FFN.
      residual: `[L, B, T, D]` the residual stream entering each block.
      attn_rows: `[L, B, H, R, S]` `query_rows @ attn` for each head: the attention of `R` weighted sets of
        queries (`forward`'s `query_rows [B, R, T]`; rows normalised to sum 1 give the mean attention of each
        set), after all edits. Reduced inside each layer, so a forward recording it stores `R` rows per head
        instead of `attn`'s `T`: what a chain's steps look at, without the `O(L H T^2)` memory of `attn`.
      queries: `[L, B, T, H, d]` queries after the rotary embedding (and Qwen3's norm), before `1 / sqrt(d)`.
      keys: `[L, B, T, K, d]` the key each position writes, rotated (in decoding: into the cache).
      values: `[L, B, T, K, d]` the value each position writes.
      scores: `[L, B, H, T, S]` attention logits `q.k / sqrt(d)` (times `Edits.logit_scale`, after `Edits.scores`)
        where the query may see the key, 0 where a mask (causal, span, padding, `edge_mask`) hides it.
      attn_out: `[L, B, T, D]` the attention block's output added to the stream (the sum of `head_out` over heads).
      resid_mid: `[L, B, T, D]` the residual stream after attention, entering the FFN's norm.
      mlp_hidden: `[L, B, T, F]` the FFN's hidden activations `silu(W_gate x) * W_up x`.
      mlp_out: `[L, B, T, D]` the FFN's output added to the stream (reasoning gate applied).
      resid_post: `[L, B, T, D]` the residual stream leaving the block.
    """

    attn: Optional[Array] = None
    value_norms: Optional[Array] = None
    head_out: Optional[Array] = None
    gate: Optional[Array] = None
    residual: Optional[Array] = None
    attn_rows: Optional[Array] = None
    queries: Optional[Array] = None
    keys: Optional[Array] = None
    values: Optional[Array] = None
    scores: Optional[Array] = None
    attn_out: Optional[Array] = None
    resid_mid: Optional[Array] = None
    mlp_hidden: Optional[Array] = None
    mlp_out: Optional[Array] = None
    resid_post: Optional[Array] = None


TRACE_FIELDS = tuple(f.name for f in dataclasses.fields(Trace))
ACTIVATIONS = ("queries", "keys", "values", "scores", "attn_out", "resid_mid", "mlp_hidden", "mlp_out", "resid_post")
"""The named activations: each is a `Trace` field and an `Edits` field holding an `Edit`."""


@struct.dataclass
class Edit:
    """A change to one named activation `x`: `where(where, value, x * scale + add)`, each part skipped when unset.

    Every part has the activation's full shape (with its leading layer axis, as every `Edits` field), or size 1 on
    any axis to broadcast: `scale` 0 with `add` a mean is mean ablation; `where` with `value` patches in another
    run's activation. An `Edit` with no part set changes nothing, bit for bit.

    Attributes:
      scale: multiplier of the activation.
      add: added after the scale.
      where: bool; where `True` the activation becomes `value`.
      value: the replacement (used only where `where`).
    """

    scale: Optional[Array] = None
    add: Optional[Array] = None
    where: Optional[Array] = None
    value: Optional[Array] = None

    def apply(self, x: Array) -> Array:
        """`x` changed by this edit (one layer's parts: no layer axis), in `x`'s dtype."""
        if self.scale is not None:
            x = x * jnp.asarray(self.scale).astype(x.dtype)
        if self.add is not None:
            x = x + jnp.asarray(self.add).astype(x.dtype)
        if self.where is not None:
            x = jnp.where(self.where, jnp.asarray(self.value).astype(x.dtype), x)
        return x

    def is_null(self) -> bool:
        """True when no part is set."""
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


def apply_edit(edit: Optional[Edit], x: Array) -> Array:
    """`x` under `edit`, or `x` itself (the same array: a null edit adds no operation) when there is none."""
    return x if edit is None or edit.is_null() else edit.apply(x)


@struct.dataclass
class Edits:
    """Changes to apply during a forward pass; unset fields are `None` and cost nothing.

    Attributes:
      head_mask: `[L, B, H]` multiplier of each head's weighted values (0 ablates the head, 1 keeps it).
      head_delta: `[L, B, T, H, D]` added to each head's contribution to the residual stream (`Trace.head_out`);
        with `head_mask` 0 it replaces a head's output exactly (mean ablation, head-output patching). The
        meta head reads the weighted values before the output projection, so this delta does not reach it.
      edge_mask: `[L, B, H, T, S]` bool; `False` removes the edge before the softmax, so the query's attention
        renormalises over its remaining keys, as if that key were absent (a row with no key left attends to
        nothing: its probabilities are all zero).
      attn_where: `[L, B, H, T, S]` bool; where `True` the attention probability is replaced by `attn_value`.
      attn_value: `[L, B, H, T, S]` replacement probabilities (used only where `attn_where`; not renormalised).
      logit_scale: `[L, B, H, T, S]` multiplier of the attention logits before the softmax.
      prob_scale: `[L, B, H, T, S]` multiplier of the attention probabilities after the softmax
        (not renormalised; 0 cuts an edge).
      residual_delta: `[L, B, T, D]` added to the residual stream entering each block. At zero it is the probe
        whose gradient is the gradient with respect to that hidden state.
      queries, keys, values, scores, attn_out, resid_mid, mlp_hidden, mlp_out, resid_post: an `Edit` of the
        `Trace` field of the same name (same shape, e.g. `mlp_hidden` `[L, B, T, F]`); its `add` at zero is the
        probe whose gradient is the gradient with respect to that activation.
    """

    head_mask: Optional[Array] = None
    head_delta: Optional[Array] = None
    edge_mask: Optional[Array] = None
    attn_where: Optional[Array] = None
    attn_value: Optional[Array] = None
    logit_scale: Optional[Array] = None
    prob_scale: Optional[Array] = None
    residual_delta: Optional[Array] = None
    queries: Optional[Edit] = None
    keys: Optional[Edit] = None
    values: Optional[Edit] = None
    scores: Optional[Edit] = None
    attn_out: Optional[Edit] = None
    resid_mid: Optional[Edit] = None
    mlp_hidden: Optional[Edit] = None
    mlp_out: Optional[Edit] = None
    resid_post: Optional[Edit] = None

    def is_null(self) -> bool:
        """True when no field is set (an `Edit` with no part set counts as unset)."""
        return all(v is None or (isinstance(v, Edit) and v.is_null())
                   for v in (getattr(self, f.name) for f in dataclasses.fields(self)))


def edit_shapes(cfg: SageConfig, batch: int, q_len: int, k_len: int) -> dict[str, tuple[int, ...]]:
    """The full shape of every `Edits` field for a forward over `[batch, q_len]` tokens and `k_len` keys (of each
    part of an `Edit` for the named activations: the shape of the `Trace` field)."""
    n, attn = cfg.n_layers, (cfg.n_layers, batch, cfg.n_heads, q_len, k_len)
    stream = (n, batch, q_len, cfg.d_model)
    return dict(head_mask=(n, batch, cfg.n_heads),
                head_delta=(n, batch, q_len, cfg.n_heads, cfg.d_model), edge_mask=attn,
                attn_where=attn, attn_value=attn, logit_scale=attn, prob_scale=attn, residual_delta=stream,
                queries=(n, batch, q_len, cfg.n_heads, cfg.head_dim),
                keys=(n, batch, q_len, cfg.n_kv_heads, cfg.head_dim),
                values=(n, batch, q_len, cfg.n_kv_heads, cfg.head_dim), scores=attn, attn_out=stream,
                resid_mid=stream, mlp_hidden=(n, batch, q_len, cfg.d_ff), mlp_out=stream, resid_post=stream)


def trace_shapes(cfg: SageConfig, record: Record, batch: int, q_len: int, k_len: int,
                 rows: int = 0) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of every field `record` asks for (for one layer: no layer axis), after its `positions`
    and `reduce`, from a forward over `[batch, q_len]` queries and `k_len` keys (`rows`: `query_rows`' `R`).

    The layer scan carries buffers of these when `record.layers` is set."""
    full = {k: v[1:] for k, v in edit_shapes(cfg, batch, q_len, k_len).items()}
    full.update(attn=full["scores"], value_norms=full["scores"], head_out=full["head_delta"], gate=(batch, q_len),
                residual=full["resid_post"], attn_rows=(batch, cfg.n_heads, rows, k_len))
    kept = 1 if record.reduce else len(record.positions) if record.positions else q_len
    shapes = {}
    for name in record.names:
        shape = list(full[name])
        if name in TRACE_QUERY_AXIS:
            shape[TRACE_QUERY_AXIS[name] - 1] = kept
        dtype = cfg.accum_dtype if name in ("attn", "value_norms", "attn_rows", "scores") else cfg.compute_dtype
        shapes[name] = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
    return shapes


def select_rows(trace: Trace, record: Record, layer_axis: bool = True) -> Trace:
    """`trace` with only `record.positions`' query rows (or their mean, with `record.reduce`) of every field.

    Args:
      trace: fields with their full query axis; `layer_axis` says whether they carry the leading layer axis
        (inside a block they do not).
    """
    if record.positions is None and record.reduce is None:
        return trace
    shift = 0 if layer_axis else 1

    def rows(name, x):
        if x is None or name not in TRACE_QUERY_AXIS:
            return x
        axis = TRACE_QUERY_AXIS[name] - shift
        if record.positions is not None:
            x = jnp.take(x, jnp.asarray(record.positions) % x.shape[axis], axis=axis)
        if record.reduce == "mean":
            x = jnp.mean(x, axis=axis, keepdims=True)
        return x

    return Trace(**{name: rows(name, getattr(trace, name)) for name in TRACE_FIELDS})


def validate_edits(edits: Edits, cfg: SageConfig, batch: int, q_len: int, k_len: int) -> None:
    """Raises `ValueError` naming the first `Edits` field (or `Edit` part) that cannot apply to this forward."""
    if not isinstance(edits, Edits):
        raise TypeError(f"edits must be a sage_jax.Edits, got {type(edits).__name__}")
    expected = edit_shapes(cfg, batch, q_len, k_len)
    for name, want in expected.items():
        value = getattr(edits, name)
        if value is None:
            continue
        if name in ACTIVATIONS:
            if not isinstance(value, Edit):
                raise TypeError(f"Edits.{name} must be a sage_jax.Edit(scale=, add=, where=, value=), "
                                f"got {type(value).__name__}")
            if (value.where is None) != (value.value is None):
                raise ValueError(f"Edits.{name}.where and Edits.{name}.value must be set together")
            parts = {f"{name}.{f.name}": getattr(value, f.name) for f in dataclasses.fields(Edit)}
        else:
            parts = {name: value}
        for part, array in parts.items():
            if array is None:
                continue
            got = tuple(np.shape(array))
            if not (len(got) == len(want) and all(g in (w, 1) for g, w in zip(got, want))):
                raise ValueError(f"Edits.{part} has shape {got}; this forward pass needs {want} "
                                 f"({_axes(name)}, each axis of that size or 1)")
    if (edits.attn_where is None) != (edits.attn_value is None):
        raise ValueError("Edits.attn_where and Edits.attn_value must be set together")
    booleans = {"attn_where": edits.attn_where, "edge_mask": edits.edge_mask}
    booleans.update({f"{n}.where": getattr(edits, n).where for n in ACTIVATIONS if getattr(edits, n) is not None})
    for name, value in booleans.items():
        if value is not None and jnp.asarray(value).dtype != jnp.bool_:
            raise ValueError(f"Edits.{name} must be boolean, got {jnp.asarray(value).dtype}")


_AXIS_NAMES = dict(
    head_mask="heads", head_delta="query, heads, d_model", residual_delta="query, d_model",
    queries="query, heads, head_dim", keys="query, kv_heads, head_dim", values="query, kv_heads, head_dim",
    mlp_hidden="query, d_ff", **{n: "query, d_model" for n in ("attn_out", "resid_mid", "mlp_out", "resid_post")},
    **{n: "heads, query, key" for n in ("edge_mask", "attn_where", "attn_value", "logit_scale", "prob_scale",
                                         "scores")})


def _axes(name: str) -> str:
    return f"[layers, batch, {_AXIS_NAMES[name]}]"


TRACE_QUERY_AXIS = dict(attn=3, value_norms=3, head_out=2, gate=2, residual=2, queries=2, keys=2, values=2,
                        scores=3, attn_out=2, resid_mid=2, mlp_hidden=2, mlp_out=2, resid_post=2)
"""The query (row) axis of each `Trace` field: where a forward over more tokens adds rows (`attn_rows` has none:
its rows are weighted sets of queries)."""

EDITS_QUERY_AXIS = dict(head_mask=None, head_delta=2, edge_mask=3, attn_where=3, attn_value=3, logit_scale=3,
                        prob_scale=3, residual_delta=2, **{n: TRACE_QUERY_AXIS[n] for n in ACTIVATIONS})
"""The query (row) axis of each `Edits` field, and of each part of its `Edit`s (`None`: the field has none and
applies to every row)."""


def edit_rows(edits: Edits, start, size: int) -> Edits:
    """The rows `[start, start + size)` of every field of `edits` (a field of size 1 there broadcasts, and stays).

    Decoding runs the queries of one sequence a few at a time; this gives each call the part of an `Edits`
    sized for the whole sequence that its queries use (keys stay whole).
    """
    def rows(name, value):
        axis = EDITS_QUERY_AXIS[name]
        if value is None or axis is None or jnp.shape(value)[axis] == 1:
            return value
        return jax.lax.dynamic_slice_in_dim(jnp.asarray(value), start, size, axis)

    def field(name, value):
        if isinstance(value, Edit):
            return Edit(**{f.name: rows(name, getattr(value, f.name)) for f in dataclasses.fields(Edit)})
        return rows(name, value)

    return Edits(**{f.name: field(f.name, getattr(edits, f.name)) for f in dataclasses.fields(edits)})
