"""`explain` (re-exported as `sage_jax.interpret.explain`): from a question, and a chain of thought or none,
to an `Explanation`.

Pipeline: lay the problem out (`sage_jax.layout`, the SAGE layout by default; the rationale is generated
greedily when none is given) -> split it into steps -> analyse (exact Eq. 7, or the amortised Inverse Analysis
Layer) -> consistency check and refinement -> Algorithm S1 -> `Explanation`. What to analyse and how is one
frozen `ExplainConfig`; how the problem becomes tokens is the layout's.

The default map. Eq. 7 as the paper writes it (`weighting="attention"`) ranks the attention sink and the format
tokens first and barely beats chance at naming the tokens a step computes with, judged against the model's own
counterfactual behaviour (WORKSPACE, issue 13). By default `w_ij` is therefore causal: the mean
`|delta log P(step i)|` when token `j` is replaced by another value of its kind (`ExplainConfig.substitutes`
substitutes, `counterfactual.substitution_effects`; 0 for the sink and format tokens, which have no kind), times
`||dL_i/dh_j||` and `H_i` as in Eq. 7. Its consistency score is the agreement of the maps from the two halves of
the substitutes (a causal weight has no wider aggregation). It costs `T * substitutes` forward passes.

Refinement. Each analysis gets a consistency score in [0, 1] from `sage_jax.interpret.consistency`:

- amortised: the fidelity `exp(-mean KL)` of the IAL's reconstruction of the forward next-token
  distributions, over the positions that predict step tokens (no gradients, so no exact map to compare);
- exact, with aggregation `a_r`: the agreement `1 - mean |Sig_r - Sig_w|` over each step's source tokens
  between the map at `a_r` and at the next wider aggregation `a_w` (the previous one for the widest; a
  ladder of one aggregation scores 1): whether the explanation survives widening the aggregation.

For attention weightings the ladder widens from what was asked: the chosen heads -> all heads -> rollout.
The attempts run in order (amortised first when asked for, then the exact ladder), stopping at the first
score >= `consistency_threshold` (0.8) or after `max_refinements` refinements; the explanation comes from
the last attempt and records every attempt's path and score. All exact rungs share one forward and one
batched vjp, so refining the exact path costs almost nothing.

Anchors (`ExplainConfig.anchors`). A decision point is the analysis's claim about where the chain could have
gone another way; whether that claim means something is measured, not assumed. The chain's anchor step is the
one whose resampling moves the final answer most (`counterfactual.resampling_importance`, Thought Anchors);
the analysis's most important step is, by default, the one whose most probable alternatives the answer
survives least, each continued by sampling (`alternatives.alternative_importance`,
`ExplainConfig.step_alternatives`, `step_samples`; the continuations are drawn apart from the anchor's
rollouts, on their own stream of `anchor_seed`). With
`step_alternatives=0` it is the argmax of `significance.step_importance` of a map of the same kind as the final
attempt's (Eq. 7 at its weighting, heads and layer, or the IAL) over the steps plus the answer as a last row,
so that the last step has a reader too; that map is computed apart from the explanation's (Eq. 7 normalises
over the whole map, and an added row would rescale the maps the explanation reports). Read that way, every map
names the step that writes the answer in almost every chain (WORKSPACE, issue 13, session 16).
`Explanation.anchors` holds both importances and whether the argmaxes agree; a chain without an answer after
its last step has nothing to resample towards and gets none.

Tokenizers: any `sage_jax.layout.Codec` whose ids avoid the layout's special ids; `sage_jax.layout.ByteCodec`
(one byte per token, after the special ids) needs `cfg.vocab_size >= 263`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax import layout as lay
from sage_jax.config import SageConfig
from sage_jax.decode import generate
from sage_jax.interpret import counterfactual as cf, decisions as dc
from sage_jax.interpret.alternatives import alternative_importance
from sage_jax.interpret.amortised import analyse
from sage_jax.interpret.consistency import consistency
from sage_jax.interpret.counterfactual import resampling_importance
from sage_jax.interpret.explanation import (Alternative, Anchors, Attempt, Explanation, StepDependency,
                                            StepExplanation, TokenDependency)
from sage_jax.interpret.significance import (WEIGHTINGS, HeadSelect, StepGradients, check_layer, head_indices,
                                             significance, significance_from_gradients, step_gradients,
                                             step_importance)
from sage_jax.interpret.steps import step_entropies, step_losses
from sage_jax.layout import Codec, Layout, Splitter, Steps, find_steps
from sage_jax.model import Params, check_tokens

METHODS = ("exact", "amortised")
EXPLAIN_WEIGHTINGS = ("substitution",) + WEIGHTINGS


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    """What `explain` analyses and how (static; validated at construction, errors name the field).

    Attributes:
      method: "exact" (Eq. 7) or "amortised" (the Inverse Analysis Layer; `explain` then needs its params).
      layer: where the exact path differentiates hidden states (0: token embeddings).
      weighting: the `w_ij` of the first exact attempt: "substitution" (the default: the counterfactual effect
        on step `i` of replacing token `j` by another value of its kind, `counterfactual.substitution_effects`;
        tokens without a kind, the attention sink and the format tokens, get 0), or "attention" / "rollout"
        (Eq. 7 as the paper writes it, and its rollout variant).
      heads: the heads of the first exact attempt (`HeadSelect`: None for all, a group name, or indices).
      threshold: significance threshold of decision points, in [0, 1].
      top_k: alternatives per step.
      continuations: also generate the greedy continuation of every alternative.
      max_new_tokens: length of those continuations.
      max_rationale_tokens: length of a generated rationale.
      consistency_threshold: refine while the score is below this, in [0, 1].
      max_refinements: at most this many refinements after the first attempt.
      anchors: also measure the anchor step by resampling and set it beside the analysis's most important step
        (module docstring; costs a batched decode of `2 * n_steps * anchor_rollouts` rollouts per round).
      anchor_rollouts: rollouts sampled from before and from after each step in a round, at least 1.
      anchor_max_rollouts: further rounds, up to this many rollouts, while the anchor step is uncertain
        (`counterfactual.resampling_importance`'s `max_n`: sixteen rollouts contradict a second draw of
        sixteen in a fifth to a third of chains); at most `anchor_rollouts`: one round.
      anchor_seed: seeds the rollouts (`jax.random.key(anchor_seed)`), so an explanation is reproducible.
      anchor_temperature: their sampling temperature, > 0 (1: the model's own distribution; greedy rollouts
        would all write the same step).
      substitutes: substitutes per token of the "substitution" weighting, at least 2 (its consistency score
        compares the estimates of the two halves).
      substitution_seed: draws them (`jax.random.key(substitution_seed)`).
      step_alternatives: the analysis's most important step (beside the anchor) is the one whose `m` most
        probable alternatives the answer survives least (`alternatives.alternative_importance`: one sampled
        decode of `n_steps * m * step_samples * 3 / 2` rows); 0 reads it from the map instead (the share of
        the later rows' mass on each step, which names the step that writes the answer in almost every chain).
      step_samples: continuations sampled per alternative (and `m * step_samples / 2` after each step as
        written), at least 1.
    """

    method: str = "exact"
    layer: int = 0
    weighting: str = "substitution"
    heads: HeadSelect = None
    threshold: float = 0.3
    top_k: int = 5
    continuations: bool = False
    max_new_tokens: int = 32
    max_rationale_tokens: int = 128
    consistency_threshold: float = 0.8
    max_refinements: int = 2
    anchors: bool = False
    anchor_rollouts: int = 16
    anchor_max_rollouts: int = 64
    anchor_seed: int = 0
    anchor_temperature: float = 1.0
    substitutes: int = 2
    substitution_seed: int = 0
    step_alternatives: int = 16
    step_samples: int = 4

    def __post_init__(self):
        dc.check_threshold(self.threshold)
        if self.method not in METHODS:
            raise ValueError(f"ExplainConfig.method={self.method!r}: choose one of {METHODS}")
        if self.weighting not in EXPLAIN_WEIGHTINGS:
            raise ValueError(f"ExplainConfig.weighting={self.weighting!r}: choose one of {EXPLAIN_WEIGHTINGS}")
        if self.weighting == "substitution" and self.heads is not None:
            raise ValueError(f"ExplainConfig.heads={self.heads!r} selects attention heads; the 'substitution' "
                             "weighting has none (pass weighting='attention' to aggregate heads)")
        if self.substitutes < 2:
            raise ValueError(f"ExplainConfig.substitutes must be >= 2, got {self.substitutes}")
        if not 0.0 <= self.consistency_threshold <= 1.0:
            raise ValueError(f"ExplainConfig.consistency_threshold must lie in [0, 1], got "
                             f"{self.consistency_threshold}")
        if self.max_refinements < 0:
            raise ValueError(f"ExplainConfig.max_refinements must be >= 0, got {self.max_refinements}")
        if self.step_alternatives < 0:
            raise ValueError(f"ExplainConfig.step_alternatives must be >= 0, got {self.step_alternatives}")
        if self.step_samples < 1:
            raise ValueError(f"ExplainConfig.step_samples must be >= 1, got {self.step_samples}")
        if self.anchor_rollouts < 1:
            raise ValueError(f"ExplainConfig.anchor_rollouts must be >= 1, got {self.anchor_rollouts}")
        if not 0.0 < self.anchor_temperature < float("inf"):
            raise ValueError(f"ExplainConfig.anchor_temperature must be a finite number > 0, got "
                             f"{self.anchor_temperature}")
        if self.heads is not None and not isinstance(self.heads, str):
            object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))


def explain(params: Params, cfg: SageConfig, question: str, rationale: Optional[str] = None, *,
            tokenizer: Codec, answer: Optional[str] = None, tokens=None, config: ExplainConfig = ExplainConfig(),
            inverse_params: Optional[Params] = None, layout: Layout = lay.SAGE,
            split: Callable[[str], list[str]] = lay.split_lines, splitter: Optional[Splitter] = None) -> Explanation:
    """Explains one chain of thought.

    Args:
      params: forward-model parameters.
      cfg: the model config (`vocab_size` must cover the tokenizer's ids).
      question: the question text.
      rationale: the chain of thought, split into steps by `split` (lines by default); `None` with no
        `tokens` generates it greedily from the question (empty generated steps are skipped).
      tokenizer: a `sage_jax.layout.Codec`.
      answer: the final answer text, laid out after the answer marker (with `rationale`).
      tokens: `[T]` an already laid-out sequence (e.g. from `sage_jax.generate`); with `rationale`, it must
        equal the layout of `question`, `rationale` and `answer`.
      config: the analysis (`ExplainConfig`).
      inverse_params: parameters of the Inverse Analysis Layer (for `config.method="amortised"`).
      layout: how the problem is laid out as tokens (`sage_jax.layout.SAGE` by default).
      split: text -> step texts.
      splitter: tokens -> step spans (`sage_jax.layout.Splitter`); the layout's step spans by default.
    """
    if config.method == "amortised" and inverse_params is None:
        raise ValueError("method='amortised' needs inverse_params (sage_jax.nn.inverse.init_inverse_params, or "
                         "trained Inverse Analysis Layer parameters)")
    check_layer(cfg, config.layer)
    head_indices(cfg, config.heads)

    ids = _sequence(params, cfg, question, rationale, tokenizer=tokenizer, answer=answer, tokens=tokens,
                    split=split, max_rationale_tokens=config.max_rationale_tokens, layout=layout)
    tokens_j = check_tokens(ids[None], cfg)[0]
    generated = rationale is None and tokens is None
    if generated and splitter is None:
        splitter = functools.partial(layout.step_spans, skip_empty=True)
        if not splitter(ids):
            shown = " ".join(layout.token_text(tokenizer, t) for t in ids[-16:])
            raise ValueError(f"the model generated no non-empty step (the sequence ends: {shown}); pass a "
                             "rationale, or use a model trained to write <step> chains")
    steps = find_steps(ids, splitter=splitter, layout=layout)
    candidates = (([("amortised", None, None)] if config.method == "amortised" else [])
                  + _ladder(config.weighting, config.heads))
    analysis = _Analysis(params, cfg, tokens_j, steps, config.layer, inverse_params, candidates,
                         _Substitutes(tokenizer, layout, config))
    attempts = []
    for candidate in candidates[: 1 + config.max_refinements]:
        score_map, logits, score = analysis.run(candidate)
        attempts.append(Attempt(candidate[0], candidate[1], _heads_name(candidate[2]) if candidate[1] else None,
                                score))
        if score >= config.consistency_threshold:
            break

    found = dc.decision_points(score_map, logits, tokens_j, steps, threshold=config.threshold, top_k=config.top_k,
                               layout=layout)
    if config.continuations:
        found = dc.with_continuations(found, params, cfg, ids, max_new_tokens=config.max_new_tokens, layout=layout)
    final = candidate  # the attempt the explanation comes from
    anchors = (_anchors(params, cfg, tokenizer, layout, ids, tokens_j, steps, final, config, inverse_params,
                        analysis.substitutes) if config.anchors else None)
    return _assemble(tokenizer, layout, question, ids, steps, np.asarray(score_map), logits, found, attempts,
                     config.layer, anchors)


@dataclasses.dataclass(frozen=True)
class _Substitutes:
    """How the "substitution" weighting draws its substitutes: the codec's kinds, `n` per token, a fixed key."""

    codec: Codec
    layout: Layout
    config: ExplainConfig

    def effects(self, params, cfg: SageConfig, tokens: jax.Array, targets: Steps) -> cf.SubstitutionEffects:
        """The substitution effects on every row of `targets`; the substitutes depend on the tokens and the seed
        only, so every call on one sequence draws the same ones."""
        table = _table(self.codec, self.layout)
        n = min(self.config.substitutes, table.alternatives.shape[1])
        subs, valid = cf.draw_substitutes(jax.random.key(self.config.substitution_seed), tokens, table.alternatives,
                                          table.valid, n)
        return cf.substitution_effects(params, cfg, tokens, targets.mask, subs, valid, batch_size=_SUBSTITUTION_BATCH,
                                       runs=cf.runs_needed(table, np.asarray(tokens), np.asarray(targets.mask), n))


_SUBSTITUTION_BATCH = 16
"""Substituted forward passes run at once: `T * substitutes` full `[T, V]` logits do not fit a large vocabulary."""


@functools.lru_cache(maxsize=4)
def _table(codec: Codec, layout: Layout) -> cf.SubstitutionTable:
    return cf.substitution_table(codec, layout)


class _Analysis:
    """Runs the attempts of the refinement loop, sharing one exact vjp among all exact rungs."""

    def __init__(self, params, cfg, tokens, steps, layer, inverse_params, candidates, substitutes: _Substitutes):
        self.params, self.cfg, self.tokens, self.steps = params, cfg, tokens, steps
        self.layer, self.inverse_params, self.substitutes = layer, inverse_params, substitutes
        self.rungs = [c[1:] for c in candidates if c[0] == "exact"]
        self._gradients: Optional[StepGradients] = None
        self._maps: dict = {}

    def run(self, candidate) -> tuple[jax.Array, jax.Array, float]:
        """(`[n, T]` significance map, `[T, V]` forward logits, consistency score)."""
        path, weighting, heads = candidate
        if path == "amortised":
            out = analyse(self.params, self.inverse_params, self.cfg, self.tokens, self.steps.mask)
            where = jnp.any(self.steps.queries, axis=0)
            score = consistency(out.forward_logits, out.logits, where=where).score
            return out.significance * self.steps.sources, out.forward_logits, float(score)
        if weighting == "substitution":
            return self._substitution()
        rung = self.rungs.index((weighting, heads))
        neighbour = rung + 1 if rung + 1 < len(self.rungs) else max(rung - 1, 0)
        here, there = self._map(self.rungs[rung]), self._map(self.rungs[neighbour])
        logits = self.gradients().logits
        score = consistency(logits, logits, here, there, map_where=self.steps.sources, kl_weight=0.0).score
        return here, logits, float(score)

    def _substitution(self) -> tuple[jax.Array, jax.Array, float]:
        """Eq. 7 with the substitution effects as `w_ij`; scored by how well the estimates from the two halves of
        the substitutes agree (no wider aggregation exists for a causal weight)."""
        effects = self.substitutes.effects(self.params, self.cfg, self.tokens, self.steps)
        here, *halves = (significance_from_gradients(self.gradients(), self.steps, self.cfg, weight=w).score
                         for w in (effects.effect, *effects.halves()))
        logits = self.gradients().logits
        score = consistency(logits, logits, *halves, map_where=self.steps.sources, kl_weight=0.0).score
        return here, logits, float(score)

    def gradients(self) -> StepGradients:
        if self._gradients is None:
            self._gradients = _exact_gradients(self.params, self.cfg, self.tokens, self.steps, layer=self.layer)
        return self._gradients

    def _map(self, rung) -> jax.Array:
        if rung not in self._maps:
            weighting, heads = rung
            self._maps[rung] = significance_from_gradients(self.gradients(), self.steps, self.cfg,
                                                           weighting=weighting, heads=heads).score
        return self._maps[rung]


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def _exact_gradients(params: Params, cfg: SageConfig, tokens: jax.Array, steps: Steps, *,
                     layer: int) -> StepGradients:
    return step_gradients(params, cfg, tokens, steps, layer=layer)


def _anchors(params, cfg: SageConfig, codec: Codec, layout: Layout, ids: np.ndarray, tokens: jax.Array, steps: Steps,
             candidate: tuple, config: ExplainConfig, inverse_params, substitutes: _Substitutes) -> Optional[Anchors]:
    """The anchor step beside the analysis's most important step (module docstring); None without an answer.

    `candidate` is the final attempt: the analysis map is recomputed over the steps and the answer with the
    same path (and for the exact path the same weighting, heads and layer), never taken from the explanation.
    """
    answer = layout.answer_span(ids)
    spans = [(int(a), int(b)) for a, b in zip(np.asarray(steps.starts), np.asarray(steps.ends))]
    if answer is None or answer[0] == answer[1] or answer[0] < spans[-1][1]:
        return None
    if config.step_alternatives:  # a step without an alternative cannot be written otherwise: nothing rests on it
        analysis = np.nan_to_num(alternative_importance(
            params, cfg, codec, ids, spans, key=jax.random.fold_in(jax.random.key(config.anchor_seed), 1),
            alternatives=config.step_alternatives, samples=config.step_samples, layout=layout).importance)
    else:
        analysis = _map_step_importance(params, cfg, tokens, spans, answer, candidate, config, inverse_params,
                                        substitutes)
    n = config.anchor_rollouts
    truth = resampling_importance(params, cfg, codec, ids, spans, key=jax.random.key(config.anchor_seed), n=n,
                                  max_n=max(n, config.anchor_max_rollouts), temperature=config.anchor_temperature,
                                  layout=layout)
    measured = ~np.isnan(truth.kl)
    anchor = int(np.nanargmax(truth.kl)) if measured.any() else None
    best = int(np.argmax(analysis))
    return Anchors(resampling_importance=tuple(float(k) if m else None for k, m in zip(truth.kl, measured)),
                   replaced=tuple(int(r) for r in truth.n_replaced),
                   analysis_importance=tuple(float(a) for a in analysis), anchor_step=anchor, analysis_step=best,
                   found=None if anchor is None else anchor == best, rollouts=len(truth.answers_kept[0]))


def _map_step_importance(params, cfg: SageConfig, tokens: jax.Array, spans: list[tuple[int, int]],
                         answer: tuple[int, int], candidate: tuple, config: ExplainConfig, inverse_params,
                         substitutes: _Substitutes) -> np.ndarray:
    """`[S]` the share of the later rows' mass on each step of the final attempt's map, recomputed over the
    steps and the answer with the same path (and for the exact path the same weighting, heads and layer)."""
    targets = lay.from_spans(spans + [answer], tokens.shape[0])
    path, weighting, heads = candidate
    if path == "amortised":
        score = analyse(params, inverse_params, cfg, tokens, targets.mask).significance * targets.sources
    else:
        weight = (substitutes.effects(params, cfg, tokens, targets).effect if weighting == "substitution"
                  else None)
        score = significance(params, cfg, tokens, targets, layer=config.layer,
                             weighting="attention" if weight is not None else weighting, heads=heads,
                             weight=weight).score
    return np.asarray(step_importance(score, targets.mask, len(spans)))


def _ladder(weighting: str, heads: HeadSelect) -> list[tuple]:
    """The exact attempts, from the asked aggregation to ever wider ones, without repeats; the causal
    "substitution" weighting is one rung (widening an attention aggregation does not apply to it)."""
    if weighting == "substitution":
        return [("exact", "substitution", None)]
    rungs = [(weighting, heads), (weighting, None), ("rollout", None)]
    unique = []
    for rung in rungs:
        if rung not in unique:
            unique.append(rung)
    return [("exact",) + rung for rung in unique]


def _heads_name(heads: HeadSelect) -> str:
    if heads is None:
        return "all"
    return heads if isinstance(heads, str) else ",".join(str(h) for h in heads)


def _sequence(params, cfg, question, rationale, *, tokenizer, answer, tokens, split, max_rationale_tokens,
              layout: Layout) -> np.ndarray:
    """The laid-out `[T]` token ids: given, built from the rationale, or generated."""
    if tokens is not None:
        ids = np.asarray(tokens)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"tokens must be one laid-out sequence of [T] integer ids, got shape {ids.shape} "
                             f"and dtype {ids.dtype}")
        if rationale is not None:
            expected = layout.encode(tokenizer, question, split(rationale), answer, strict=True).tokens
            _check_same(expected, ids)
        return ids.astype(np.int32)
    if rationale is not None:
        return layout.encode(tokenizer, question, split(rationale), answer, strict=True).tokens
    prompt = layout.prompt(tokenizer, question, strict=True) + list(layout.rationale_cue)
    room = min(max_rationale_tokens, cfg.max_seq_len - len(prompt))
    if room < 1:
        raise ValueError(f"the question fills the context cfg.max_seq_len={cfg.max_seq_len}: no room to generate")
    out = generate(params, cfg, [prompt], max_new_tokens=room)
    generated = np.asarray(out.tokens[0, len(prompt):len(prompt) + int(out.num_generated[0])])
    return np.concatenate([np.asarray(prompt, np.int32), generated.astype(np.int32)])


def _check_same(expected: np.ndarray, given: np.ndarray) -> None:
    """Raises unless the rationale's layout equals the given tokens, naming the first difference."""
    if expected.shape == given.shape and (expected == given).all():
        return
    n = min(len(expected), len(given))
    differ = np.flatnonzero(expected[:n] != given[:n])
    where = (f"first difference at position {differ[0]}: the rationale gives id {expected[differ[0]]}, the "
             f"tokens hold {given[differ[0]]}") if differ.size else f"lengths differ ({len(expected)} vs {len(given)})"
    raise ValueError(f"the rationale does not tokenize into the given tokens: {where}")


def _assemble(tokenizer, layout: Layout, question, ids, steps: Steps, score_map: np.ndarray, logits,
              found: dc.Decisions, attempts: list[Attempt], layer: int, anchors: Optional[Anchors]) -> Explanation:
    texts = tuple(layout.token_text(tokenizer, t) for t in ids)
    render = lambda seq: "".join(layout.token_text(tokenizer, t) for t in seq)  # noqa: E731
    losses = np.asarray(step_losses(logits, jnp.asarray(ids), steps))
    entropies = np.asarray(step_entropies(logits, steps))
    starts = np.asarray(steps.starts)
    region = np.searchsorted(starts, np.arange(len(ids)), side="right") - 1  # -1: the question
    views = []
    for d in found.steps:
        i = d.step
        start, end = int(steps.starts[i]), int(steps.ends[i])
        regions = {}
        for j, score in d.dependencies:
            name = "question" if region[j] < 0 else f"step {region[j] + 1}"
            regions[name] = max(regions.get(name, 0.0), score)
        alternatives = tuple(Alternative(
            token=layout.token_text(tokenizer, a.token), prob=a.prob,
            continuation=None if a.continuation is None else render(a.continuation),
            answer=None if a.answer is None else render(a.answer), answer_changed=a.answer_changed)
            for a in d.alternatives)
        views.append(StepExplanation(
            index=i, text=render(ids[start:end]), start=start, end=end, loss=float(losses[i]),
            entropy=float(entropies[i]), branch_position=d.position, chosen=layout.token_text(tokenizer, d.chosen),
            confidence=d.confidence, alternatives=alternatives,
            token_dependencies=tuple(TokenDependency(j, texts[j], s) for j, s in d.dependencies),
            step_dependencies=tuple(StepDependency(k, s) for k, s in sorted(regions.items(), key=lambda r: -r[1])),
            significance=tuple(float(x) for x in score_map[i])))
    final = attempts[-1]
    return Explanation(question=question, answer=None if found.answer is None else render(found.answer),
                       method=final.path, consistency=final.score, threshold=found.threshold, layer=layer,
                       tokens=tuple(int(t) for t in ids), token_text=texts, steps=tuple(views),
                       attempts=tuple(attempts), anchors=anchors)
