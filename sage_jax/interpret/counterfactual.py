"""Ground truth from the model itself: what each step of a chain computes with, found by changing the input.

An attribution map is a claim about the model's behaviour, so it is judged against that behaviour, never
against what looks plausible. Three measurements, each on one laid-out chain (`tokens [T]`, the steps'
tokens `step_mask [S, T]`), each a pure function that composes with `jit` and `vmap` over problems:

- **Token substitution** (interchange; `substitution_effects`). Replace one content token by another value
  of its kind (a digit by a digit, a number by a number of as many digits, a name by a name, an operator by
  an operator: `substitution_table`), keep every other token, and teacher-force the same chain. For every
  later step record how far its log-probability moves (`|delta|`, nats) and whether its greedy tokens change
  (the argmax at any of its query positions). A token is a dependency of a step when most of its
  substitutes change the step's greedy tokens (`SubstitutionEffects.dependencies`). Only the tokens before a
  step's first query are tested for it (`faithfulness.context_candidates`): the step's own tokens are its
  targets. Kinds come from the token's text through the codec, so any tokenizer and layout work; special and
  format tokens have no kind and are never substituted (their removal breaks any model and says nothing
  about what a step computes with).
- **Step suppression** (`step_suppression`): cut every edge from the queries after step `k` to step `k`'s
  tokens, in every layer and head (`interventions.cut_edges`), and record each later step's and the answer's
  log-probability drop: attention suppression at step granularity (Thought Anchors, Bogdan et al. 2025).
- **Resampling importance** (`resampling_importance`): sample `n` continuations from just after step `k`
  (step `k` kept) and `n` in which step `k` is replaced by a different step sampled from the model; the
  answers reached are compared by the KL divergence of their distributions and by their accuracy. A
  different step is drawn exactly from the model's distribution conditioned on differing
  (`sample_rewrites`: where the rewrite first leaves the step, then the token written there instead), which
  is what resampling until the step differs converges to, without the rejections: a confident model rewrites
  a step by chance in few of its rollouts, and a step that no rollout rewrites would have no importance at
  all. This one decodes, so it runs on the host around batched `sage_jax.generate` calls: one per round,
  with further rounds drawn only while the most important step is uncertain (`resampling_importance`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.decode import generate, left_pad
from sage_jax.interpret.faithfulness import context_candidates, step_queries
from sage_jax.interpret.interventions import cut_edges, edges
from sage_jax.interpret.patching import baseline_log_probs, log_prob_metric, step_log_probs, sweep
from sage_jax.layout import SAGE, Codec, Layout, parse_answer
from sage_jax.model import Params, forward

Array = jax.Array

KINDS = ("none", "number", "word", "operator")
"""Token kinds that substitution may exchange; "none" is never substituted (special, format, mixed text)."""
OPERATORS = frozenset("+-*/^%<>×÷−")
"""Single-character texts that count as operators."""


@dataclasses.dataclass(frozen=True)
class SubstitutionTable:
    """Which ids may replace which, for one codec and layout.

    Attributes:
      kind: `[V]` int, the index of each id's kind in `KINDS`.
      alternatives: `[V, M]` int32, other ids of the same kind (same leading whitespace, as many digits or
        letters, the same capitalisation), padded with the id itself.
      valid: `[V, M]` bool, which entries of `alternatives` are real.
    """

    kind: np.ndarray
    alternatives: np.ndarray
    valid: np.ndarray

    def has_kind(self, tokens) -> np.ndarray:
        """`[...]` bool: the tokens that can be substituted (a kind and at least one alternative)."""
        tokens = np.asarray(tokens)
        return self.valid[tokens].any(-1)


def token_kind(text: str) -> tuple[str, tuple]:
    """The kind of a token's text and the key its substitutes must share (leading whitespace, length, case).

    >>> token_kind(" 14")
    ('number', (' ', 2))
    """
    core = text.lstrip()
    prefix = text[:len(text) - len(core)]
    if not core:
        return "none", ()
    if core.isascii() and core.isdigit():
        return "number", (prefix, len(core))
    if core in OPERATORS:
        return "operator", (prefix,)
    if core.isascii() and core.isalpha():
        return "word", (prefix, len(core), core.isupper(), core[0].isupper())
    return "none", ()


def substitution_table(codec: Codec, layout: Layout = SAGE, *, max_alternatives: int = 16,
                       seed: int = 0) -> SubstitutionTable:
    """Groups a vocabulary by kind (`token_kind` of each id's decoded text; special ids have none).

    Args:
      codec: the tokenizer (`vocab_size`, `decode`).
      layout: says which ids are special.
      max_alternatives: `M`, the most alternatives kept per id. A group larger than `M + 1` (words of a large
        vocabulary) keeps `M` of its other members drawn with `seed`, so the table is reproducible.
      seed: seeds that draw (numpy; the table is built once on the host).
    """
    if max_alternatives < 1:
        raise ValueError(f"max_alternatives must be >= 1, got {max_alternatives}")
    vocab = int(codec.vocab_size)
    kinds = np.zeros(vocab, np.int8)
    groups: dict[tuple, list[int]] = {}
    for token in range(vocab):
        if bool(layout.is_special(token)):
            continue
        kind, key = token_kind(codec.decode([token]))
        if kind != "none":
            kinds[token] = KINDS.index(kind)
            groups.setdefault((kind,) + key, []).append(token)
    alternatives = np.tile(np.arange(vocab, dtype=np.int32)[:, None], (1, max_alternatives))
    valid = np.zeros((vocab, max_alternatives), bool)
    rng = np.random.default_rng(seed)
    for members in groups.values():
        members = np.asarray(members, np.int32)
        for token in members:
            others = members[members != token]
            if len(others) > max_alternatives:
                others = np.sort(rng.choice(others, max_alternatives, replace=False))
            alternatives[token, :len(others)] = others
            valid[token, :len(others)] = True
    return SubstitutionTable(kinds, alternatives, valid)


class SubstitutionEffects(NamedTuple):
    """What substituting each token did to each step (one problem; a leading batch axis when vmapped).

    Attributes:
      effect: `[S, T]` mean `|delta|` over the token's substitutes (nats); 0 where not `tested`.
      flip_rate: `[S, T]` share of the token's substitutes that changed the step's greedy tokens.
      tested: `[S, T]` bool, the token precedes the step's first query and had at least one substitute.
      delta: `[T, M, S]` signed log-probability change of each step under each substitute (0 where invalid).
      flipped: `[T, M, S]` bool, whether that substitute changed the step's greedy tokens.
      substitutes: `[T, M]` int32, the ids tried at each position; valid: `[T, M]` bool, which are real.
    """

    effect: Array
    flip_rate: Array
    tested: Array
    delta: Array
    flipped: Array
    substitutes: Array
    valid: Array

    def halves(self) -> tuple[Array, Array]:
        """`([S, T], [S, T])`: `effect` from the first and from the second half of the substitutes, two independent
        estimates whose agreement says how stable the estimate is (`explain`'s consistency score for it)."""
        half = self.valid.shape[-1] // 2

        def mean(part: slice) -> Array:
            valid = self.valid[:, part]
            total = jnp.abs(self.delta[:, part]).sum(1).T  # [S, T]
            return jnp.where(self.tested, total / jnp.maximum(valid.sum(-1), 1)[None, :], 0.0)
        return mean(slice(0, half)), mean(slice(half, None))

    def dependencies(self, threshold: float = 0.5) -> Array:
        """`[S, T]` bool: tokens whose substitutes changed the step's greedy tokens at a rate `>= threshold`
        (a majority by default: the step computes with this token's value)."""
        return self.tested & (self.flip_rate >= threshold)


def draw_substitutes(key: Array, tokens: Array, alternatives: Array, valid: Array, n: int) -> tuple[Array, Array]:
    """`n` substitutes per position, drawn without replacement from the table's alternatives.

    Args:
      key: PRNG key.
      tokens: `[T]` ids.
      alternatives, valid: `SubstitutionTable.alternatives` / `.valid` (`[V, M]`), as arrays.
      n: substitutes per position (fewer are valid where a token has fewer alternatives).

    Returns:
      `([T, n] int32 ids, [T, n] bool valid)`; positions without a kind have no valid substitute, nor have ids
      past the table (a model's padded vocabulary beyond its tokenizer's: an array index would clamp them onto
      the table's last id and its alternatives).
    """
    tokens = jnp.asarray(tokens)
    inside = (tokens < jnp.asarray(valid).shape[0])[:, None]
    options, ok = jnp.asarray(alternatives)[tokens], jnp.asarray(valid)[tokens] & inside  # [T, M]
    if n > options.shape[-1]:
        raise ValueError(f"n={n} substitutes per position, but the table keeps at most {options.shape[-1]}")
    scores = jnp.where(ok, jax.random.uniform(key, ok.shape), -1.0)
    _, chosen = jax.lax.top_k(scores, n)  # valid entries first, in random order
    return jnp.take_along_axis(options, chosen, -1), jnp.take_along_axis(ok, chosen, -1)


def runs_needed(table: SubstitutionTable, tokens: np.ndarray, step_mask: np.ndarray, n: int, *,
                multiple: int = 16) -> int:
    """The `runs` of `substitution_effects` that skips no substitute any step is tested with, for every chain.

    A substitute is needed when it is valid (`min(n, alternatives)` per position of a kind) and its position
    precedes some step's first query; the rest change no tested step. Rounded up to `multiple` (at most
    `T * n`), so that batches of similar chains share one compiled program.

    Args:
      table: the substitution table the substitutes are drawn from.
      tokens: `[N, T]` (or `[T]`) chains.
      step_mask: `[N, S, T]` (or `[S, T]`) bool, their steps (the rows `substitution_effects` is given).
      n: substitutes per position (`draw_substitutes`).
    """
    tokens, step_mask = np.asarray(tokens).reshape((-1,) + np.shape(tokens)[-1:]), np.asarray(step_mask, bool)
    step_mask = step_mask.reshape((-1,) + step_mask.shape[-2:])
    vocab = table.valid.shape[0]  # ids past the table have no substitutes (`draw_substitutes`)
    per_position = np.where(tokens < vocab, np.minimum(table.valid[np.minimum(tokens, vocab - 1)].sum(-1), n), 0)
    candidates = np.asarray(jax.vmap(context_candidates)(jnp.asarray(step_mask))).any(1)           # [N, T]
    most = int((per_position * candidates).sum(-1).max(initial=0))
    return min(max(-(-most // multiple) * multiple, multiple), tokens.shape[-1] * n)


@functools.partial(jax.jit, static_argnames=("cfg", "batch_size", "runs"))
def substitution_effects(params: Params, cfg: SageConfig, tokens: Array, step_mask: Array, substitutes: Array,
                         valid: Array, *, batch_size: Optional[int] = None,
                         runs: Optional[int] = None) -> SubstitutionEffects:
    """Teacher-forced effect of substituting each token on each step (module docstring).

    Args:
      params, cfg: the model.
      tokens: `[T]` one laid-out chain.
      step_mask: `[S, T]` bool, the tokens of each step.
      substitutes: `[T, M]` ids to try at each position (`draw_substitutes`).
      valid: `[T, M]` bool, which of them to run; invalid entries are run and masked out.
      batch_size: chunk size of the substituted forward passes (None: all at once).
      runs: how many substituted forward passes to run: the valid substitutes at positions before some
        step's first query go first, so `runs_needed` passes compute every tested effect while skipping
        the format tokens, the padding and the tokens no step is tested on (a chained sum's `T * M` passes
        are about twice what it needs). A needed substitute beyond `runs` does not run and is returned as
        invalid, never read as an effect of 0. None: all `T * M`.

    Returns:
      `SubstitutionEffects`.
    """
    tokens, step_mask = jnp.asarray(tokens), jnp.asarray(step_mask, bool)
    seq, n_subs = substitutes.shape
    if tokens.ndim != 1 or step_mask.ndim != 2 or step_mask.shape[1] != seq or tokens.shape[0] != seq:
        raise ValueError(f"tokens {tokens.shape}, step_mask {step_mask.shape} and substitutes {substitutes.shape}"
                         " must be [T], [S, T] and [T, M] of one problem (vmap over problems)")
    queries = step_queries(step_mask)
    base = forward(params, tokens[None], cfg).logits[0]
    base_lp = step_log_probs(base, tokens, step_mask).step
    base_greedy = jnp.argmax(base, -1)

    def run(index):
        position, substitute = index
        changed = tokens.at[position].set(substitute)
        logits = forward(params, changed[None], cfg).logits[0]
        lp = step_log_probs(logits, changed, step_mask).step
        flipped = ((jnp.argmax(logits, -1) != base_greedy)[None, :] & queries).any(-1)
        return lp - base_lp, flipped

    needed = (valid & context_candidates(step_mask).any(0)[:, None]).reshape(-1)
    order = (jnp.arange(seq * n_subs) if runs is None
             else jnp.argsort(~needed, stable=True)[:min(runs, seq * n_subs)])  # needed pairs first
    indices = (order // n_subs, substitutes.reshape(-1)[order])
    ran_delta, ran_flipped = (jax.vmap(run)(indices) if batch_size is None
                              else jax.lax.map(run, indices, batch_size=batch_size))
    scatter = lambda x: jnp.zeros((seq * n_subs,) + x.shape[1:], x.dtype).at[order].set(x)  # noqa: E731
    valid = valid & scatter(jnp.ones(order.shape, bool)).reshape(seq, n_subs)
    delta = jnp.where(valid[:, :, None], scatter(ran_delta).reshape(seq, n_subs, -1), 0.0)
    flipped = valid[:, :, None] & scatter(ran_flipped).reshape(seq, n_subs, -1)
    count = valid.sum(-1)[None, :]  # [1, T]
    tested = context_candidates(step_mask) & (count > 0)
    per = jnp.maximum(count, 1)
    effect = jnp.where(tested, jnp.abs(delta).sum(1).T / per, 0.0)
    flip_rate = jnp.where(tested, flipped.sum(1).T / per, 0.0)
    return SubstitutionEffects(effect, flip_rate, tested, delta, flipped, substitutes, valid)


class StepSuppression(NamedTuple):
    """Effects of suppressing attention to whole steps (one problem).

    Attributes:
      step: `[S, S]` entry `[k, i]`: step `i`'s log-probability drop when every later query's edges to step
        `k` are cut (0 for `i <= k`).
      answer: `[S]` the answer's log-probability drop under the same cut.
    """

    step: Array
    answer: Array


@functools.partial(jax.jit, static_argnames=("cfg", "batch_size"))
def step_suppression(params: Params, cfg: SageConfig, tokens: Array, step_mask: Array,
                     answer_mask: Optional[Array] = None, *, batch_size: Optional[int] = None) -> StepSuppression:
    """Cut each step from everything after it (every layer and head) and measure what breaks.

    Args:
      params, cfg: the model.
      tokens: `[T]`; step_mask: `[S, T]` bool; answer_mask: `[T]` bool, the answer's tokens.
      batch_size: chunk size of the `S` edited runs.
    """
    tokens, step_mask = jnp.asarray(tokens), jnp.asarray(step_mask, bool)
    seq = tokens.shape[0]
    last = jnp.max(jnp.where(step_mask, jnp.arange(seq), -1), axis=-1)  # [S]
    metric = log_prob_metric(tokens, step_mask, answer_mask)

    def make_edits(step):
        later = jnp.arange(seq) > last[step]
        return cut_edges(cfg, edges(later, step_mask[step]))

    cut = sweep(params, cfg, tokens, make_edits, jnp.arange(step_mask.shape[0]), metric, batch_size=batch_size)
    base = baseline_log_probs(params, cfg, tokens, step_mask, answer_mask)
    n_steps = step_mask.shape[0]
    after = jnp.arange(n_steps)[None, :] > jnp.arange(n_steps)[:, None]
    real = step_mask.any(-1)
    drop = jnp.where(after & real[:, None] & real[None, :], base.step[None] - cut.step, 0.0)
    return StepSuppression(drop, jnp.where(real, base.answer - cut.answer, 0.0))


class ResamplingImportance(NamedTuple):
    """Counterfactual importance of each step for the final answer (one problem; numpy).

    Attributes:
      kl: `[S]` KL(answers with step `k` kept || answers with step `k` replaced), add-one smoothed over the
        answers seen in either set; NaN when the model gives step `k` probability one (nothing to replace it by).
      accuracy_kept: `[S]` share of rollouts after step `k` that reach `reference`.
      accuracy_replaced: `[S]` the same for the rollouts with step `k` replaced; NaN when there are none.
      n_replaced: `[S]` int, rollouts with step `k` replaced (`n`, or 0 where the step cannot be replaced).
      answers_kept, answers_replaced: per step, the parsed answers (None where a rollout gave none).
      rewrites: per step, each replaced rollout's step up to where it leaves the original: the original's
        tokens before that point, then the token written instead.
    """

    kl: np.ndarray
    accuracy_kept: np.ndarray
    accuracy_replaced: np.ndarray
    n_replaced: np.ndarray
    answers_kept: tuple[tuple[Optional[str], ...], ...]
    answers_replaced: tuple[tuple[Optional[str], ...], ...]
    rewrites: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def importance(self) -> np.ndarray:
        """`[S]` the KL, the step-level truth the analysis's step ranking is compared with."""
        return self.kl


@functools.partial(jax.jit, static_argnames=("n",))
def sample_rewrites(key: Array, log_probs: Array, tokens: Array, span_mask: Array, n: int) -> tuple[Array, Array]:
    """Where `n` rewrites of each span first leave it, and what they write there, drawn from the model.

    A rewrite of the span is a continuation from the span's start that differs from it somewhere in it. Its
    first divergence is at position `d` with token `t != tokens[d]` with probability
    `P(tokens[start:d]) * p(t | tokens[:d])`, normalised over every `d` in the span and every such `t`: exact
    sampling from the model conditioned on the span differing, the limit of resampling until it differs.

    Args:
      key: PRNG key.
      log_probs: `[T, V]` the model's log-probabilities (at the sampling temperature) of the token at each
        position given the tokens before it (teacher-forced; row 0 is never used).
      tokens: `[T]` the chain.
      span_mask: `[S, T]` bool, each span's positions, contiguous (a step and the token that ends it).
      n: rewrites per span.

    Returns:
      `([S, n] position, [S, n] token)`: where each rewrite leaves the span and the token it writes there;
      position -1 where the model gives the span probability one (no rewrite exists).
    """
    own = jnp.take_along_axis(log_probs, tokens[:, None], -1)[:, 0]                                   # [T]
    is_own = jax.nn.one_hot(tokens, log_probs.shape[-1], dtype=bool)                                  # [T, V]
    leave = jax.nn.logsumexp(jnp.where(is_own, -jnp.inf, log_probs), -1)                              # [T]
    kept_before = jnp.cumsum(jnp.where(span_mask, own, 0.0), -1) - jnp.where(span_mask, own, 0.0)     # [S, T]
    first = jnp.where(span_mask, kept_before + leave, -jnp.inf)                                       # [S, T]

    def one(key, first):
        where_key, what_key = jax.random.split(key)
        position = jax.random.categorical(where_key, first, shape=(n,))
        token = jax.random.categorical(what_key, jnp.where(is_own[position], -jnp.inf, log_probs[position]))
        return jnp.where(jnp.isfinite(jax.nn.logsumexp(first)), position, -1), token

    return jax.vmap(one)(jax.random.split(key, span_mask.shape[0]), first)


def resampling_importance(params: Params, cfg: SageConfig, codec: Codec, tokens: Sequence[int],
                          spans: Sequence[tuple[int, int]], *, key: Array, n: int = 16, max_n: Optional[int] = None,
                          confidence: float = 0.7, temperature: float = 1.0, reference: Optional[str] = None,
                          layout: Layout = SAGE, max_new_tokens: Optional[int] = None, width: Optional[int] = None
                          ) -> ResamplingImportance:
    """Resampling importance of each step (module docstring), from rounds of one batched decode of `2 * S * n`.

    Sixteen rollouts name a most important step that a second draw of sixteen contradicts in a fifth to a
    third of chains; sixty-four are steadier but four times the price. With `max_n`, rounds of `n` are added
    only while the most important step is uncertain (`_settled`): while the posterior probability that the
    KL's argmax is the most important step stays below `confidence`. Every round has the batch shape of the
    first, so the rounds share one compiled decode.

    Args:
      params, cfg: the model.
      codec: decodes the answers (`layout.parse_answer`).
      tokens: `[T]` the chain, with its answer.
      spans: `(start, end)` token span of each step's text (`Layout.step_spans`); the token at `end` (the one
        that ends the step) is part of what a rewrite may change.
      key: PRNG key of the sampling (and of the posterior draws that decide on another round).
      n: rollouts per step and condition in each round.
      max_n: at most this many per step and condition, rounded up to whole rounds of `n` (None: one round).
        At least `n`.
      confidence: the posterior probability of the most important step at which no round is added (0.7: on
        the demo's model, rounds of 16 up to 64 name the step a separate 64-rollout draw names nearly as often
        as 64 rollouts do, 0.79 against 0.81 of 180 chains, with about half of them).
      temperature: sampling temperature (1: the model's own distribution).
      reference: the right answer; by default the chain's own (`layout.parse_answer`).
      layout: where the answer is.
      max_new_tokens: rollout length; by default enough to rewrite the chain from its first step plus 8.
      width: left-pad every prompt to this many tokens (at least the longest: a step's end plus one), so that
        chains of one length and step count share one compiled decode; by default the longest prompt.
    """
    tokens = [int(t) for t in tokens]
    spans = [(int(a), int(b)) for a, b in spans]
    if not spans:
        raise ValueError("resampling_importance needs at least one step span")
    max_n = n if max_n is None else max_n
    if n < 1 or max_n < n:
        raise ValueError(f"resampling_importance needs 1 <= n <= max_n; got n={n}, max_n={max_n}")
    reference = parse_answer(codec, tokens, layout) if reference is None else reference
    longest = max(end for _, end in spans) + 1
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width={width} is shorter than the longest prompt ({longest}: the last step's end + 1)")
    if max_new_tokens is None:
        max_new_tokens = min(len(tokens) - spans[0][0] + 8, cfg.max_seq_len - width)
    forced = _teacher_forced(params, cfg, tokens, spans, temperature, layout.pad_id)
    posterior = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    kept, replaced, rewrites = [[] for _ in spans], [[] for _ in spans], [[] for _ in spans]
    for round_ in range(-(-max_n // n)):
        drawn = _round(params, cfg, codec, tokens, spans, forced,
                       key if round_ == 0 else jax.random.fold_in(key, round_), n, temperature, layout,
                       max_new_tokens, width)
        for k, (kept_k, replaced_k, rewrites_k) in enumerate(zip(*drawn)):
            kept[k] += kept_k
            replaced[k] += replaced_k
            rewrites[k] += rewrites_k
        if (round_ + 1) * n >= max_n or _settled(kept, replaced, posterior, confidence):
            break
    kl = np.asarray([_smoothed_kl(p, q) if q else math.nan for p, q in zip(kept, replaced)])
    return ResamplingImportance(kl, np.asarray([np.mean([a == reference for a in p]) for p in kept]),
                                np.asarray([np.mean([a == reference for a in q]) if q else math.nan
                                            for q in replaced]),
                                np.asarray([len(q) for q in replaced]), tuple(map(tuple, kept)),
                                tuple(map(tuple, replaced)), tuple(map(tuple, rewrites)))


POSTERIOR_DRAWS = 256
"""Posterior draws behind `resampling_importance`'s decision to draw another round."""


def _round(params: Params, cfg: SageConfig, codec: Codec, tokens: list[int], spans: list[tuple[int, int]],
           forced: tuple[Array, Array, Array], key: Array, n: int, temperature: float, layout: Layout,
           max_new_tokens: int, width: int) -> tuple[list[list], list[list], list[list]]:
    """One round of `resampling_importance`: per step, the answers of `n` rollouts with it kept, those of the
    rollouts with it replaced (none where the step has probability one), and the replacing rewrites; `forced`
    is `_teacher_forced`'s, shared by every round."""
    rewrite_key, decode_key = jax.random.split(key)
    positions, written = map(np.asarray, sample_rewrites(rewrite_key, *forced, n))
    rewrites = [[tuple(tokens[spans[k][0]:d]) + (t,) if d >= 0 else None for d, t in zip(positions[k], written[k])]
                for k in range(len(spans))]
    # A step of probability one has no rewrite: its rows decode the bare prefix (one batch shape) and are unused.
    prompts = [tokens[:spans[k][0]] + list(r) if r is not None else tokens[:spans[k][0]]
               for k in range(len(spans)) for r in rewrites[k]]
    prompts += [tokens[:end] for _, end in spans for _ in range(n)]
    padded, real = left_pad(prompts, width, layout.pad_id)
    rows = np.asarray(generate(params, cfg, padded, prompt_mask=real, max_new_tokens=max_new_tokens,
                               temperature=temperature, key=decode_key, eos_id=layout.eos_id).tokens)
    answers = [parse_answer(codec, prompt + row[width:].tolist(), layout) for prompt, row in zip(prompts, rows)]
    s = len(spans)
    replaced = [[answers[k * n + j] for j in range(n) if rewrites[k][j] is not None] for k in range(s)]
    kept = [answers[(s + k) * n:(s + k + 1) * n] for k in range(s)]
    return kept, replaced, [[r for r in rs if r is not None] for rs in rewrites]


def _settled(kept: list[list], replaced: list[list], rng: np.random.Generator, confidence: float) -> bool:
    """Whether the step of largest KL is the most important one with posterior probability `confidence`.

    The add-one smoothed KL is the KL between the posterior means of the two answer distributions under a
    uniform Dirichlet prior over the answers seen; the decision draws `POSTERIOR_DRAWS` pairs of distributions
    from those posteriors (`Dir(counts + 1)`) per step and counts how often the same step has the largest KL.
    A bootstrap of the answers would be overconfident here: an answer no rollout of sixteen reached never
    appears in a resample, though its probability may be a tenth. Trivially settled with under two steps
    that could be rewritten.
    """
    measured = [k for k, q in enumerate(replaced) if q]
    if len(measured) < 2:
        return True
    first = max(measured, key=lambda k: _smoothed_kl(kept[k], replaced[k]))
    kls = []
    for k in measured:
        support = sorted(set(kept[k]) | set(replaced[k]), key=lambda a: (a is None, str(a)))  # reproducible
        p_counts, q_counts = Counter(kept[k]), Counter(replaced[k])
        p = rng.dirichlet([p_counts[a] + 1.0 for a in support], POSTERIOR_DRAWS)   # [D, support]
        q = rng.dirichlet([q_counts[a] + 1.0 for a in support], POSTERIOR_DRAWS)
        kls.append((p * np.log(p / q)).sum(-1))                                       # [D]
    best = np.asarray(measured)[np.argmax(np.stack(kls), axis=0)]
    return float(np.mean(best == first)) >= confidence


def _teacher_forced(params: Params, cfg: SageConfig, tokens: list[int], spans: list[tuple[int, int]],
                    temperature: float, pad_id: int) -> tuple[Array, Array, Array]:
    """`sample_rewrites`'s inputs for one chain, `(log_probs [T', V], tokens [T'], span_mask [S, T'])`, from one
    teacher-forced forward; the chain is padded to a multiple of 32 tokens so that chains of similar length share
    one compiled forward (causal: the padding changes no earlier logit)."""
    length = min(-(-len(tokens) // 32) * 32, cfg.max_seq_len)
    padded = np.full((length,), pad_id, np.int32)
    padded[:len(tokens)] = tokens
    mask = np.zeros((len(spans), length), bool)
    for k, (start, end) in enumerate(spans):
        mask[k, start:min(end + 1, len(tokens))] = True
    return shifted_log_probs(params, cfg, jnp.asarray(padded), temperature), jnp.asarray(padded), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnames=("cfg",))
def shifted_log_probs(params: Params, cfg: SageConfig, tokens: Array, temperature: float) -> Array:
    """`[T, V]` log-probabilities of each position's token given the tokens before it (row 0, which has no
    context and is never read: zeros)."""
    logits = forward(params, tokens[None], cfg).logits[0] / temperature
    return jnp.concatenate([jnp.zeros_like(logits[:1]), jax.nn.log_softmax(logits[:-1], -1)])


def _smoothed_kl(p_samples: Sequence, q_samples: Sequence) -> float:
    """KL(p || q) of two sample sets' categorical distributions, add-one smoothed over their joint support."""
    support = set(p_samples) | set(q_samples)
    p_counts, q_counts = Counter(p_samples), Counter(q_samples)
    p_total, q_total = len(p_samples) + len(support), len(q_samples) + len(support)
    return float(sum((p_counts[a] + 1) / p_total * math.log(((p_counts[a] + 1) / p_total)
                                                            / ((q_counts[a] + 1) / q_total)) for a in support))
