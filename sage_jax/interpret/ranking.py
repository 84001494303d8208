"""Rank statistics of attribution maps over a candidate set: ranks, Spearman, top-k selection and overlap.

Every comparison of maps in the package (faithfulness deletions, dependency recovery, method agreement, the
amortised-versus-exact agreement, the intervention report) ranks through these functions, so that a
"top-k" or a "rank correlation" means the same thing everywhere. Each takes one map row `scores [T]` and a
bool `candidates [T]` (the positions that compete, e.g. `faithfulness.context_candidates`); vmap over steps
and problems.

Ties, one convention each:
- selection (`order`, `top_k`, `top_k_positions`, `top_k_overlap`): the earlier position wins, so a
  selection is reproducible and never depends on the sort's stability;
- correlation (`ranks`, `spearman`): tied values share their average rank, as in `scipy.stats.spearmanr`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def order(scores: Array, candidates: Array) -> Array:
    """`[T]` int positions best first: the candidates by descending score (earlier first on ties), then the rest."""
    return jnp.argsort(jnp.where(candidates, -scores, jnp.inf), stable=True)


def top_k(scores: Array, candidates: Array, k: int | Array) -> Array:
    """`[T]` bool: the `k` highest-scoring candidates (all of them when fewer; earlier tokens win ties)."""
    best = order(scores, candidates)
    rank = jnp.empty_like(best).at[best].set(jnp.arange(best.shape[0]))
    return candidates & (rank < k)


def top_fraction(scores: Array, candidates: Array, fraction: float | Array) -> Array:
    """`[T]` bool: the top `ceil(fraction * n)` of the `n` candidates by score (earlier tokens win ties)."""
    k = jnp.ceil(fraction * candidates.sum() - 1e-6).astype(jnp.int32)
    return top_k(scores, candidates, k)


def top_k_positions(scores, candidates, k: int) -> tuple[int, ...]:
    """The positions `top_k` selects, best first, as host integers (for reports and rendered text)."""
    candidates = np.asarray(candidates, bool)
    best = np.asarray(order(jnp.asarray(scores), jnp.asarray(candidates)))
    return tuple(int(j) for j in best[:min(k, int(candidates.sum()))])


def top_k_overlap(a: Array, b: Array, candidates: Array, k: int | Array) -> Array:
    """`[]` the share of `b`'s top-`k` candidates that are also in `a`'s: `|top_k(a) & top_k(b)| / k'`, with
    `k' = min(k, number of candidates)` (both sets have that size, so the overlap is symmetric); 0 without
    candidates."""
    mine, theirs = top_k(a, candidates, k), top_k(b, candidates, k)
    return (mine & theirs).sum(-1) / jnp.maximum(theirs.sum(-1), 1)


def ranks(x: Array, where: Array) -> Array:
    """`[T]` average ranks (1-based, ascending) of `x` among the positions `where`; 0 elsewhere."""
    below = ((x[None, :] < x[:, None]) & where[None, :]).sum(-1)
    ties = ((x[None, :] == x[:, None]) & where[None, :]).sum(-1)
    return jnp.where(where, below + (ties + 1) / 2.0, 0.0)


def spearman(x: Array, y: Array, where: Array) -> Array:
    """`[]` Spearman rank correlation of `x` and `y` `[T]` over the positions `where` (average ranks for ties).

    Returns 0 when either side is constant over `where` (no ranking to correlate).
    """
    rx, ry = ranks(x, where), ranks(y, where)
    w = where.astype(rx.dtype)
    n = jnp.maximum(w.sum(), 1.0)
    cx, cy = (rx - (w * rx).sum() / n) * w, (ry - (w * ry).sum() / n) * w
    denom = jnp.sqrt((cx ** 2).sum() * (cy ** 2).sum())
    return jnp.where(denom > 0, (cx * cy).sum() / jnp.where(denom > 0, denom, 1.0), 0.0)
