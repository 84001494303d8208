"""Head scores from attention patterns: which heads do a recognisable job.

Each token-level detector asks, for every query, how much attention mass a head puts on the keys that a known
mechanism would look at, and averages that over the queries that have such a key (and over batch rows):

- `previous_token_scores`: the key just before the query (`s = t - 1`);
- `duplicate_token_scores`: earlier keys holding the query's own token (`s < t`, `tokens[s] == tokens[t]`);
- `induction_scores`: keys right after an earlier copy of the query's token (`tokens[s - 1] == tokens[t]`,
  `s <= t`): the head that completes `A B ... A -> B`.

A head that does exactly the job scores 1, one that ignores it 0; a uniform causal head scores the mean share of
its keys that are targets. The usual test input is a random sequence repeated twice: its second half has a
duplicate and an induction target at every query.

`receiver_head_scores` is step-level: Thought Anchors (Bogdan, Macar, Nanda and Conmy 2025, arXiv 2506.19143)
call a head a receiver head when its attention from later reasoning steps concentrates on a few earlier steps,
measured by the kurtosis of each step's "vertical" attention score.

Shapes: `L` layers (those the trace recorded), `B` batch, `H` heads, `T` queries, `S` keys (`S == T`: the
attention of a plain forward over every position), `n` steps. Every function is pure and jit-able; scores are
float32.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from sage_jax.trace import Trace

Array = jax.Array


class ReceiverScores(NamedTuple):
    """Thought Anchors' receiver-head statistics.

    Attributes:
      kurtosis: `[L, H]` excess (Fisher) kurtosis of each head's vertical scores across steps, averaged over the
        batch rows where it is defined: high when a few steps receive most of the attention.
      vertical: `[L, B, H, n]` each step's vertical score, the mean step-to-step attention it receives from the
        steps at least `proximity` later; NaN where no such step exists (the last steps, empty padding steps).
    """

    kurtosis: Array
    vertical: Array


class HeadScores(NamedTuple):
    """Every detector's scores, `[L, H]` each (`receiver` is `None` without step masks)."""

    previous_token: Array
    duplicate_token: Array
    induction: Array
    receiver: Optional[ReceiverScores]


def previous_token_scores(attn: Array, mask: Optional[Array] = None) -> Array:
    """`[L, H]` mean attention from each query `t` to the key `t - 1`.

    Args:
      attn: `[L, B, H, T, T]` attention probabilities (`Trace.attn`).
      mask: `[B, T]` bool, `True` at real tokens; queries on padding or right after it are skipped.
    """
    batch, length = _check_attn(attn)
    real = _real(mask, batch, length)
    t, s = _grid(length)
    targets = (s == t - 1) & real[:, None, :]
    return _target_mass(attn, targets, real)


def duplicate_token_scores(attn: Array, tokens: Array, mask: Optional[Array] = None) -> Array:
    """`[L, H]` mean attention from each query to the earlier keys holding the same token, over the queries that
    have one.

    Args:
      attn: `[L, B, H, T, T]` attention probabilities (`Trace.attn`).
      tokens: `[B, T]` the token ids the attention was computed over.
      mask: `[B, T]` bool, `True` at real tokens (padding is neither a query nor a target).
    """
    batch, length = _check_attn(attn)
    _check_rows("tokens", tokens, batch, length)
    real = _real(mask, batch, length)
    t, s = _grid(length)
    same = tokens[:, :, None] == tokens[:, None, :]
    targets = same & (s < t) & real[:, None, :]
    return _target_mass(attn, targets, real)


def induction_scores(attn: Array, tokens: Array, mask: Optional[Array] = None) -> Array:
    """`[L, H]` mean attention from each query `t` to the keys `s <= t` whose previous token is the query's token
    (`tokens[s - 1] == tokens[t]`), over the queries that have one.

    Args:
      attn: `[L, B, H, T, T]` attention probabilities (`Trace.attn`).
      tokens: `[B, T]` the token ids the attention was computed over.
      mask: `[B, T]` bool, `True` at real tokens (a target and the token before it must be real).
    """
    batch, length = _check_attn(attn)
    _check_rows("tokens", tokens, batch, length)
    real = _real(mask, batch, length)
    t, s = _grid(length)
    before = jnp.roll(tokens, 1, axis=-1)  # before[s] = tokens[s - 1]; s = 0 wraps and is excluded below
    real_before = jnp.roll(real, 1, axis=-1)
    targets = (tokens[:, :, None] == before[:, None, :]) & (s >= 1) & (s <= t) & (real & real_before)[:, None, :]
    return _target_mass(attn, targets, real)


def step_attention(attn: Array, step_masks: Array) -> Array:
    """`[L, B, H, n, n]` mean attention from the tokens of step `i` (rows) to the tokens of step `j` (columns):
    the mean over token pairs, so a long step does not receive more for its length. Entries involving an empty
    step are 0.

    Args:
      attn: `[L, B, H, T, T]` attention probabilities (`Trace.attn`).
      step_masks: `[B, n, T]` or `[n, T]` bool, the tokens each step owns (`sage_jax.layout.Steps.mask`).
    """
    batch, length = _check_attn(attn)
    steps = _step_masks(step_masks, batch, length)
    counts = jnp.sum(steps, axis=-1)  # [B, n]
    pairs = counts[:, :, None] * counts[:, None, :]
    total = jnp.einsum("bit,lbhts,bjs->lbhij", steps, attn.astype(jnp.float32), steps)
    return total / jnp.maximum(pairs, 1)[None, :, None]


def receiver_head_scores(attn: Array, step_masks: Array, proximity: int = 1) -> ReceiverScores:
    """Thought Anchors' receiver-head scores: the kurtosis across steps of the attention each step receives.

    For each head and row: the step-to-step matrix `A[i, j]` (`step_attention`); step `j`'s vertical score is the
    mean of `A[i, j]` over the steps `i >= j + proximity`; the head's score is the excess kurtosis
    (`m4 / m2^2 - 3`, population moments, as `scipy.stats.kurtosis` by default) of the vertical scores of the steps
    that have one. A receiver head looks back at a few "anchor" steps from everywhere later, so a few vertical
    scores stand out (high kurtosis); a head that spreads its attention scores low.

    `proximity` skips the nearest steps because every head attends to its immediate context: with 1 only the
    step itself is skipped; Thought Anchors' analyses skip the 3 nearest steps as well (their `proximity_ignore`
    of 4), so that only long-range looking back counts. Per row, the kurtosis is NaN when fewer than two steps
    have a vertical score or the scores are all equal (as in scipy); the batch mean skips those rows.

    Args:
      attn: `[L, B, H, T, T]` attention probabilities (`Trace.attn`).
      step_masks: `[B, n, T]` or `[n, T]` bool, the tokens each step owns (`sage_jax.layout.Steps.mask`); empty
        steps (padding to a common `n`) are ignored.
      proximity: the least distance `i - j` in steps at which step `i`'s attention to step `j` counts (>= 0).
    """
    if not isinstance(proximity, int) or proximity < 0:
        raise ValueError(f"proximity must be a non-negative int (steps), got {proximity!r}")
    matrix = step_attention(attn, step_masks)
    batch, length = _check_attn(attn)
    present = jnp.any(_step_masks(step_masks, batch, length), axis=-1)  # [B, n]
    n = matrix.shape[-1]
    i, j = _grid(n)
    counted = (i >= j + proximity)[None] & present[:, :, None] & present[:, None, :]  # [B, n (i), n (j)]
    senders = jnp.sum(counted, axis=1)  # [B, n]: steps whose attention to step j counts
    sums = jnp.sum(jnp.where(counted[None, :, None], matrix, 0.0), axis=-2)  # [L, B, H, n]
    defined = senders > 0
    vertical = jnp.where(defined[None, :, None], sums / jnp.maximum(senders, 1)[None, :, None], jnp.nan)
    kurtosis = _kurtosis(jnp.where(defined[None, :, None], vertical, 0.0), defined[None, :, None])  # [L, B, H]
    return ReceiverScores(kurtosis=jnp.nanmean(kurtosis, axis=1), vertical=vertical)


def detect_heads(trace: Trace, tokens: Array, *, mask: Optional[Array] = None,
                 step_masks: Optional[Array] = None, proximity: int = 1) -> HeadScores:
    """Every detector at once, from a trace with `attn` (`record=("attn",)`).

    Args:
      trace: the `Trace` of a forward over `tokens` with `Trace.attn` of every query position.
      tokens: `[B, T]` the forward's token ids.
      mask: `[B, T]` bool, `True` at real tokens.
      step_masks: `[B, n, T]` or `[n, T]` the steps' tokens, for the receiver-head scores (skipped without).
      proximity: see `receiver_head_scores`.
    """
    if trace.attn is None:
        raise ValueError("detect_heads needs Trace.attn: run forward with record=(\"attn\",) (or record=\"all\")")
    attn = trace.attn
    receiver = None if step_masks is None else receiver_head_scores(attn, step_masks, proximity)
    return HeadScores(previous_token=previous_token_scores(attn, mask),
                      duplicate_token=duplicate_token_scores(attn, tokens, mask),
                      induction=induction_scores(attn, tokens, mask), receiver=receiver)


def _target_mass(attn: Array, targets: Array, real: Array) -> Array:
    """`[L, H]` the attention mass on `targets [B, T, S]` averaged over the real queries that have a target."""
    mass = jnp.einsum("lbhts,bts->lbht", attn.astype(jnp.float32), targets.astype(jnp.float32))
    rows = (real & jnp.any(targets, axis=-1)).astype(jnp.float32)  # [B, T]
    return jnp.einsum("lbht,bt->lh", mass, rows) / jnp.maximum(jnp.sum(rows), 1.0)


def _kurtosis(values: Array, where: Array) -> Array:
    """Excess kurtosis over the last axis of the `values` selected by `where` (population moments); NaN where
    fewer than two are selected or they are equal to float precision (scipy's test: `m2 <= (eps * mean)^2`)."""
    weight = jnp.broadcast_to(where, values.shape).astype(values.dtype)
    count = jnp.maximum(jnp.sum(weight, axis=-1), 1.0)
    mean = jnp.sum(weight * values, axis=-1) / count
    centred = (values - mean[..., None]) * weight
    m2 = jnp.sum(centred ** 2, axis=-1) / count
    m4 = jnp.sum(centred ** 4, axis=-1) / count
    flat = m2 <= (jnp.finfo(values.dtype).eps * mean) ** 2
    return jnp.where(flat, jnp.nan, m4 / jnp.where(flat, 1.0, m2) ** 2 - 3.0)


def _grid(n: int) -> tuple[Array, Array]:
    """Row and column indices `[n, 1]`, `[1, n]`."""
    index = jnp.arange(n)
    return index[:, None], index[None, :]


def _check_attn(attn: Array) -> tuple[int, int]:
    """`(B, T)` of a full `[L, B, H, T, T]` pattern, or a `ValueError` saying how to record one."""
    shape = tuple(jnp.shape(attn))
    if len(shape) != 5:
        raise ValueError(f"attn must be [layers, batch, heads, queries, keys] (Trace.attn), got shape {shape}")
    if shape[3] != shape[4]:
        raise ValueError(f"attn has {shape[3]} query rows and {shape[4]} keys; the detectors need every query "
                         "position: record attn without Record.positions or reduce")
    return shape[1], shape[3]


def _check_rows(name: str, value: Array, batch: int, length: int) -> None:
    if tuple(jnp.shape(value)) != (batch, length):
        raise ValueError(f"{name} has shape {tuple(jnp.shape(value))}; expected [batch, positions] = "
                         f"{(batch, length)} to match attn")


def _real(mask: Optional[Array], batch: int, length: int) -> Array:
    if mask is None:
        return jnp.ones((batch, length), bool)
    _check_rows("mask", mask, batch, length)
    return jnp.asarray(mask, bool)


def _step_masks(step_masks: Array, batch: int, length: int) -> Array:
    """`[B, n, T]` float32 step masks from `[B, n, T]` or `[n, T]`."""
    shape = tuple(jnp.shape(step_masks))
    if len(shape) == 2:
        step_masks = jnp.broadcast_to(step_masks, (batch,) + shape)
    elif len(shape) != 3 or shape[0] != batch:
        raise ValueError(f"step_masks has shape {shape}; expected [batch={batch}, steps, positions={length}] or "
                         f"[steps, positions={length}]")
    if shape[-1] != length:
        raise ValueError(f"step_masks covers {shape[-1]} positions; attn has {length}")
    return jnp.asarray(step_masks).astype(jnp.float32)
