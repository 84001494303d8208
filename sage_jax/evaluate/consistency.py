"""Consistency of the analyses with each other, on the true chains of `explanations.encode_true_chains`.

Two numbers, both built on `sage_jax.interpret.consistency`:

- **exact-path consistency** (always available): the score `explain` gives an exact analysis, the agreement
  `1 - mean |Sig_attention - Sig_rollout|` over each step's source tokens between the map with mean attention
  as `w_ij` and the map with attention rollout (`kl_weight = 0`: the logits are the same forward's). It says
  whether the explanation survives widening the aggregation, the paper's refinement trigger (< 0.8).
- **amortised vs exact** (only with Inverse Analysis Layer parameters): the IAL's map and reconstruction
  against the exact map and the forward model: `consistency` (score, fidelity `exp(-mean KL)` over the
  positions that predict step tokens, map agreement over source tokens), plus per step the Spearman rank
  correlation of the two maps over the context candidates and the overlap of their top-`k` candidates.

Both vmap over problems; padding steps (`stack_steps`) are excluded.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.evaluate.explanations import Encoded
from sage_jax.interpret import faithfulness as fa, ranking
from sage_jax.interpret.amortised import analyse
from sage_jax.interpret.consistency import consistency, map_agreement_score
from sage_jax.interpret.significance import significance_from_gradients, step_gradients
from sage_jax.layout import Steps

Array = jax.Array


class AmortisedAgreement(NamedTuple):
    """The IAL against the exact analysis, per problem `[N]` or per step `[N, S]`.

    Attributes:
      score: `[N]` the consistency score (`kl_weight` 0.5 of fidelity, 0.5 of agreement).
      fidelity: `[N]` `exp(-mean KL(forward || reconstruction))` over the positions predicting step tokens.
      agreement: `[N]` `1 - mean |amortised - exact|` over the real steps' source tokens.
      rank_correlation: `[N, S]` Spearman correlation of the two maps over each step's context candidates.
      top_k_overlap: `[N, S]` share of the exact top-`k` candidates that are also in the amortised top-`k`.
      valid: `[N, S]` real steps.
    """

    score: Array
    fidelity: Array
    agreement: Array
    rank_correlation: Array
    top_k_overlap: Array
    valid: Array


def exact_consistency(params: Any, cfg: SageConfig, encoded: Encoded, *, layer: int = 0) -> Array:
    """`[N]` the exact path's consistency score of each problem (attention vs rollout, module docstring)."""
    return _exact_consistency(params, cfg, jnp.asarray(encoded.tokens), encoded.steps, layer=layer)


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def _exact_consistency(params, cfg, tokens, steps: Steps, *, layer):
    def one(tokens, steps):
        gradients = step_gradients(params, cfg, tokens, steps, layer=layer)
        attention = significance_from_gradients(gradients, steps, cfg, weighting="attention").score
        rolled = significance_from_gradients(gradients, steps, cfg, weighting="rollout").score
        where = steps.sources & steps.mask.any(-1, keepdims=True)
        return consistency(gradients.logits, gradients.logits, attention, rolled, map_where=where,
                           kl_weight=0.0).score

    return jax.vmap(one)(tokens, steps)


def amortised_agreement(params: Any, inverse_params: Any, cfg: SageConfig, encoded: Encoded, exact: Array, *,
                        k: int) -> AmortisedAgreement:
    """The Inverse Analysis Layer (`inverse_params`) against the exact maps `exact [N, S, T]` (module docstring).

    Raises:
      ValueError: `exact` does not have the shape of `encoded`'s steps, or `k < 1`.
    """
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    if jnp.shape(exact) != encoded.deps.shape:
        raise ValueError(f"exact has shape {jnp.shape(exact)}; expected [N, S, T] = {encoded.deps.shape}")
    return _amortised(params, inverse_params, cfg, jnp.asarray(encoded.tokens), encoded.steps,
                      jnp.asarray(exact), k=k)


@functools.partial(jax.jit, static_argnames=("cfg", "k"))
def _amortised(params, inverse_params, cfg, tokens, steps: Steps, exact, *, k):
    def one(tokens, steps, exact):
        out = analyse(params, inverse_params, cfg, tokens, steps.mask)
        valid = steps.mask.any(-1)
        amortised = out.significance * steps.sources
        where = jnp.any(steps.queries, axis=0)
        c = consistency(out.forward_logits, out.logits, amortised, exact, where=where,
                        map_where=steps.sources & valid[:, None])
        rank, overlap = _rank_measures(amortised, exact, steps, k)
        return c.score, c.fidelity, c.agreement, rank, overlap, valid

    return AmortisedAgreement(*jax.vmap(one)(tokens, steps, exact))


def _rank_measures(candidate: Array, exact: Array, steps: Steps, k: int) -> tuple[Array, Array]:
    """`([n], [n])` Spearman and top-`k` overlap of two maps `[n, T]` over each step's context candidates."""
    candidates = fa.context_candidates(steps.mask)
    rank = jax.vmap(ranking.spearman)(candidate, exact, candidates)
    overlap = jax.vmap(ranking.top_k_overlap, (0, 0, 0, None))(candidate, exact, candidates, k)
    return rank, overlap


class MapAgreement(NamedTuple):
    """Any map against the exact one, with the map measures of `AmortisedAgreement` (same definitions).

    Attributes:
      agreement: `[N]` `1 - mean |candidate - exact|` over the real steps' source tokens.
      rank_correlation: `[N, S]` Spearman correlation over each step's context candidates.
      top_k_overlap: `[N, S]` share of the exact top-`k` candidates that are also the candidate's top-`k`.
      valid: `[N, S]` real steps.
    """

    agreement: Array
    rank_correlation: Array
    top_k_overlap: Array
    valid: Array


def map_agreement(candidate: Array, exact: Array, steps: Steps, *, k: int) -> MapAgreement:
    """A baseline's maps `candidate [N, S, T]` (attention alone, a uniform map, ...) against the exact maps
    `exact [N, S, T]`, measured as `amortised_agreement` measures the IAL's, so the two read side by side.

    Raises:
      ValueError: the maps' shapes differ from the steps', or `k < 1`.
    """
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    for name, value in (("candidate", candidate), ("exact", exact)):
        if jnp.shape(value) != steps.mask.shape:
            raise ValueError(f"{name} has shape {jnp.shape(value)}; expected [N, S, T] = {steps.mask.shape}")
    return _map_agreement(jnp.asarray(candidate), jnp.asarray(exact), steps, k=k)


@functools.partial(jax.jit, static_argnames=("k",))
def _map_agreement(candidate, exact, steps: Steps, *, k):
    def one(candidate, exact, steps):
        valid = steps.mask.any(-1)
        candidate = candidate * steps.sources
        where = steps.sources & valid[:, None]
        return (map_agreement_score(candidate, exact, where), *_rank_measures(candidate, exact, steps, k), valid)

    return MapAgreement(*jax.vmap(one)(candidate, exact, steps))


def summarise_amortised(result: AmortisedAgreement | MapAgreement) -> dict[str, float]:
    """Means over problems (`score`, `fidelity`, `agreement`) and over real steps (the per-step fields); a
    `MapAgreement` has no `consistency` and `fidelity` (a baseline map reconstructs nothing)."""
    r = jax.tree_util.tree_map(np.asarray, result)
    summary = {"map_agreement": float(r.agreement.mean()),
               "rank_correlation": float(r.rank_correlation[r.valid].mean()),
               "top_k_overlap": float(r.top_k_overlap[r.valid].mean())}
    if isinstance(result, AmortisedAgreement):
        summary = {"consistency": float(r.score.mean()), "fidelity": float(r.fidelity.mean()), **summary}
    return summary


__all__ = ["AmortisedAgreement", "MapAgreement", "amortised_agreement", "exact_consistency", "map_agreement",
           "summarise_amortised"]
