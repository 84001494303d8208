"""Faithfulness of attribution maps, measured by cutting attention edges (never by changing the input).

Every function takes one sequence: `tokens [T]`, `step_mask [n_steps, T]` (the tokens of each step) and an
attribution map `[n_steps, T]` over source tokens; vmap over problems.

Deletion. To delete source tokens for step `i`, the edges from step `i`'s queries to them are cut in every
layer and head (`sage_jax.interpret.interventions`); the input is never changed, so no out-of-distribution
replacement token enters the model. A step's log-probability is read at the position before each of its
tokens, so its queries are those positions (`step_queries`: the step mask shifted left by one). With
`renormalise=True` (the default) a cut is `cut_edges` (`Edits.edge_mask`, before the softmax): exactly the
model never seeing those tokens from the step's queries; `renormalise=False` is `zero_edges`
(`prob_scale = 0`: the queries receive a zero value from them and their rows are not renormalised). Either
way one forward pass per deletion, run by the one patching engine (`sage_jax.interpret.patching.sweep`;
`deleted_log_probs` only builds each pass's edits). Paths through other tokens' residual streams stay open:
this deletes the step's direct reads, as the significance map scores them.

Candidates. By default the sources considered for step `i` are the tokens before its first query
(`context_candidates`; a query's own token reaches it through the residual stream, which no edge cut
removes); pass `candidates [n_steps, T]` to choose others. The top `k = ceil(f * n)` of the `n` candidates
by attribution are deleted at fraction `f` (ties broken towards earlier tokens).

Scores (ERASER, DeYoung et al. 2020, on step log-probabilities `lp`): comprehensiveness at `f` is
`lp(full) - lp(top-k deleted)` (higher: the map found what the step needs), sufficiency is
`lp(full) - lp(all candidates but the top k deleted)` (lower: the top k suffice); AOPC averages them over
the fractions (1, 5, 10, 20, 50 percent by default).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.interpret.interventions import cut_edges, edges, zero_edges
from sage_jax.interpret.patching import baseline_log_probs, log_prob_metric, sweep
from sage_jax.interpret.ranking import spearman, top_fraction, top_k
from sage_jax.trace import Edits

Array = jax.Array
FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)


class Faithfulness(NamedTuple):
    """Erasure scores of one map.

    Attributes:
      comprehensiveness: `[n_steps, F]` log-probability drop of each step with its top fraction deleted.
      sufficiency: `[n_steps, F]` log-probability drop with everything but its top fraction deleted.
      aopc_comprehensiveness: `[n_steps]` mean over fractions.
      aopc_sufficiency: `[n_steps]` mean over fractions.
      base: `[n_steps]` step log-probabilities of the unedited run.
    """

    comprehensiveness: Array
    sufficiency: Array
    aopc_comprehensiveness: Array
    aopc_sufficiency: Array
    base: Array


class PerturbationCheck(NamedTuple):
    """How an explanation moved under an attention perturbation.

    Attributes:
      before: `[n_steps, T]` the map of the unedited model.
      after: `[n_steps, T]` the map of the edited model.
      rank_correlation: `[n_steps]` Spearman correlation of before and after over the candidates.
      l1: `[n_steps]` mean absolute change over the candidates.
    """

    before: Array
    after: Array
    rank_correlation: Array
    l1: Array


def step_queries(step_mask: Array) -> Array:
    """`[n_steps, T]` bool: the positions whose next-token predictions score each step (`step_mask` shifted left)."""
    step_mask = jnp.asarray(step_mask, bool)
    return jnp.concatenate([step_mask[..., 1:], jnp.zeros_like(step_mask[..., :1])], axis=-1)


def context_candidates(step_mask: Array) -> Array:
    """`[n_steps, T]` bool: the tokens before each step's first query (none for a step without queries)."""
    queries = step_queries(step_mask)
    seq = queries.shape[-1]
    first = jnp.where(queries.any(-1), jnp.argmax(queries, axis=-1), 0)
    return jnp.arange(seq)[None, :] < first[:, None]


def deletion_edits(cfg: SageConfig, queries: Array, sources: Array, *, renormalise: bool = True) -> Edits:
    """`Edits` for one sequence that delete `sources [T]` from `queries [T]` in every layer and head.

    `renormalise` picks `cut_edges` (the queries attend as if the sources were absent) or `zero_edges`.
    """
    cut = cut_edges if renormalise else zero_edges
    return cut(cfg, edges(queries, sources))


@functools.partial(jax.jit, static_argnames=("cfg", "renormalise", "batch_size"))
def deleted_log_probs(params, cfg: SageConfig, tokens: Array, step_mask: Array, deleted: Array, *,
                      renormalise: bool = True, batch_size: Optional[int] = None) -> Array:
    """Log-probability of step `i` when the tokens `deleted[r, i]` are cut from its tokens, for every `r`, `i`.

    Args:
      params, cfg: the model.
      tokens: `[T]`; step_mask: `[n_steps, T]` bool.
      deleted: `[N, n_steps, T]` bool, `N` deletion sets per step.
      renormalise: cut with `cut_edges` (exact deletion) or `zero_edges` (`prob_scale = 0`).
      batch_size: chunk size of the `N * n_steps` edited runs.

    Returns:
      `[N, n_steps]`: entry `[r, i]` is step `i`'s log-probability with `deleted[r, i]` deleted from it.
    """
    tokens, step_mask = _check(tokens, step_mask)
    n_sets, n_steps, seq = deleted.shape
    steps = jnp.tile(jnp.arange(n_steps), n_sets)  # run r * n_steps + i deletes deleted[r, i] from step i
    queries = step_queries(step_mask)

    def make_edits(index):
        step, sources = index
        return deletion_edits(cfg, queries[step], sources, renormalise=renormalise)

    every_step = sweep(params, cfg, tokens, make_edits, (steps, deleted.reshape(n_sets * n_steps, seq)),
                       log_prob_metric(tokens, step_mask), batch_size=batch_size).step  # [N * n_steps, n_steps]
    return jnp.take_along_axis(every_step, steps[:, None], axis=1).reshape(n_sets, n_steps)


@functools.partial(jax.jit, static_argnames=("cfg", "fractions", "renormalise", "batch_size"))
def faithfulness(params, cfg: SageConfig, tokens: Array, step_mask: Array, attribution: Array, *,
                 fractions: tuple[float, ...] = FRACTIONS, candidates: Optional[Array] = None,
                 renormalise: bool = True, batch_size: Optional[int] = None) -> Faithfulness:
    """Comprehensiveness, sufficiency and their AOPC for an attribution map `[n_steps, T]` (module docstring)."""
    tokens, step_mask = _check(tokens, step_mask)
    attribution = _check_map("attribution", attribution, step_mask.shape)
    candidates = context_candidates(step_mask) if candidates is None else _check_map(
        "candidates", candidates, step_mask.shape).astype(bool)
    top = jax.vmap(lambda f: jax.vmap(top_fraction, (0, 0, None))(attribution, candidates, f))(
        jnp.asarray(fractions))  # [F, n_steps, T]
    deleted = jnp.concatenate([top, candidates[None] & ~top])  # comprehensiveness sets, then sufficiency sets
    lp = deleted_log_probs(params, cfg, tokens, step_mask, deleted, renormalise=renormalise,
                           batch_size=batch_size)
    base = baseline_log_probs(params, cfg, tokens, step_mask).step
    n_f = len(fractions)
    comp, suff = (base[None] - lp[:n_f]).T, (base[None] - lp[n_f:]).T
    return Faithfulness(comp, suff, comp.mean(-1), suff.mean(-1), base)


def random_maps(key: Array, step_mask: Array, n_maps: int) -> Array:
    """`[n_maps, n_steps, T]` uniform random attribution maps: the baseline every map must beat."""
    return jax.random.uniform(key, (n_maps,) + jnp.shape(step_mask))


def random_baseline(params, cfg: SageConfig, tokens: Array, step_mask: Array, key: Array, *, n_maps: int = 4,
                    **kwargs) -> Faithfulness:
    """`faithfulness` averaged over `n_maps` random maps drawn with `key` (same keyword arguments)."""
    scores = jax.vmap(lambda m: faithfulness(params, cfg, tokens, step_mask, m, **kwargs))(
        random_maps(key, step_mask, n_maps))
    return jax.tree_util.tree_map(lambda x: x.mean(axis=0), scores)


@functools.partial(jax.jit, static_argnames=("cfg", "fractions", "renormalise", "batch_size"))
def deletion_curve(params, cfg: SageConfig, tokens: Array, step_mask: Array, attribution: Array, *,
                   fractions: tuple[float, ...] = tuple(i / 10 for i in range(11)), candidates: Optional[Array] = None,
                   renormalise: bool = True, batch_size: Optional[int] = None) -> Array:
    """`[n_steps, F]` step log-probability as the top fraction of candidates is deleted (fraction 0 = intact)."""
    tokens, step_mask = _check(tokens, step_mask)
    attribution = _check_map("attribution", attribution, step_mask.shape)
    candidates = context_candidates(step_mask) if candidates is None else jnp.asarray(candidates, bool)
    top = jax.vmap(lambda f: jax.vmap(top_fraction, (0, 0, None))(attribution, candidates, f))(
        jnp.asarray(fractions))
    return deleted_log_probs(params, cfg, tokens, step_mask, top, renormalise=renormalise,
                             batch_size=batch_size).T


@functools.partial(jax.jit, static_argnames=("cfg", "renormalise", "batch_size"))
def token_deletion_effects(params, cfg: SageConfig, tokens: Array, step_mask: Array, *,
                           candidates: Optional[Array] = None, renormalise: bool = True,
                           batch_size: Optional[int] = None) -> Array:
    """`[n_steps, T]` drop of step `i`'s log-probability when token `j` alone is deleted from it.

    This is occlusion by edge cutting, itself an attribution map; non-candidates get 0.
    """
    tokens, step_mask = _check(tokens, step_mask)
    candidates = context_candidates(step_mask) if candidates is None else jnp.asarray(candidates, bool)
    seq = tokens.shape[0]
    single = jnp.eye(seq, dtype=bool)[:, None, :] & candidates[None]  # [T, n_steps, T]
    lp = deleted_log_probs(params, cfg, tokens, step_mask, single, renormalise=renormalise,
                           batch_size=batch_size)  # [T, n_steps]
    base = baseline_log_probs(params, cfg, tokens, step_mask).step
    return jnp.where(candidates, (base[None] - lp).T, 0.0)


def randomisation_check(map_fn: Callable[[dict], Array], params, randomised_params, step_mask: Array, *,
                        candidates: Optional[Array] = None) -> Array:
    """Model-randomisation sanity check (Adebayo et al. 2018): `[n_steps]` Spearman correlation of the maps
    `map_fn(params)` and `map_fn(randomised_params)`. A map that explains the model must change when its
    parameters are randomised: correlations near 1 flag a method that ignores the model."""
    candidates = context_candidates(step_mask) if candidates is None else jnp.asarray(candidates, bool)
    return jax.vmap(spearman)(map_fn(params), map_fn(randomised_params), candidates)


def dependency_recovery(attribution: Array, true_deps: Array, step_mask: Array, k: int, *,
                        candidates: Optional[Array] = None) -> tuple[Array, Array]:
    """Precision and recall at `k` `[n_steps]` of the top-`k` candidates against true dependencies.

    Args:
      attribution: `[n_steps, T]` map.
      true_deps: `[n_steps, T]` bool, the tokens each step truly depends on (procedural problems).
      step_mask: `[n_steps, T]` bool, the tokens of each step.
      k: how many top tokens to take per step (fewer when a step has fewer candidates).
      candidates: `[n_steps, T]` bool, default all tokens before each step.

    Returns:
      (precision, recall), each `[n_steps]`; recall is NaN for a step with no true dependency, so that
      `jnp.nanmean` leaves it out.
    """
    true_deps = jnp.asarray(true_deps, bool)
    attribution = _check_map("attribution", attribution, true_deps.shape)
    step_mask = _check_map("step_mask", step_mask, true_deps.shape).astype(bool)
    candidates = context_candidates(step_mask) if candidates is None else jnp.asarray(candidates, bool)
    top = jax.vmap(top_k, (0, 0, None))(attribution, candidates, k)
    hits = (top & true_deps).sum(-1).astype(jnp.float32)
    precision = hits / jnp.maximum(top.sum(-1), 1)
    n_true = true_deps.sum(-1)
    recall = jnp.where(n_true > 0, hits / jnp.maximum(n_true, 1), jnp.nan)
    return precision, recall


def perturbation_check(analysis_fn: Callable[[Optional[Edits]], Array], edits: Edits, step_mask: Array, *,
                       candidates: Optional[Array] = None) -> PerturbationCheck:
    """The paper's own check: perturb the attention, re-run the analysis, see whether the explanation moves.

    Args:
      analysis_fn: maps `Edits` (or `None` for the unedited model) to a `[n_steps, T]` map, e.g. exact
        significance or the amortised analyser run on the edited forward pass.
      edits: the perturbation (e.g. `top_token_cut`).
      step_mask: `[n_steps, T]` bool.
      candidates: `[n_steps, T]` bool, default all tokens before each step.
    """
    candidates = context_candidates(step_mask) if candidates is None else jnp.asarray(candidates, bool)
    before, after = analysis_fn(None), analysis_fn(edits)
    w = candidates.astype(before.dtype)
    l1 = (jnp.abs(after - before) * w).sum(-1) / jnp.maximum(w.sum(-1), 1)
    return PerturbationCheck(before, after, jax.vmap(spearman)(before, after, candidates), l1)


def top_token_cut(cfg: SageConfig, attribution: Array, step_mask: Array, *, candidates: Optional[Array] = None,
                  renormalise: bool = True) -> tuple[Edits, Array]:
    """The targeted perturbation: cut the edges from each step's queries to its top-attributed candidate,
    in all layers and heads (`cut_edges`, or `zero_edges` without `renormalise`). Returns the `Edits` and the
    `[n_steps, T]` bool cut tokens, so `perturbation_check(...).after[cut]` versus `.before[cut]` says
    whether the explanation followed."""
    step_mask = jnp.asarray(step_mask, bool)
    candidates = context_candidates(step_mask) if candidates is None else jnp.asarray(candidates, bool)
    top = jax.vmap(top_k, (0, 0, None))(attribution, candidates, 1)
    edge_set = (step_queries(step_mask)[:, :, None] & top[:, None, :]).any(0)  # disjoint steps: cuts compose
    cut = cut_edges if renormalise else zero_edges
    return cut(cfg, edge_set), top


def _check(tokens, step_mask) -> tuple[Array, Array]:
    tokens, step_mask = jnp.asarray(tokens), jnp.asarray(step_mask, bool)
    if tokens.ndim != 1:
        raise ValueError(f"tokens has shape {tokens.shape}; expected one sequence [T] (vmap over problems)")
    if step_mask.ndim != 2 or step_mask.shape[1] != tokens.shape[0]:
        raise ValueError(f"step_mask has shape {step_mask.shape}; expected [n_steps, {tokens.shape[0]}]")
    return tokens, step_mask


def _check_map(name: str, value, shape: tuple[int, ...]) -> Array:
    value = jnp.asarray(value)
    if value.shape != tuple(shape):
        raise ValueError(f"{name} has shape {value.shape}; expected [n_steps, T] = {tuple(shape)}")
    return value
