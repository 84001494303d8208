"""The pytrees every part of sage_jax shares: what a forward pass recorded, and what to change in it.

Conventions (all fields carry a leading layer axis, because the decoder blocks are scanned):

- `L` layers, `B` batch, `H` query heads, `T` query positions, `S` key positions (`S == T` in a plain
  forward; the cache length while decoding), `D` model width, `R` weighted sets of queries (`forward`'s
  `query_rows`).
- Heads are ordered `[reasoning | memory | meta]` (see `sage_jax.config`).
- `Trace.residual[l]` is the residual stream entering block `l` (after any `Edits.residual_delta[l]` was
  added), so `residual[0]` is the token embedding.

`Trace` fields are `None` unless asked for through `Record`, so a plain forward computes and stores nothing
extra. `Edits` fields are `None` unless set; a field that is set applies to every layer, so set the
identity value (1 for masks and scales, `False` for `attn_where`, 0 for deltas) at layers and positions you
do not want to change. An edit may have size 1 on any axis to broadcast over it (a `[L, 1, H]` head mask
applies to every batch row). Order inside attention: logits x `logit_scale` -> span/causal mask and
`edge_mask` -> softmax -> x `prob_scale` -> replaced where `attn_where` -> weighted values x `head_mask` ->
output projection -> + `head_delta`.
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


@dataclasses.dataclass(frozen=True)
class Record:
    """Which `Trace` fields a forward pass records (static; part of the jit cache key).

    Attributes mirror the `Trace` fields of the same name.
    """

    attn: bool = False
    value_norms: bool = False
    head_out: bool = False
    gate: bool = False
    residual: bool = False
    attn_rows: bool = False

    @classmethod
    def all(cls) -> "Record":
        """Every field that the tokens alone determine: not `attn_rows`, which needs `forward`'s `query_rows`."""
        return cls(**{f.name: f.name not in NEEDS_INPUT for f in dataclasses.fields(cls)})

    @classmethod
    def of(cls, spec: Union["Record", Iterable[str], str, None]) -> "Record":
        """Normalises `None`, `"all"`, a field name, or an iterable of field names into a `Record`."""
        if spec is None:
            return cls()
        if isinstance(spec, Record):
            return spec
        if spec == "all":
            return cls.all()
        names = (spec,) if isinstance(spec, str) else tuple(spec)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"record: unknown Trace field(s) {unknown}; choose from {sorted(known)} or 'all'")
        return cls(**{n: True for n in names})


@struct.dataclass
class Trace:
    """What a forward pass recorded; unrecorded fields are `None`.

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
    """

    attn: Optional[Array] = None
    value_norms: Optional[Array] = None
    head_out: Optional[Array] = None
    gate: Optional[Array] = None
    residual: Optional[Array] = None
    attn_rows: Optional[Array] = None


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
    """

    head_mask: Optional[Array] = None
    head_delta: Optional[Array] = None
    edge_mask: Optional[Array] = None
    attn_where: Optional[Array] = None
    attn_value: Optional[Array] = None
    logit_scale: Optional[Array] = None
    prob_scale: Optional[Array] = None
    residual_delta: Optional[Array] = None

    def is_null(self) -> bool:
        """True when no field is set."""
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


def edit_shapes(cfg: SageConfig, batch: int, q_len: int, k_len: int) -> dict[str, tuple[int, ...]]:
    """The full shape of every `Edits` field for a forward over `[batch, q_len]` tokens and `k_len` keys."""
    attn = (cfg.n_layers, batch, cfg.n_heads, q_len, k_len)
    return dict(head_mask=(cfg.n_layers, batch, cfg.n_heads),
                head_delta=(cfg.n_layers, batch, q_len, cfg.n_heads, cfg.d_model), edge_mask=attn,
                attn_where=attn, attn_value=attn,
                logit_scale=attn, prob_scale=attn, residual_delta=(cfg.n_layers, batch, q_len, cfg.d_model))


def validate_edits(edits: Edits, cfg: SageConfig, batch: int, q_len: int, k_len: int) -> None:
    """Raises `ValueError` naming the first `Edits` field whose shape cannot apply to this forward pass."""
    if not isinstance(edits, Edits):
        raise TypeError(f"edits must be a sage_jax.Edits, got {type(edits).__name__}")
    expected = edit_shapes(cfg, batch, q_len, k_len)
    for name, want in expected.items():
        value = getattr(edits, name)
        if value is None:
            continue
        got = tuple(np.shape(value))
        fits = len(got) == len(want) and all(g in (w, 1) for g, w in zip(got, want))
        if not fits:
            raise ValueError(
                f"Edits.{name} has shape {got}; this forward pass needs {want} "
                f"({_AXES[name]}, each axis of that size or 1)")
    if (edits.attn_where is None) != (edits.attn_value is None):
        raise ValueError("Edits.attn_where and Edits.attn_value must be set together")
    for name in ("attn_where", "edge_mask"):
        value = getattr(edits, name)
        if value is not None and jnp.asarray(value).dtype != jnp.bool_:
            raise ValueError(f"Edits.{name} must be boolean, got {jnp.asarray(value).dtype}")


_ATTN_AXES = "[layers, batch, heads, query, key]"
_AXES = dict(head_mask="[layers, batch, heads]", head_delta="[layers, batch, query, heads, d_model]",
             edge_mask=_ATTN_AXES, attn_where=_ATTN_AXES, attn_value=_ATTN_AXES,
             logit_scale=_ATTN_AXES, prob_scale=_ATTN_AXES, residual_delta="[layers, batch, query, d_model]")


TRACE_QUERY_AXIS = dict(attn=3, value_norms=3, head_out=2, gate=2, residual=2)
"""The query (row) axis of each `Trace` field: where a forward over more tokens adds rows (`attn_rows` has none:
its rows are weighted sets of queries)."""

EDITS_QUERY_AXIS = dict(head_mask=None, head_delta=2, edge_mask=3, attn_where=3, attn_value=3, logit_scale=3,
                        prob_scale=3, residual_delta=2)
"""The query (row) axis of each `Edits` field (`None`: the field has none and applies to every row)."""


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

    return Edits(**{f.name: rows(f.name, getattr(edits, f.name)) for f in dataclasses.fields(edits)})
