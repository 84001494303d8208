"""Exact significance (the paper's Eq. 7): `Sig(t_j, i) = w_ij * ||dL_i / dh_j|| * H_i`, normalised to [0, 1].

The three factors, for step `i` and source token `j` of one problem:

- `w_ij`, how much step `i` looked at token `j`: the attention paid to `j` by the queries that produce step
  `i` (`Steps.queries`: the step's tokens shifted left by one), averaged over those queries and over the
  chosen heads and all layers (`weighting="attention"`), or the same average of attention rollout
  (`weighting="rollout"`, Abnar & Zuidema 2020: `R = A'_{L-1} ... A'_0` with `A'_l = norm(0.5 mean_h A_l + 0.5 I)`).
- `||dL_i / dh_j||`, how much step `i`'s loss moves with the hidden state of token `j` at a chosen layer: the
  gradients of all `n` step losses come from ONE forward pass and ONE `jax.vjp`, whose pullback is `vmap`ped
  over the `n` one-hot step cotangents. The hidden state is probed through a zero `Edits.residual_delta` at
  `layer` (0 is the token embedding, `l` the stream entering block `l`), so the gradient with respect to the
  delta is the gradient with respect to `h`.
- `H_i`, how uncertain the step was: the mean predictive entropy over its tokens.

Sources: by default only tokens strictly before step `i` count (`sources="preceding"`): what a step rests
on, not the step's own prefix. `raw = w * grad_norm * H * source_mask`, and `score = raw / max(raw)` over
the whole problem (one maximum for all steps, so that an uncertain step outranks a confident one: with a
per-step maximum, `H_i` would cancel). Every factor is returned alone as well.

Everything here is a pure function of one problem (`tokens [T]`, `Steps` with `[n, T]` arrays); batch problems
with `significance_batch` (a `vmap`; right-pad tokens to one length, causality keeps padding out).

Memory. `memory="full"` (the default) runs one forward recording `attn [L, H, T, T]` and pulls all `n` step
cotangents back at once: `O(L H T^2)` for the record, and `n` times a single backward's activations, which
hold every layer's `[H, T, T]` probabilities and `[T, V]` logit gradients. Fastest at the lengths a trained
SAGE-nano chain has; out of reach for a long chain of a pretrained model (SmolLM2 at 4,096 tokens: 18 GB of
attention record, 13 GB of logit gradients for 16 steps). `memory="bounded"` gives the same `Significance` (to
float32 rounding) in memory that grows with one layer's `H T^2` times `lanes`, not with `L H T^2` nor `n T V`:

- it records only what Eq. 7 reads, `Trace.attn_rows [L, H, n, T]`: each layer's attention already averaged
  over each step's queries (`steps.queries` normalised per step, the forward's `query_rows`), inside the layer;
- every block is rematerialised (`cfg.replace(remat=True)`), so the forward keeps only the residual stream
  entering each layer and the backward recomputes one block's `[H, T, T]` probabilities at a time;
- the unembedding is differentiated apart, `HEAD_ROWS` positions at a time (`head_rows`): position `t - 1`'s
  logits score token `t` alone, so one pullback of every token's NLL gives each position's gradient, and step
  `i`'s cotangent on the final hidden state is those rows at its queries. No `[T, V]` array exists whole;
- the `n` step cotangents are pulled back through the blocks `lanes` at a time (`jax.lax.map` over vmapped
  chunks, the last chunk the remainder), and of each gradient only its norm over `D` is kept.

It costs one more forward through the blocks per chunk (the recomputation) and gives up rollout, which
multiplies full `[T, T]` matrices. It is a `memory=` option of `significance` rather than a function of its own
because it is the same analysis with the same options and result: callers (`significance_batch`, code that
passes options through) switch with one keyword instead of choosing between two entry points kept in step.

`step_importance` reads a map at step granularity (how much of what later steps and the answer rest on lies in
each step): the analysis's counterpart of a step's counterfactual importance (`sage_jax.interpret.counterfactual`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import struct

from sage_jax.config import SageConfig
from sage_jax.interpret.faithfulness import context_candidates
from sage_jax.interpret.interventions import merge_edits
from sage_jax.interpret.steps import step_entropies, step_losses
from sage_jax.layout import Steps
from sage_jax.model import Params, forward, unembed
from sage_jax.trace import Edits, Trace

HeadSelect = Union[None, str, Sequence[int]]
"""Heads to average attention over: `None` (all), a group name ("reasoning", "memory", "meta"), or indices."""

WEIGHTINGS = ("attention", "rollout")
SOURCES = ("preceding", "all")
MEMORY = ("full", "bounded")
HEAD_ROWS = 256
"""Positions per block of the bounded path's unembedding: `[256, V]` logits at a time (SmolLM2: 50 MB)."""
_GROUPS = {"reasoning": 0, "memory": 1, "meta": 2}


@struct.dataclass
class Significance:
    """Eq. 7 and its factors for one problem (a leading batch axis when batched).

    Attributes:
      score: `[n, T]` significance normalised to [0, 1] by the problem's maximum.
      raw: `[n, T]` `weight * grad_norm * entropy[:, None] * sources` before normalisation.
      weight: `[n, T]` `w_ij` (attention or rollout), over all tokens.
      grad_norm: `[n, T]` `||dL_i / dh_j||` at the probed layer, over all tokens.
      entropy: `[n]` `H_i`.
      loss: `[n]` `L_i`.
      sources: `[n, T]` bool, the tokens that count as sources of step `i`.
    """

    score: jax.Array
    raw: jax.Array
    weight: jax.Array
    grad_norm: jax.Array
    entropy: jax.Array
    loss: jax.Array
    sources: jax.Array


class StepGradients(NamedTuple):
    """What one forward and one batched vjp give (all per problem).

    Attributes:
      grads: `[n, T, D]` `dL_i / dh_j` at the probed layer.
      loss: `[n]` step losses `L_i`.
      entropy: `[n]` step entropies `H_i`.
      logits: `[T, V]` the forward logits.
      trace: the forward's `Trace` with the batch axis removed (`attn [L, H, T, T]`, ... as recorded).
    """

    grads: jax.Array
    loss: jax.Array
    entropy: jax.Array
    logits: jax.Array
    trace: Trace


class HeadRows(NamedTuple):
    """What the unembedding gives each position, in `sequence_nll`'s convention (entry `t` is token `t`'s).

    Attributes:
      nll: `[T]` the NLL of token `t` under the logits at `t - 1` (0 at token 0).
      entropy: `[T]` the entropy of the distribution token `t` was predicted from (0 at token 0).
      grads: `[T, D]` row `t - 1` is `d nll_t / d h_{t - 1}`, the gradient with respect to the final hidden state
        (the last row, which predicts nothing, is 0).
    """

    nll: jax.Array
    entropy: jax.Array
    grads: jax.Array


class StepNorms(NamedTuple):
    """What the bounded path keeps of its forward and pullbacks (per problem): only what Eq. 7 reads.

    Attributes:
      grad_norm: `[n, T]` `||dL_i / dh_j||` at the probed layer.
      loss: `[n]` step losses `L_i`.
      entropy: `[n]` step entropies `H_i`.
      attn_rows: `[L, H, n, T]` each layer's attention averaged over each step's queries, or `None` when
        not recorded (a precomputed `weight` needs none).
    """

    grad_norm: jax.Array
    loss: jax.Array
    entropy: jax.Array
    attn_rows: Optional[jax.Array]


def head_indices(cfg: SageConfig, heads: HeadSelect) -> tuple[int, ...]:
    """The query-head indices that `heads` selects (see `HeadSelect`)."""
    if heads is None:
        return tuple(range(cfg.n_heads))
    if isinstance(heads, str):
        if heads not in _GROUPS:
            raise ValueError(f"heads={heads!r}: choose a group from {sorted(_GROUPS)}, head indices, or None")
        chosen = tuple(h for h, g in enumerate(cfg.head_groups) if g == _GROUPS[heads])
        if not chosen:
            raise ValueError(f"heads={heads!r}: config {cfg.name!r} has no {heads} heads")
        return chosen
    chosen = tuple(int(h) for h in heads)
    bad = [h for h in chosen if not 0 <= h < cfg.n_heads]
    if not chosen or bad:
        raise ValueError(f"heads={heads!r}: head indices must be a non-empty subset of [0, {cfg.n_heads})")
    return chosen


def probe_edits(cfg: SageConfig, layer: int, probe: jax.Array) -> Edits:
    """`Edits` that add `probe` `[T, D]` to the stream entering block `layer` and zero to every other block."""
    check_layer(cfg, layer)
    delta = jnp.zeros((cfg.n_layers, 1) + probe.shape, probe.dtype)
    return Edits(residual_delta=delta.at[layer, 0].set(probe))


def check_layer(cfg: SageConfig, layer: int) -> None:
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer={layer} is outside [0, {cfg.n_layers}) (0 probes the token embedding, l the "
                         f"stream entering block l of config {cfg.name!r})")


def step_gradients(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *, layer: int = 0,
                   record=("attn",), probe: Optional[jax.Array] = None,
                   edits: Optional[Edits] = None) -> StepGradients:
    """`dL_i / dh_j` for all steps `i` and tokens `j` from one forward and one vjp batched over the steps.

    Args:
      params: model parameters.
      cfg: the model config.
      tokens: `[T]` one problem's token ids.
      steps: its `Steps` (`[n, T]`).
      layer: where `h` is probed: the stream entering block `layer` (0: the token embedding).
      record: `Trace` fields the forward records (returned in `trace`, batch axis removed).
      probe: `[T, D]` the residual delta to differentiate at (zero by default: the plain forward).
      edits: an intervention (batch 1) the forward runs under, so the analysis is that of the edited model;
        merged with the probe (`interventions.merge_edits`).
    """
    t = tokens.shape[-1]
    probe = jnp.zeros((t, cfg.d_model), cfg.compute_dtype) if probe is None else probe

    def losses(delta):
        probed = probe_edits(cfg, layer, delta)
        out = forward(params, tokens[None], cfg, edits=probed if edits is None else merge_edits(probed, edits),
                      record=record)
        logits = out.logits[0]
        trace = jax.tree_util.tree_map(lambda x: x[:, 0], out.trace)
        return step_losses(logits, tokens, steps), (logits, trace)

    loss, pullback, (logits, trace) = jax.vjp(losses, probe, has_aux=True)
    cotangents = jnp.eye(steps.n_steps, dtype=loss.dtype)
    (grads,) = jax.vmap(pullback)(cotangents)  # [n, T, D]
    return StepGradients(grads, loss, step_entropies(logits, steps), logits, trace)


def step_norms(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *, layer: int = 0,
               lanes: Optional[int] = None, attention: bool = True, edits: Optional[Edits] = None) -> StepNorms:
    """`step_gradients` in bounded memory, keeping only the gradient norms (the bounded path of `significance`).

    One forward through the blocks, each rematerialised, to the final hidden state, recording `Trace.attn_rows`
    for the normalised step queries (`query_weights`); one pullback through the unembedding for every token's
    NLL at once (position `t - 1`'s logits score token `t` alone, so row `t - 1` of that gradient is
    `d nll_t / d h_{t - 1}`); then each step's cotangent on the hidden state, those rows at its queries,
    pulled back through the blocks `lanes` steps at a time. No lane carries `[T, V]` logit gradients.

    Args:
      params: model parameters.
      cfg: the model config (its `remat` is switched on here).
      tokens: `[T]` one problem's token ids.
      steps: its `Steps` (`[n, T]`).
      layer: where `h` is probed: the stream entering block `layer` (0: the token embedding).
      lanes: step cotangents per pullback (at most `n`; `None`: all `n` at once). Peak memory grows with it,
        time falls (each chunk recomputes the blocks' forward once).
      attention: record `attn_rows` (for `weighting="attention"`).
      edits: an intervention (batch 1) the forward runs under, merged with the probe.
    """
    remat = cfg.replace(remat=True)
    rows = query_weights(steps, cfg.accum_dtype)[None] if attention else None

    def blocks(delta):  # the probe [T, D] -> the final normed hidden state [T, D]
        probed = probe_edits(cfg, layer, delta)
        out = forward(params, tokens[None], remat, edits=probed if edits is None else merge_edits(probed, edits),
                      record=("attn_rows",) if attention else None, query_rows=rows)
        return out.hidden[0], None if rows is None else out.trace.attn_rows[:, 0]

    probe = jnp.zeros((tokens.shape[-1], cfg.d_model), cfg.compute_dtype)
    hidden, blocks_pullback, attn_rows = jax.vjp(blocks, probe, has_aux=True)
    head = head_rows(params, cfg, hidden, tokens)
    weights = steps.mask.astype(head.nll.dtype)
    loss = weights @ head.nll  # step_losses
    entropy = (weights @ head.entropy) / jnp.maximum(jnp.sum(weights, axis=-1), 1)  # step_entropies
    return StepNorms(pulled_norms(blocks_pullback, steps.queries, head.grads, lanes), loss, entropy, attn_rows)


def head_rows(params: Params, cfg: SageConfig, hidden: jax.Array, tokens: jax.Array,
              block: int = HEAD_ROWS) -> HeadRows:
    """Every position's next-token NLL, entropy and NLL gradient from the final hidden state `[T, D]`, `block`
    positions at a time (`jax.lax.map`), so the `[T, V]` logits and their gradient never exist whole.

    Position `r`'s logits read only `h_r` and score only token `r + 1`, so one pullback of all the NLLs gives
    each position's own gradient, and blocks of positions are independent.
    """
    t = tokens.shape[0]
    rows = min(block, t)
    pad = -t % rows
    targets = jnp.concatenate([tokens[1:], jnp.zeros((1 + pad,), tokens.dtype)])  # position r predicts r + 1
    real = jnp.arange(t + pad) < t - 1
    hidden_rows = jnp.pad(hidden, ((0, pad), (0, 0)))
    nll, entropy, grads = jax.lax.map(
        lambda block_in: _head_block(params, cfg, *block_in),
        tuple(x.reshape((-1, rows) + x.shape[1:]) for x in (hidden_rows, targets, real)))
    return HeadRows(_to_tokens(nll, t), _to_tokens(entropy, t), grads.reshape(t + pad, -1)[:t])


def _head_block(params, cfg, hidden, target, real):
    """`[R]` NLLs of `target` and entropies, `[R, D]` NLL gradients, of `R` positions (0 where not `real`)."""
    def nll(h):
        logits = unembed(params, cfg, h)
        logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
        return jnp.where(real, -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0], 0.0), logp

    value, pullback, logp = jax.vjp(nll, hidden, has_aux=True)
    (grads,) = pullback(jnp.ones_like(value))
    return value, jnp.where(real, -jnp.sum(jnp.exp(logp) * logp, axis=-1), 0.0), grads


def _to_tokens(per_position: jax.Array, t: int) -> jax.Array:
    """`[T]` from `[blocks, R]` values of positions `0 .. T - 2`: entry `t` belongs to token `t` (0 at token 0)."""
    return jnp.concatenate([jnp.zeros((1,), per_position.dtype), per_position.reshape(-1)[:t - 1]])


def pulled_norms(pullback, queries: jax.Array, token_grads: jax.Array, lanes: Optional[int]) -> jax.Array:
    """`[n, T]` `||dL_i / dh_j||` over `D`: each step's cotangent pulled back, `lanes` steps at a time.

    Step `i`'s cotangent on the final hidden state is `token_grads [T, D]` at its queries `queries[i]` and zero
    elsewhere. `jax.lax.map` with `batch_size`: a scan over chunks of a `vmap`ped pullback, and one smaller
    `vmap` for the remainder, so no lane is wasted on padding and one chunk's backward is live at a time.
    """
    def norm(query):  # [T] -> [T]; lax.map vmaps it over each chunk's lanes
        (grads,) = pullback(query[:, None].astype(token_grads.dtype) * token_grads)
        return jnp.linalg.norm(grads, axis=-1)

    n = queries.shape[0]
    return jax.lax.map(norm, queries, batch_size=min(lanes or n, n))


def query_weights(steps: Steps, dtype) -> jax.Array:
    """`[n, T]` each step's queries weighted `1 / count`, so that `weights @ matrix` averages over them."""
    queries = steps.queries.astype(dtype)
    return queries / jnp.maximum(jnp.sum(queries, axis=-1, keepdims=True), 1)


def query_mean(matrix: jax.Array, steps: Steps) -> jax.Array:
    """`[n, T]`: rows of a `[T, T]` query-by-key matrix averaged over the queries that produce each step."""
    queries = steps.queries.astype(matrix.dtype)
    return (queries @ matrix) / jnp.maximum(jnp.sum(queries, axis=-1, keepdims=True), 1)


def mean_attention(attn: jax.Array, heads: Sequence[int]) -> jax.Array:
    """`[T, T]` attention averaged over layers and the given heads, from `attn [L, H, T, T]`."""
    return jnp.mean(attn[:, jnp.asarray(heads)], axis=(0, 1))


def rollout(attn: jax.Array, heads: Sequence[int]) -> jax.Array:
    """`[T, T]` attention rollout from `attn [L, H, T, T]`: `A'_{L-1} @ ... @ A'_0`.

    `A'_l` is the head-mean attention of layer `l` mixed half and half with the identity (the residual
    connection) and renormalised by row, so entry `[q, k]` is the share of query `q`'s input traced to `k`.
    """
    a = jnp.mean(attn[:, jnp.asarray(heads)], axis=1)  # [L, T, T]
    a = 0.5 * a + 0.5 * jnp.eye(a.shape[-1], dtype=a.dtype)
    a = a / jnp.sum(a, axis=-1, keepdims=True)
    return functools.reduce(lambda acc, layer: layer @ acc, list(a[1:]), a[0])


def step_weights(attn: jax.Array, steps: Steps, cfg: SageConfig, *, weighting: str = "attention",
                 heads: HeadSelect = None) -> jax.Array:
    """`[n, T]` `w_ij` from one problem's `attn [L, H, T, T]`."""
    chosen = head_indices(cfg, heads)
    if weighting == "attention":
        return query_mean(mean_attention(attn, chosen), steps)
    if weighting == "rollout":
        return query_mean(rollout(attn, chosen), steps)
    raise ValueError(f"weighting={weighting!r}: choose one of {WEIGHTINGS}")


def row_weights(attn_rows: jax.Array, cfg: SageConfig, heads: HeadSelect = None) -> jax.Array:
    """`[n, T]` `w_ij` for `weighting="attention"` from `attn_rows [L, H, n, T]`: the mean over layers and the
    chosen heads (the bounded path's counterpart of `step_weights`)."""
    return jnp.mean(attn_rows[:, jnp.asarray(head_indices(cfg, heads))], axis=(0, 1))


def source_mask(steps: Steps, sources: str) -> jax.Array:
    """`[n, T]` bool: the tokens that count as sources of each step."""
    if sources == "preceding":
        return steps.sources
    if sources == "all":
        return jnp.ones_like(steps.mask)
    raise ValueError(f"sources={sources!r}: choose one of {SOURCES}")


def normalise(raw: jax.Array) -> jax.Array:
    """`raw / max(raw)` over the last two axes, clipped to [0, 1] against rounding; all zeros stay zeros."""
    peak = jnp.max(raw, axis=(-2, -1), keepdims=True)
    return jnp.clip(jnp.where(peak > 0, raw / jnp.where(peak > 0, peak, 1), 0.0), 0.0, 1.0)


def significance_from_gradients(gradients: StepGradients, steps: Steps, cfg: SageConfig, *,
                                weighting: str = "attention", heads: HeadSelect = None,
                                sources: str = "preceding", weight: Optional[jax.Array] = None) -> Significance:
    """Eq. 7 from precomputed step gradients; cheap, so several aggregations can share one vjp.

    `weight` `[n, T]`, when given, is `w_ij` itself in place of the attention aggregation (`weighting` and
    `heads` are then unused): e.g. the counterfactual substitution effects that `explain` uses by default
    (`sage_jax.interpret.counterfactual`), a causal measure of what step `i` computes with.
    """
    if weight is None:
        weight = step_weights(gradients.trace.attn, steps, cfg, weighting=weighting, heads=heads)
    norms = StepNorms(jnp.linalg.norm(gradients.grads, axis=-1), gradients.loss, gradients.entropy, None)
    return combine(norms, weight, steps, sources)


def combine(norms: StepNorms, weight: jax.Array, steps: Steps, sources: str) -> Significance:
    """Eq. 7 from its factors: `w_ij` `[n, T]` and the gradient norms, losses and entropies."""
    grad_norm = norms.grad_norm.astype(weight.dtype)
    mask = source_mask(steps, sources)
    raw = weight * grad_norm * norms.entropy[:, None] * mask
    return Significance(score=normalise(raw), raw=raw, weight=weight, grad_norm=grad_norm,
                        entropy=norms.entropy, loss=norms.loss, sources=mask)


def significance(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *, layer: int = 0,
                 weighting: str = "attention", heads: HeadSelect = None,
                 sources: str = "preceding", edits: Optional[Edits] = None,
                 weight: Optional[jax.Array] = None, memory: str = "full",
                 lanes: Optional[int] = None) -> Significance:
    """Exact significance of every source token for every step of one problem.

    Args:
      params: model parameters.
      cfg: the model config (static).
      tokens: `[T]` token ids of one laid-out problem.
      steps: its `Steps`.
      layer: the layer whose hidden states are differentiated (0: token embeddings).
      weighting: "attention" (mean over heads and layers) or "rollout".
      heads: the heads `w_ij` averages over (`HeadSelect`).
      sources: "preceding" (tokens before the step) or "all".
      edits: analyse the model under this intervention (batch 1), e.g. after `interventions.cut_edges`.
      weight: `[n, T]` a precomputed `w_ij` replacing the attention aggregation (`significance_from_gradients`).
      memory: "full" (record `attn [L, H, T, T]`, all steps' backward at once) or "bounded" (record each
        step's attention rows, rematerialise the blocks, pull the steps back `lanes` at a time: see the
        module docstring); the same result to float rounding. "bounded" refuses `weighting="rollout"`.
      lanes: with "bounded", step cotangents per pullback (at most `n`; `None`: all at once).

    Returns:
      `Significance` with `score [n, T]` in [0, 1] and every factor.
    """
    check_memory(memory, lanes, weighting if weight is None else None)
    heads = heads if heads is None or isinstance(heads, str) else tuple(int(h) for h in heads)
    return _significance(params, cfg, tokens, steps, edits, weight, layer=layer, weighting=weighting, heads=heads,
                         sources=sources, memory=memory, lanes=lanes)


def check_memory(memory: str, lanes: Optional[int], weighting: Optional[str]) -> None:
    """Raises `ValueError` for an unknown `memory`, a `lanes` it cannot use, or a `weighting` (`None`: a given
    `weight`) that the bounded path cannot compute: rollout multiplies every layer's full `[T, T]` attention."""
    if memory not in MEMORY:
        raise ValueError(f"memory={memory!r}: choose one of {MEMORY}")
    if lanes is not None and (memory != "bounded" or int(lanes) < 1):
        raise ValueError(f"lanes={lanes!r}: a positive number of step cotangents per pullback, used only with "
                         "memory='bounded'")
    if memory == "bounded" and weighting == "rollout":
        raise ValueError("weighting='rollout' needs every layer's full [T, T] attention, which memory='bounded' "
                         "never stores: use weighting='attention', or memory='full'")
    if memory == "bounded" and weighting not in (None,) + WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: choose one of {WEIGHTINGS}")


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "weighting", "heads", "sources", "memory", "lanes"))
def _significance(params, cfg, tokens, steps, edits, weight, *, layer, weighting, heads, sources, memory,
                  lanes) -> Significance:
    if memory == "full":
        gradients = step_gradients(params, cfg, tokens, steps, layer=layer, edits=edits)
        return significance_from_gradients(gradients, steps, cfg, weighting=weighting, heads=heads,
                                           sources=sources, weight=weight)
    norms = step_norms(params, cfg, tokens, steps, layer=layer, lanes=lanes, attention=weight is None,
                       edits=edits)
    return combine(norms, row_weights(norms.attn_rows, cfg, heads) if weight is None else weight, steps, sources)


def significance_batch(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps,
                       **options) -> Significance:
    """`significance` over `[N, T]` problems and `Steps` stacked to `[N, n, T]` (`stack_steps`), by `vmap`."""
    return jax.vmap(lambda t, s: significance(params, cfg, t, s, **options))(tokens, steps)


def step_importance(score: jax.Array, targets: jax.Array, n_steps: int) -> jax.Array:
    """How much of what every later row rests on lies in each step: a map read at step granularity.

    Each target row's scores are kept on its context candidates (`faithfulness.context_candidates`: the tokens
    before its first query) and normalised to sum to 1, so every reader has one unit of mass to give whatever
    its map's scale; step `k`'s importance is the mass that the rows after it put on its tokens, summed over
    those rows. Give the answer as an extra last target row: otherwise the last step has no later reader and
    its importance is 0 by construction. Rows or steps without tokens (padding) give and get nothing. Pure;
    `jit` it with `n_steps` static and `vmap` it over problems.

    Args:
      score: `[R, T]` a map over the target rows (any non-negative scale; e.g. Eq. 7 over steps and answer).
      targets: `[R, T]` bool, each target row's tokens; rows `0 .. n_steps - 1` are the steps.
      n_steps: `S <= R`, how many leading rows are steps whose importance is wanted.

    Returns:
      `[S]` each step's summed share of the later rows' mass (at most `R - 1 - k` for step `k`).
    """
    context = context_candidates(targets)
    rows = jnp.where(context, score, 0.0)
    rows = rows / jnp.maximum(rows.sum(-1, keepdims=True), 1e-30)
    mass = rows @ targets[:n_steps].T.astype(rows.dtype)  # [R rows, S steps]: row r's mass on step k
    later = jnp.arange(targets.shape[0])[:, None] > jnp.arange(n_steps)[None, :]
    real = targets.any(-1)[:, None] & targets[:n_steps].any(-1)[None, :]
    return jnp.where(later & real, mass, 0.0).sum(0)
