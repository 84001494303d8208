"""Decision points (the paper's Algorithm S1): where a chain of thought rested on what, and where it could
have gone another way.

For one problem, given a significance map `[n, T]` (any attribution map in [0, 1]) and the forward logits:

- dependencies: the (step, source token) pairs whose significance is above `threshold` (0.3 by default);
- per step, the branching position: the step token whose prediction had the highest entropy (ties: the
  first); its top-k alternative next tokens with their probabilities (the top-k of the logits at the
  position before it); the chosen token's probability there, which is the confidence of the chosen path;
- on request (`with_continuations`), the greedy continuation each alternative leads to, by
  `sage_jax.generate` from the prefix up to the branching position plus the alternative, and whether the
  final answer (`sage_jax.layout.Layout.answer_span`) changes.

`branches` is the array core (pure, `jit`/`vmap`-able); `decision_points` turns it into plain Python
records for reports.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sage_jax.config import SageConfig
from sage_jax.decode import generate
from sage_jax.interpret.steps import token_entropy
from sage_jax.layout import SAGE, Layout, Steps
from sage_jax.model import Params


@struct.dataclass
class Branches:
    """The branching point of every step (arrays; a leading batch axis when `vmap`ped).

    Attributes:
      position: `[n]` int32, the branching token of each step (its index in the sequence).
      entropy: `[n]` entropy (nats) of the distribution that chose it.
      chosen: `[n]` the token chosen there.
      confidence: `[n]` the chosen token's probability.
      top_ids: `[n, k]` the `k` most likely tokens there, most likely first.
      top_probs: `[n, k]` their probabilities.
    """

    position: jax.Array
    entropy: jax.Array
    chosen: jax.Array
    confidence: jax.Array
    top_ids: jax.Array
    top_probs: jax.Array


def branches(logits: jax.Array, tokens: jax.Array, steps: Steps, *, top_k: int = 5) -> Branches:
    """Branching positions, alternatives and confidences of every step of one problem.

    Args:
      logits: `[T, V]` forward logits.
      tokens: `[T]` token ids.
      steps: the problem's `Steps`.
      top_k: how many alternatives.

    An empty padding step (from `stack_steps`) gets position 0 and the values of position 0; ignore it.
    """
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must lie in [1, vocab_size={logits.shape[-1]}], got {top_k}")
    entropy = token_entropy(logits)  # [T]
    masked = jnp.where(steps.mask, entropy[None, :], -jnp.inf)
    position = jnp.argmax(masked, axis=-1).astype(jnp.int32)  # [n]
    probs = jax.nn.softmax(logits[jnp.maximum(position - 1, 0)].astype(jnp.float32), axis=-1)  # [n, V]
    top_probs, top_ids = jax.lax.top_k(probs, top_k)
    chosen = tokens[position]
    confidence = jnp.take_along_axis(probs, chosen[:, None], axis=-1)[:, 0]
    return Branches(position, entropy[position], chosen, confidence, top_ids, top_probs)


@dataclasses.dataclass(frozen=True)
class Alternative:
    """One alternative next token at a branching position.

    Attributes:
      token: its id.
      prob: its probability.
      continuation: the greedy tokens generated after it (end token included), when asked for.
      answer: the final answer those lead to (`Layout.answer_span`), or `None` if none.
      answer_changed: whether that differs from the original chain's answer, when asked for.
    """

    token: int
    prob: float
    continuation: Optional[tuple[int, ...]] = None
    answer: Optional[tuple[int, ...]] = None
    answer_changed: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class StepDecision:
    """What Algorithm S1 reports for one step.

    Attributes:
      step: the step index.
      position: the branching token's position in the sequence.
      entropy: the entropy at that position.
      chosen: the token the chain chose there.
      confidence: its probability (the confidence of the chosen path).
      alternatives: the top-k next tokens there, most likely first.
      dependencies: `(source position, significance)` above the threshold, most significant first.
    """

    step: int
    position: int
    entropy: float
    chosen: int
    confidence: float
    alternatives: tuple[Alternative, ...]
    dependencies: tuple[tuple[int, float], ...]


@dataclasses.dataclass(frozen=True)
class Decisions:
    """Algorithm S1's result for one problem.

    Attributes:
      points: `(step, source position, significance)` for every pair above the threshold, by step then score.
      steps: one `StepDecision` per step.
      threshold: the significance threshold used.
      answer: the original chain's final answer tokens, or `None` when it has no `<answer>`.
    """

    points: tuple[tuple[int, int, float], ...]
    steps: tuple[StepDecision, ...]
    threshold: float
    answer: Optional[tuple[int, ...]]


def check_threshold(threshold: float) -> float:
    """Returns `threshold` as a float, or raises when it is not a number in [0, 1]."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (significance is normalised), got {threshold!r}")
    return value


def decision_points(score: jax.Array, logits: jax.Array, tokens: jax.Array, steps: Steps, *,
                    threshold: float = 0.3, top_k: int = 5, layout: Layout = SAGE) -> Decisions:
    """Algorithm S1 on one problem.

    Args:
      score: `[n, T]` significance in [0, 1] (e.g. `Significance.score`).
      logits: `[T, V]` forward logits.
      tokens: `[T]` token ids.
      steps: the problem's `Steps`.
      threshold: a pair is a decision point when its significance is strictly above this.
      top_k: alternatives per step.
      layout: where the chain's answer is (`Layout.answer_span`).
    """
    threshold = check_threshold(threshold)
    score = np.asarray(score, np.float64)
    if score.shape != tuple(steps.mask.shape):
        raise ValueError(f"score has shape {score.shape}; expected [n_steps, T] = {tuple(steps.mask.shape)}")
    found = jax.device_get(branches(jnp.asarray(logits), jnp.asarray(tokens), steps, top_k=top_k))
    records, points = [], []
    for i in range(steps.n_steps):
        above = np.flatnonzero(score[i] > threshold)
        deps = tuple(sorted(((int(j), float(score[i, j])) for j in above), key=lambda d: -d[1]))
        points.extend((i, j, s) for j, s in deps)
        alternatives = tuple(Alternative(int(t), float(p)) for t, p in zip(found.top_ids[i], found.top_probs[i]))
        records.append(StepDecision(step=i, position=int(found.position[i]), entropy=float(found.entropy[i]),
                                    chosen=int(found.chosen[i]), confidence=float(found.confidence[i]),
                                    alternatives=alternatives, dependencies=deps))
    return Decisions(tuple(points), tuple(records), threshold, _answer(np.asarray(tokens), layout))


def _answer(tokens, layout: Layout) -> Optional[tuple[int, ...]]:
    """The answer's token ids (`Layout.answer_span`), or None without an answer marker."""
    tokens = [int(t) for t in tokens]
    span = layout.answer_span(tokens)
    return None if span is None else tuple(tokens[span[0]:span[1]])


def with_continuations(decisions: Decisions, params: Params, cfg: SageConfig, tokens, *,
                       max_new_tokens: int = 32, layout: Layout = SAGE) -> Decisions:
    """Adds to every alternative the greedy continuation it leads to and whether the answer changes.

    All alternatives of all steps run as one batch of left-padded prompts through `sage_jax.generate`.

    Args:
      decisions: from `decision_points`.
      params, cfg: the model.
      tokens: `[T]` the problem's tokens (the prefix of each prompt).
      max_new_tokens: tokens to generate at most per alternative (capped by the context left).
      layout: where a continuation's answer is (`Layout.answer_span`).
    """
    tokens = [int(t) for t in np.asarray(tokens)]
    prompts = [tokens[:d.position] + [a.token] for d in decisions.steps for a in d.alternatives]
    room = cfg.max_seq_len - max(len(p) for p in prompts)
    if room < 1:
        raise ValueError(f"no room to continue: a prompt of {max(len(p) for p in prompts)} tokens fills the "
                         f"context cfg.max_seq_len={cfg.max_seq_len}")
    out = generate(params, cfg, prompts, max_new_tokens=min(max_new_tokens, room))
    width = out.tokens.shape[1] - min(max_new_tokens, room)
    generated = np.asarray(out.tokens[:, width:])
    counts = np.asarray(out.num_generated)
    rows = iter(range(len(prompts)))
    steps = []
    for d in decisions.steps:
        alternatives = []
        for a in d.alternatives:
            row = next(rows)
            continuation = tuple(int(t) for t in generated[row, :counts[row]])
            answer = _answer(list(prompts[row]) + list(continuation), layout)
            alternatives.append(dataclasses.replace(a, continuation=continuation, answer=answer,
                                                    answer_changed=answer != decisions.answer))
        steps.append(dataclasses.replace(d, alternatives=tuple(alternatives)))
    return dataclasses.replace(decisions, steps=tuple(steps))
