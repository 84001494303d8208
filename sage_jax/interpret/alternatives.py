"""Which step the answer rests on, read from the model's own alternatives to each step.

The token map says what a step computes with; it does not say which step the chain's answer rests on. Read
at step granularity (`significance.step_importance`: the share of the later rows' mass on each step) it
names the step that writes the answer in almost every chain, because the answer copies it, whatever the
earlier steps do (WORKSPACE, issue 13, "Session 16: what the step-level number measures"). Whether the answer
rests on a step is a counterfactual question: had the model written that step another way, would the chain
still have reached its answer? A step the later steps recompute from the question, or one whose other
spellings keep its value, matters little however much its tokens are read.

The analysis asks it of the model's own alternatives, deterministically. A step's alternatives are the `m`
most probable ways the model could have left it: the first position `d` where a rewrite departs from the step
and the token `t != tokens[d]` written there, weighted by `P(tokens[start:d]) p(t | tokens[:d])` (the
distribution `counterfactual.sample_rewrites` samples from, enumerated from its most probable members). Each
alternative, and the step as written, is continued greedily (an alternative first to the token that ends the
step). How surely the chain still reaches its answer from there, its degree, is read one of two ways:

- the greedy continuation writes the chain's rest as written: the model would go on as the chain does, and
  the probability it gives that rest says how surely its samples stay on it (on the SAGE model's chains this
  is nearly every step, and the probability falls with the length of chain still to write, as the sampled
  rollouts' accuracy does);
- it takes another path: the probability of the chain's wording says little about the answer (a pretrained
  model given a free-text rationale gives it e^-13 to e^-27), so the degree is 1 when that path reaches the
  chain's answer, else the probability of the rest as written once the rewritten step is finished.

The step's importance is how much less likely the answer becomes: the step's own degree minus the weighted
mean of its alternatives'. It is the accuracy drop that resampling importance measures by sampling
(`counterfactual.resampling_importance`), estimated from the model's probabilities and greedy decodes instead
of rollouts, so its agreement with that truth is partly by construction; step suppression (edge cuts) is the
independent check. The two readings were chosen against that truth at 16 and 64 rollouts (WORKSPACE, issue
13, "Session 18"): the probability alone underflows on a pretrained model's chains, and 1 for every
continuation that reaches the answer loses what the probability carries on the SAGE model.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.decode import generate, left_pad
from sage_jax.interpret.counterfactual import shifted_log_probs
from sage_jax.interpret.steps import sequence_nll
from sage_jax.layout import SAGE, Codec, Layout, parse_answer
from sage_jax.model import Params, forward

Array = jax.Array


class AlternativeImportance(NamedTuple):
    """How much the answer rests on each step (module docstring; one problem; numpy).

    Attributes:
      importance: `[S]` `kept - replaced`; NaN where the step has no alternative (probability one).
      kept: `[S]` the degree of step `k` as written (module docstring): 1 when its greedy continuation reaches
        the answer by another path than the chain's, else the probability of the chain's rest after it.
      replaced: `[S]` the alternatives' weighted mean degree.
      weights: `[S, m]` each alternative's probability (0 where a step has fewer than `m`).
      answers: per step, the greedy continuation's answer after each alternative (None: none parsed).
      kept_answers: `[S]` the greedy continuation's answer after each step as written.
    """

    importance: np.ndarray
    kept: np.ndarray
    replaced: np.ndarray
    weights: np.ndarray
    answers: tuple[tuple[Optional[str], ...], ...]
    kept_answers: tuple[Optional[str], ...]


def alternative_importance(params: Params, cfg: SageConfig, codec: Codec, tokens: Sequence[int],
                           spans: Sequence[tuple[int, int]], *, alternatives: int = 16,
                           reference: Optional[str] = None, layout: Layout = SAGE,
                           max_new_tokens: Optional[int] = None, width: Optional[int] = None
                           ) -> AlternativeImportance:
    """Each step's importance for the answer from its `alternatives` most probable rewrites (module docstring).

    Three model calls: one teacher-forced forward of the chain, one batched greedy decode of the `S` steps as
    written and the `S * m` alternatives, and one batched forward that scores the chain's rest after each
    finished rewrite.

    Args:
      params, cfg: the model.
      codec: decodes the answers (`layout.parse_answer`).
      tokens: `[T]` the chain, through its answer and the token that ends it.
      spans: `(start, end)` token span of each step (`Layout.step_spans`); the token at `end` ends the step.
      alternatives: `m`, the rewrites followed per step, at least 1.
      reference: the right answer; by default the chain's own.
      layout: where the answer is.
      max_new_tokens: greedy continuation length; by default enough to rewrite the chain from its first step
        plus 8.
      width: left-pad every prompt to this many tokens (at least the longest), so that chains of one length
        share one compiled decode; by default the longest prompt.
    """
    tokens = [int(t) for t in tokens]
    spans = [(int(a), int(b)) for a, b in spans]
    if not spans:
        raise ValueError("alternative_importance needs at least one step span")
    if alternatives < 1:
        raise ValueError(f"alternatives must be >= 1, got {alternatives}")
    if spans[-1][1] >= len(tokens) - 1:
        raise ValueError(f"the last step ends at token {spans[-1][1]} of {len(tokens)}: pass the chain through "
                         "its answer")
    reference = parse_answer(codec, tokens, layout) if reference is None else reference
    length = min(-(-len(tokens) // 32) * 32, cfg.max_seq_len)  # similar lengths share one compiled forward
    log_probs = np.asarray(shifted_log_probs(params, cfg, jnp.asarray(_pad([tokens], length, layout.pad_id)[0]),
                                             1.0))                                            # [T', V]
    own = log_probs[np.arange(len(tokens)), tokens].astype(np.float64)                        # [T]
    chosen = [most_probable_rewrites(log_probs, tokens, span, alternatives) for span in spans]
    written = [tokens[:end + 1] for _, end in spans]
    prompts = [tokens[:d] + [t] for rewrites in chosen for _, d, t in rewrites]
    longest = max(len(p) for p in written + prompts)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width={width} is shorter than the longest prompt ({longest})")
    if max_new_tokens is None:
        max_new_tokens = min(len(tokens) - spans[0][0] + 8, cfg.max_seq_len - width)
    padded, real = left_pad(written + prompts, width, layout.pad_id)
    rows = np.asarray(generate(params, cfg, padded, prompt_mask=real, max_new_tokens=max_new_tokens,
                               eos_id=layout.eos_id).tokens)[:, width:].tolist()
    answers = [parse_answer(codec, prompt + row, layout) for prompt, row in zip(written + prompts, rows)]
    s = len(spans)
    (kept_rows, rows), (kept_answers, answers) = (rows[:s], rows[s:]), (answers[:s], answers[s:])
    rests = [tokens[end + 1:] for _, end in spans]
    kept = _degree([a == reference for a in kept_answers], [row[:len(r)] == r for row, r in zip(kept_rows, rests)],
                   [np.exp(own[end + 1:].sum()) for _, end in spans])
    owners = [k for k, rewrites in enumerate(chosen) for _ in rewrites]
    finished = [_finish_step(prompt, row, tokens[spans[k][1]]) for k, prompt, row in zip(owners, prompts, rows)]
    follows = [f is not None and (prompt + row)[len(f):len(f) + len(rests[k])] == rests[k]
               for k, prompt, row, f in zip(owners, prompts, rows, finished)]
    degree = _degree([a == reference for a in answers], follows,
                     _rest_probabilities(params, cfg, finished, [rests[k] for k in owners], layout.pad_id))
    weights = np.zeros((s, alternatives))
    replaced = np.full((s,), np.nan)
    per_step, at = [], 0
    for k, rewrites in enumerate(chosen):
        w = np.exp(np.array([lw for lw, _, _ in rewrites]))
        weights[k, :len(w)] = w
        if len(w):
            replaced[k] = float(np.sum(w * degree[at:at + len(w)]) / np.sum(w))
        per_step.append(tuple(answers[at:at + len(w)]))
        at += len(w)
    return AlternativeImportance(kept - replaced, kept, replaced, weights, tuple(per_step), tuple(kept_answers))


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


def _degree(reached: Sequence[bool], follows: Sequence[bool], rest: Sequence[float]) -> np.ndarray:
    """`[R]` how surely each continuation reaches the answer (module docstring): the rest's probability where
    the greedy continuation writes the rest as written, else 1 where it reaches the answer, else that
    probability."""
    rest = np.asarray(rest, float).reshape(-1)
    return np.where(np.asarray(follows, bool), rest, np.maximum(np.asarray(reached, float), rest))


def _finish_step(prompt: list[int], continuation: list[int], end_token: int) -> Optional[list[int]]:
    """The rewritten step through the token that ends it (the prompt alone when it wrote that token);
    None when the greedy continuation never ends it."""
    if prompt[-1] == end_token:
        return prompt
    if end_token not in continuation:
        return None
    return prompt + continuation[:continuation.index(end_token) + 1]


def _rest_probabilities(params: Params, cfg: SageConfig, prefixes: list[Optional[list[int]]],
                        rests: list[list[int]], pad_id: int, batch: int = 16) -> np.ndarray:
    """`[R]` probability of each `rest` written after its prefix (0 without a prefix or past the context),
    `batch` rows at a time (a pretrained vocabulary's `[L, V]` logits are large)."""
    rows = [p + r if p is not None and len(p + r) <= cfg.max_seq_len else None for p, r in zip(prefixes, rests)]
    scored = [row for row in rows if row is not None]
    out = np.zeros((len(rows),))
    if not scored:
        return out
    length = min(-(-max(len(r) for r in scored) // 32) * 32, cfg.max_seq_len)
    chunks = []
    for i in range(0, len(scored), batch):
        chunk = scored[i:i + batch]
        chunk = chunk + [[pad_id]] * (batch - len(chunk))  # every call one shape: one compile
        chunks.append(np.asarray(_own_log_probs(params, cfg, jnp.asarray(_pad(chunk, length, pad_id)))))
    own = np.concatenate(chunks)
    at = 0
    for i, (prefix, row) in enumerate(zip(prefixes, rows)):
        if row is not None:
            out[i] = np.exp(own[at, len(prefix):len(row)].sum())
            at += 1
    return out


def _pad(rows: list[list[int]], length: int, pad_id: int) -> np.ndarray:
    """`[R, length]` the rows right-padded (causal: the padding changes no earlier log-probability)."""
    padded = np.full((len(rows), length), pad_id, np.int32)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
    return padded


@functools.partial(jax.jit, static_argnames=("cfg",))
def _own_log_probs(params: Params, cfg: SageConfig, tokens: Array) -> Array:
    """`[B, L]` log-probability of each token given the ones before it (position 0, which has none: 0)."""
    return -jax.vmap(sequence_nll)(forward(params, tokens, cfg).logits, tokens)
