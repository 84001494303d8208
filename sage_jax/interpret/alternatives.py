"""Which step the answer rests on, read from the model's own alternatives to each step.

The token map says what a step computes with; it does not say which step the chain's answer rests on. Read
at step granularity (`significance.step_importance`: the share of the later rows' mass on each step) it
names the step that writes the answer in almost every chain, because the answer copies it, whatever the
earlier steps do (WORKSPACE, issue 13, "Session 16: what the step-level number measures"). Whether the answer
rests on a step is a counterfactual question: had the model written that step another way, would the chain
still have reached its answer? A step the later steps recompute from the question, or one whose other
spellings keep its value, matters little however much its tokens are read.

The analysis asks it of the model's own alternatives. A step's alternatives are the `m` most probable ways the
model could have left it: the first position `d` where a rewrite departs from the step and the token
`t != tokens[d]` written there, weighted by `P(tokens[start:d]) p(t | tokens[:d])` (the distribution
`counterfactual.sample_rewrites` samples from, enumerated from its most probable members). Each alternative is
continued `samples` times by sampling from the model, and the step as written `kept_samples` times; a
degree is the share of those continuations that reach the chain's answer. The step's importance is how much
less likely the answer becomes: the step's own degree minus the weighted mean of its alternatives'.

It is the accuracy drop that resampling importance measures (`counterfactual.resampling_importance`), with
the rewrites enumerated and weighted instead of sampled, so its agreement with that truth is partly by
construction; step suppression (edge cuts) is the independent check. Greedy continuations (sessions 17-18)
were cheaper and deterministic but recover from a rewrite far less often than the model's samples do (step
0's rewrites reach the answer in 20-40% of sampled rollouts, 0-5% greedily): on the demo's model they named
the step a 128-rollout truth names in 0.72 of 180 chains (0.70 by its accuracy drop), where naming the last
step always scores 0.75 (0.83); sampled, 0.77 (0.82), level with that guess (WORKSPACE, issue 13, "Session
19").
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.decode import generate, left_pad
from sage_jax.interpret.counterfactual import shifted_log_probs
from sage_jax.layout import SAGE, Codec, Layout, parse_answer
from sage_jax.model import Params

Array = jax.Array


class AlternativeImportance(NamedTuple):
    """How much the answer rests on each step (module docstring; one problem; numpy).

    Attributes:
      importance: `[S]` `kept - replaced`; NaN where the step has no alternative (probability one).
      kept: `[S]` the share of the sampled continuations after step `k` as written that reach the answer.
      replaced: `[S]` the alternatives' weighted mean share.
      weights: `[S, m]` each alternative's probability (0 where a step has fewer than `m`).
      answers: per step, per alternative, its continuations' answers (None: none parsed).
      kept_answers: per step, the answers of its continuations as written.
    """

    importance: np.ndarray
    kept: np.ndarray
    replaced: np.ndarray
    weights: np.ndarray
    answers: tuple[tuple[tuple[Optional[str], ...], ...], ...]
    kept_answers: tuple[tuple[Optional[str], ...], ...]


def alternative_importance(params: Params, cfg: SageConfig, codec: Codec, tokens: Sequence[int],
                           spans: Sequence[tuple[int, int]], *, key: Array, alternatives: int = 16,
                           samples: int = 4, kept_samples: Optional[int] = None, reference: Optional[str] = None,
                           layout: Layout = SAGE, max_new_tokens: Optional[int] = None, width: Optional[int] = None
                           ) -> AlternativeImportance:
    """Each step's importance for the answer from its `alternatives` most probable rewrites (module docstring).

    Two model calls: one teacher-forced forward of the chain and one batched sampled decode (temperature 1) of
    `S * (kept_samples + m * samples)` rows.

    Args:
      params, cfg: the model.
      codec: decodes the answers (`layout.parse_answer`).
      tokens: `[T]` the chain, through its answer and the token that ends it.
      spans: `(start, end)` token span of each step (`Layout.step_spans`); the token at `end` ends the step.
      key: PRNG key of the continuations (keep it apart from a truth's: shared draws would agree by chance).
      alternatives: `m`, the rewrites followed per step, at least 1.
      samples: continuations sampled per alternative, at least 1.
      kept_samples: continuations sampled after each step as written; by default `m * samples // 2` (at least
        1), so that both sides of the difference are estimated from a comparable number of rollouts.
      reference: the right answer; by default the chain's own.
      layout: where the answer is.
      max_new_tokens: continuation length; by default enough to rewrite the chain from its first step plus 8.
      width: left-pad every prompt to this many tokens (at least the longest), so that chains of one length
        share one compiled decode; by default the longest prompt.
    """
    tokens = [int(t) for t in tokens]
    spans = [(int(a), int(b)) for a, b in spans]
    if not spans:
        raise ValueError("alternative_importance needs at least one step span")
    if alternatives < 1 or samples < 1:
        raise ValueError(f"alternatives and samples must be >= 1, got alternatives={alternatives}, samples={samples}")
    kept_samples = max(1, alternatives * samples // 2) if kept_samples is None else kept_samples
    if kept_samples < 1:
        raise ValueError(f"kept_samples must be >= 1, got {kept_samples}")
    if spans[-1][1] >= len(tokens) - 1:
        raise ValueError(f"the last step ends at token {spans[-1][1]} of {len(tokens)}: pass the chain through "
                         "its answer")
    reference = parse_answer(codec, tokens, layout) if reference is None else reference
    length = min(-(-len(tokens) // 32) * 32, cfg.max_seq_len)  # similar lengths share one compiled forward
    log_probs = np.asarray(shifted_log_probs(params, cfg, jnp.asarray(_pad([tokens], length, layout.pad_id)[0]),
                                             1.0))                                            # [T', V]
    chosen = [most_probable_rewrites(log_probs, tokens, span, alternatives) for span in spans]
    written = [tokens[:end + 1] for _, end in spans for _ in range(kept_samples)]
    prompts = [tokens[:d] + [t] for rewrites in chosen for _, d, t in rewrites for _ in range(samples)]
    longest = max(len(p) for p in written + prompts)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width={width} is shorter than the longest prompt ({longest})")
    if max_new_tokens is None:
        max_new_tokens = min(len(tokens) - spans[0][0] + 8, cfg.max_seq_len - width)
    padded, real = left_pad(written + prompts, width, layout.pad_id)
    rows = np.asarray(generate(params, cfg, padded, prompt_mask=real, max_new_tokens=max_new_tokens,
                               temperature=1.0, key=key, eos_id=layout.eos_id).tokens)[:, width:].tolist()
    answers = [parse_answer(codec, prompt + row, layout) for prompt, row in zip(written + prompts, rows)]
    s, at = len(spans), len(written)
    kept_answers = tuple(tuple(answers[k * kept_samples:(k + 1) * kept_samples]) for k in range(s))
    kept = np.asarray([np.mean([a == reference for a in got]) for got in kept_answers])
    weights = np.zeros((s, alternatives))
    replaced = np.full((s,), np.nan)
    per_step = []
    for k, rewrites in enumerate(chosen):
        w = np.exp(np.array([lw for lw, _, _ in rewrites]))
        weights[k, :len(w)] = w
        got = tuple(tuple(answers[at + j * samples:at + (j + 1) * samples]) for j in range(len(w)))
        if len(w):
            reach = np.asarray([np.mean([a == reference for a in each]) for each in got])
            replaced[k] = float(np.sum(w * reach) / np.sum(w))
        per_step.append(got)
        at += len(w) * samples
    return AlternativeImportance(kept - replaced, kept, replaced, weights, tuple(per_step), kept_answers)


def most_probable_rewrites(log_probs: np.ndarray, tokens: Sequence[int], span: tuple[int, int],
                           m: int) -> list[tuple[float, int, int]]:
    """The `m` most probable first departures from a span, most probable first.

    Args:
      log_probs: `[T, V]` log-probability of each position's token given the ones before it
        (`counterfactual.shifted_log_probs`).
      tokens: `[T]` the chain.
      span: `(start, end)`, the step and the token that ends it (a rewrite may end the step elsewhere).
      m: how many.

    Returns:
      `(log weight, position d, token t)` with weight `P(tokens[start:d]) p(t | tokens[:d])`, `t != tokens[d]`
      (`counterfactual.sample_rewrites` draws from these, normalised); fewer than `m` where the model gives
      the others probability 0, none for a span of probability one.
    """
    start, end = span
    own = log_probs[np.arange(len(tokens)), np.asarray(tokens)]
    positions = np.arange(start, end + 1)
    before = np.concatenate([[0.0], np.cumsum(own[start:end])])                             # [L]
    first = before[:, None] + log_probs[positions]                                            # [L, V]
    first[np.arange(len(positions)), [tokens[p] for p in positions]] = -np.inf
    flat = first.ravel()
    top = np.argsort(-flat, kind="stable")[:m]
    return [(float(flat[i]), int(positions[i // first.shape[1]]), int(i % first.shape[1]))
            for i in top if np.isfinite(flat[i])]


def _pad(rows: list[list[int]], length: int, pad_id: int) -> np.ndarray:
    """`[R, length]` the rows right-padded (causal: the padding changes no earlier log-probability)."""
    padded = np.full((len(rows), length), pad_id, np.int32)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
    return padded
