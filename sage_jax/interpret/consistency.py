"""Consistency of the amortised analysis with the forward model and the exact analysis: a score in [0, 1].

    kl_t      = KL(p_forward(. | t) || p_reconstructed(. | t))          per position t
    fidelity  = exp(-mean_t kl_t)                                        in (0, 1], 1 iff equal
    agreement = 1 - mean_{i, j} |amortised[i, j] - exact[i, j]|          in [0, 1] (maps clipped to [0, 1])
    score     = kl_weight * fidelity + (1 - kl_weight) * agreement       (fidelity alone without both maps)

The means run over the positions `where [T]` and the map entries `map_where [n_steps, T]` (all by default).
`exp(-KL)` turns an unbounded divergence into a bounded similarity that is 1 exactly when the IAL reproduces
the forward distribution and halves when the mean KL is ln 2 nats; the mean absolute difference of two maps in
[0, 1] is itself in [0, 1]. The paper refines an explanation whose score is below 0.8.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


class ConsistencyScore(NamedTuple):
    """score `[]` in [0, 1]; kl `[T]` per-position KL (nats); fidelity `[]`; agreement `[]` (NaN without maps)."""

    score: Array
    kl: Array
    fidelity: Array
    agreement: Array


def kl_divergence(logits_p: Array, logits_q: Array) -> Array:
    """`[...]` KL(p || q) in nats between the softmax distributions of `[..., V]` logits."""
    log_p = jax.nn.log_softmax(logits_p.astype(jnp.float32), axis=-1)
    log_q = jax.nn.log_softmax(logits_q.astype(jnp.float32), axis=-1)
    return jnp.maximum((jnp.exp(log_p) * (log_p - log_q)).sum(-1), 0.0)


def consistency(forward_logits: Array, reconstructed_logits: Array, amortised_map: Optional[Array] = None,
                exact_map: Optional[Array] = None, *, where: Optional[Array] = None,
                map_where: Optional[Array] = None, kl_weight: float = 0.5) -> ConsistencyScore:
    """The consistency score of one sequence (module docstring); vmap over problems.

    Args:
      forward_logits: `[T, V]` the forward model's next-token logits.
      reconstructed_logits: `[T, V]` the Inverse Analysis Layer's reconstruction.
      amortised_map: `[n_steps, T]` the IAL's significance map, or `None`.
      exact_map: `[n_steps, T]` the exact significance map, or `None`.
      where: `[T]` bool, the positions whose distributions count (e.g. the rationale); default all.
      map_where: `[n_steps, T]` bool, the map entries that count; default all.
      kl_weight: weight of the fidelity term in [0, 1].

    Returns:
      `ConsistencyScore`.
    """
    if forward_logits.shape != reconstructed_logits.shape or forward_logits.ndim != 2:
        raise ValueError(f"forward_logits {forward_logits.shape} and reconstructed_logits "
                         f"{reconstructed_logits.shape} must both be [T, V]")
    if not 0.0 <= kl_weight <= 1.0:
        raise ValueError(f"kl_weight must lie in [0, 1], got {kl_weight}")
    kl = kl_divergence(forward_logits, reconstructed_logits)
    where = jnp.ones(kl.shape, bool) if where is None else jnp.asarray(where, bool)
    if where.shape != kl.shape:
        raise ValueError(f"where has shape {where.shape}; expected [T] = {kl.shape}")
    fidelity = jnp.exp(-_masked_mean(kl, where))
    if (amortised_map is None) != (exact_map is None):
        raise ValueError("pass both amortised_map and exact_map, or neither")
    if amortised_map is None:
        return ConsistencyScore(fidelity, kl, fidelity, jnp.asarray(jnp.nan, fidelity.dtype))
    if amortised_map.shape != exact_map.shape or amortised_map.ndim != 2:
        raise ValueError(f"amortised_map {amortised_map.shape} and exact_map {exact_map.shape} must both be "
                         "[n_steps, T]")
    map_where = jnp.ones(amortised_map.shape, bool) if map_where is None else jnp.asarray(map_where, bool)
    if map_where.shape != amortised_map.shape:
        raise ValueError(f"map_where has shape {map_where.shape}; expected {amortised_map.shape}")
    agreement = map_agreement_score(amortised_map, exact_map, map_where)
    return ConsistencyScore(kl_weight * fidelity + (1.0 - kl_weight) * agreement, kl, fidelity, agreement)


def map_agreement_score(amortised_map: Array, exact_map: Array, map_where: Array) -> Array:
    """`[]` `1 - mean |amortised - exact|` over `map_where`, both maps `[n_steps, T]` clipped to [0, 1]."""
    gap = jnp.abs(jnp.clip(amortised_map, 0.0, 1.0) - jnp.clip(exact_map, 0.0, 1.0))
    return 1.0 - _masked_mean(gap, map_where)


def _masked_mean(x: Array, where: Array) -> Array:
    return jnp.where(where, x, 0.0).sum() / jnp.maximum(where.sum(), 1)
