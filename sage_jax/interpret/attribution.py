"""A registry of attribution methods with one signature, and a report of how much they agree.

Every method maps one problem to a `[n_steps, T]` map over source tokens (higher = more important):

    fn(params, cfg, tokens [T], steps, **options) -> [n, T]

so a new method is a few lines (Inseq-style):

    @register("grad_norm_layer2")
    def grad_norm_layer2(params, cfg, tokens, steps):
        return jnp.linalg.norm(step_gradients(params, cfg, tokens, steps, layer=2).grads, axis=-1)

Registered here: "attention", "rollout" (both `w_ij` of `sage_jax.interpret.significance`), "value_norms"
(`Trace.value_norms`, the norm each key contributes through each head, averaged like attention), "occlusion"
(edge deletion of one token at a time, `faithfulness.token_deletion_effects`), "saliency"
(`||dL_i/de_j||`, the gradient norm at the token embedding), "input_x_gradient" (`|sum_d e_jd dL_i/de_jd|`),
"integrated_gradients" (zero-embedding baseline, midpoint Riemann sum, the path points `vmap`ped; the
embedding stream is moved along the path through `Edits.residual_delta` at layer 0) and "sage" (Eq. 7).
Gradient methods take every step's gradient from one batched vjp. Maps cover all `T` tokens; only "sage" and
"occlusion" mask them to the tokens before each step, and `agreement` compares methods on those tokens only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.interpret import ranking
from sage_jax.interpret.faithfulness import token_deletion_effects
from sage_jax.interpret.significance import (HeadSelect, head_indices, query_mean, significance_from_gradients,
                                             step_gradients, step_weights)
from sage_jax.layout import Steps
from sage_jax.model import Params, forward
from sage_jax.quant import embed_rows

AttributionFn = Callable[..., jax.Array]
"""`fn(params, cfg, tokens [T], steps, **options) -> [n, T]`."""

_REGISTRY: dict[str, AttributionFn] = {}


def register(name: str) -> Callable[[AttributionFn], AttributionFn]:
    """Registers an attribution method under `name` (a decorator); names are unique."""
    def decorate(fn: AttributionFn) -> AttributionFn:
        if name in _REGISTRY:
            raise ValueError(f"attribution method {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return decorate


def methods() -> tuple[str, ...]:
    """The registered method names."""
    return tuple(_REGISTRY)


def attribute(method: str, params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps,
              **options) -> jax.Array:
    """Runs a registered method, jitted once per (method, config, options), on one problem.

    Returns:
      `[n, T]` attribution map.
    """
    if method not in _REGISTRY:
        raise ValueError(f"unknown attribution method {method!r}; registered: {methods()}")
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    return _compiled(method, cfg, frozen)(params, jnp.asarray(tokens), steps)


@functools.lru_cache(maxsize=128)
def _compiled(method: str, cfg: SageConfig, options: tuple) -> Callable:
    fn = _REGISTRY[method]
    return jax.jit(lambda params, tokens, steps: fn(params, cfg, tokens, steps, **dict(options)))


def _trace(params: Params, cfg: SageConfig, tokens: jax.Array, field: str) -> jax.Array:
    """One problem's recorded `[L, H, T, T]` trace field."""
    return getattr(forward(params, tokens[None], cfg, record=(field,)).trace, field)[:, 0]


@register("attention")
def attention(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *,
              heads: HeadSelect = None) -> jax.Array:
    """Mean attention of each step's queries, over the chosen heads and all layers."""
    return step_weights(_trace(params, cfg, tokens, "attn"), steps, cfg, weighting="attention", heads=heads)


@register("rollout")
def rollout(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *,
            heads: HeadSelect = None) -> jax.Array:
    """Attention rollout, averaged over each step's queries."""
    return step_weights(_trace(params, cfg, tokens, "attn"), steps, cfg, weighting="rollout", heads=heads)


@register("value_norms")
def value_norms(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *,
                heads: HeadSelect = None) -> jax.Array:
    """Value-weighted norms `a_ts ||v_s W_O^h||`, averaged over heads, layers and each step's queries."""
    norms = _trace(params, cfg, tokens, "value_norms")[:, jnp.asarray(head_indices(cfg, heads))]
    return query_mean(jnp.mean(norms, axis=(0, 1)), steps)


@register("saliency")
def saliency(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *, layer: int = 0) -> jax.Array:
    """`||dL_i / dh_j||` at `layer` (the token embedding by default)."""
    grads = step_gradients(params, cfg, tokens, steps, layer=layer, record=()).grads
    return jnp.linalg.norm(grads, axis=-1)


def _embedding(params: Params, cfg: SageConfig, tokens: jax.Array) -> jax.Array:
    """`[T, D]` the stream entering block 0 (the token embedding, as `SageLM` computes it)."""
    return embed_rows(params["embed"], tokens, cfg.compute_dtype)


@register("input_x_gradient")
def input_x_gradient(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *,
                     signed: bool = False) -> jax.Array:
    """`sum_d e_jd * dL_i/de_jd`, the first-order change of `L_i` if token `j`'s embedding were removed."""
    grads = step_gradients(params, cfg, tokens, steps, layer=0, record=()).grads
    scores = jnp.sum(grads * _embedding(params, cfg, tokens), axis=-1)
    return scores if signed else jnp.abs(scores)


@register("integrated_gradients")
def integrated_gradients(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *,
                         n_alphas: int = 32, signed: bool = False) -> jax.Array:
    """Integrated gradients from the zero embedding: `e_j . mean_a dL_i/de_j (a e)`, `a` the interval midpoints.

    Signed, the scores of a step sum to `L_i(e) - L_i(0)` in the limit of many `n_alphas` (completeness); the
    RMSNorm of a near-zero stream makes the path steep close to the baseline, so that limit is reached slowly.
    """
    embed = _embedding(params, cfg, tokens)
    alphas = (jnp.arange(n_alphas, dtype=embed.dtype) + 0.5) / n_alphas

    def grads_at(alpha):
        return step_gradients(params, cfg, tokens, steps, layer=0, record=(), probe=(alpha - 1.0) * embed).grads

    mean_grads = jnp.mean(jax.vmap(grads_at)(alphas), axis=0)  # [n, T, D]
    scores = jnp.sum(mean_grads * embed, axis=-1)
    return scores if signed else jnp.abs(scores)


@register("occlusion")
def occlusion(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *,
              renormalise: bool = True) -> jax.Array:
    """Step `i`'s log-probability drop when token `j` alone is cut from its queries in every layer and head
    (`faithfulness.token_deletion_effects`: one edited forward per token; 0 outside each step's context)."""
    return token_deletion_effects(params, cfg, tokens, steps.mask, renormalise=renormalise)


@register("sage")
def sage(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *, layer: int = 0,
         weighting: str = "attention", heads: HeadSelect = None) -> jax.Array:
    """Exact significance (Eq. 7), normalised to [0, 1], over the tokens before each step."""
    gradients = step_gradients(params, cfg, tokens, steps, layer=layer)
    return significance_from_gradients(gradients, steps, cfg, weighting=weighting, heads=heads).score


@dataclasses.dataclass(frozen=True)
class AgreementReport:
    """Pairwise agreement of attribution maps, averaged over steps, on each step's source tokens.

    Attributes:
      methods: the compared method names (row/column order).
      spearman: `[m, m]` mean Spearman rank correlation (ties get their average rank; steps whose map is
        constant on its sources are left out of that pair's mean, and a pair with no such step is NaN).
      top_k_overlap: `[m, m]` mean `|top_k(a) & top_k(b)| / k'`, `k' = min(k, number of sources)`.
      k: the `k` of the overlap.
    """

    methods: tuple[str, ...]
    spearman: np.ndarray
    top_k_overlap: np.ndarray
    k: int

    def to_markdown(self) -> str:
        """Two tables, methods by methods."""
        def table(title, values):
            head = f"| {title} | " + " | ".join(self.methods) + " |"
            rule = "|---" * (len(self.methods) + 1) + "|"
            rows = [f"| {m} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for m, row in zip(self.methods, values)]
            return "\n".join([head, rule] + rows)
        return table("Spearman", self.spearman) + "\n\n" + table(f"top-{self.k} overlap", self.top_k_overlap)


def agreement(maps: Mapping[str, jax.Array], steps: Steps, *, k: int = 5,
              sources: Optional[jax.Array] = None) -> AgreementReport:
    """How much attribution maps of one problem agree.

    Args:
      maps: method name -> `[n, T]` map.
      steps: the problem's `Steps`.
      k: size of the top-k sets.
      sources: `[n, T]` bool, tokens to compare on; by default the tokens before each step.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    names = tuple(maps)
    arrays = {m: np.asarray(v, np.float64) for m, v in maps.items()}
    for m, v in arrays.items():
        if v.shape != tuple(steps.mask.shape):
            raise ValueError(f"map {m!r} has shape {v.shape}; expected [n_steps, T] = {tuple(steps.mask.shape)}")
    mask = np.asarray(steps.sources if sources is None else sources, bool)
    rows = mask.sum(-1) >= 2
    rho = np.eye(len(names))
    overlap = np.eye(len(names))
    for x, a in enumerate(names):
        for y in range(x + 1, len(names)):
            b = names[y]
            corr, share = (np.asarray(v, np.float64) for v in _pair_statistics(arrays[a], arrays[b], mask, k))
            ranked = rows & _varies(arrays[a], mask) & _varies(arrays[b], mask)
            rho[x, y] = rho[y, x] = corr[ranked].mean() if ranked.any() else np.nan
            overlap[x, y] = overlap[y, x] = share[rows].mean() if rows.any() else np.nan
    return AgreementReport(names, rho, overlap, k)


@functools.partial(jax.jit, static_argnames=("k",))
def _pair_statistics(a: jax.Array, b: jax.Array, mask: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`[n]` Spearman correlation and `[n]` top-`k` overlap of two maps `[n, T]` over each row's `mask`."""
    return (jax.vmap(ranking.spearman)(a, b, mask),
            jax.vmap(ranking.top_k_overlap, (0, 0, 0, None))(a, b, mask, k))


def _varies(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`[n]` bool: whether each row of `values [n, T]` takes more than one value over its `mask` (a constant row
    has no ranking, so `agreement` leaves it out of the Spearman mean)."""
    return np.where(mask, values, -np.inf).max(-1) > np.where(mask, values, np.inf).min(-1)
