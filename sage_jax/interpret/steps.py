"""Reasoning steps: which tokens each step owns, and the per-step loss `L_i` and entropy `H_i`.

A problem is laid out as in `sage_jax.special`:

    <bos> <question> q ... q <step> s1 ... <step> s2 ... <answer> a ... <eos>

Ownership (the convention every analysis here uses): step `i` owns the tokens *after* its `<step>` marker
up to, not including, the next `<step>`, `<answer>`, `<eos>`, `<explain>` or `<pad>` token, or the end of
the sequence. Markers belong to no step. A step's tokens are scored by the logits of the position just
before each of them (teacher forcing), so the queries that *produce* step `i` are its tokens shifted left
by one: the `<step>` marker predicts the first token of the step. `Steps.queries` gives that mask; the
attention factor of significance and the decision points read those queries, as `sage_jax.generate`'s
tracked attention does.

Shapes: `n` steps, `T` tokens, `V` vocabulary. `Steps` is a pytree of arrays, so a batch of problems is a
`Steps` with a leading batch axis (see `stack_steps`; steps beyond a problem's count are empty rows whose
loss, entropy and significance are 0), and every function below composes with `jax.vmap` and `jax.jit`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sage_jax import special

Splitter = Callable[[np.ndarray], Sequence[tuple[int, int]]]
"""Maps `[T]` token ids (numpy) to the `(start, end)` spans (end exclusive) of the steps, in order."""

STEP_END_IDS = (special.STEP, special.ANSWER, special.EOS, special.EXPLAIN, special.PAD)
"""Tokens that end a step's span."""


@struct.dataclass
class Steps:
    """The token spans of the steps of one problem (or of a batch, with a leading batch axis).

    Attributes:
      mask: `[n, T]` bool, the tokens step `i` owns in the full sequence.
      starts: `[n]` int32, the first token of each step.
      ends: `[n]` int32, one past the last token of each step (`starts == ends` for an empty padding row).
    """

    mask: jax.Array
    starts: jax.Array
    ends: jax.Array

    @property
    def n_steps(self) -> int:
        return self.mask.shape[-2]

    @property
    def queries(self) -> jax.Array:
        """`[n, T]` bool: the positions whose logits predict step `i`'s tokens (`mask` shifted left by one)."""
        shifted = jnp.zeros_like(self.mask)
        return shifted.at[..., :-1].set(self.mask[..., 1:])

    @property
    def sources(self) -> jax.Array:
        """`[n, T]` bool: the tokens strictly before step `i`, the candidate sources it may rest on."""
        t = jnp.arange(self.mask.shape[-1])
        return t < self.starts[..., None]


def from_spans(spans: Sequence[tuple[int, int]], length: int) -> Steps:
    """Builds `Steps` from `(start, end)` spans over a sequence of `length` tokens.

    Raises:
      ValueError: a span is empty, falls outside `[0, length)`, starts at token 0 (no position predicts it),
        or overlaps the previous span.
    """
    spans = [(int(s), int(e)) for s, e in spans]
    if not spans:
        raise ValueError("no steps: the rationale is empty (expected at least one <step> span)")
    previous_end = 0
    for i, (start, end) in enumerate(spans):
        if not 0 <= start < end <= length:
            raise ValueError(f"step {i} span [{start}, {end}) lies outside the sequence [0, {length}) "
                             "or is empty")
        if start == 0:
            raise ValueError(f"step {i} starts at token 0, which no position predicts; a step needs a token "
                             "before it (the <step> marker)")
        if start < previous_end:
            raise ValueError(f"step {i} span [{start}, {end}) overlaps step {i - 1}, which ends at {previous_end}")
        previous_end = end
    starts = np.asarray([s for s, _ in spans], np.int32)
    ends = np.asarray([e for _, e in spans], np.int32)
    t = np.arange(length)
    mask = (t[None, :] >= starts[:, None]) & (t[None, :] < ends[:, None])
    return Steps(mask=jnp.asarray(mask), starts=jnp.asarray(starts), ends=jnp.asarray(ends))


def marker_spans(tokens: np.ndarray, *, skip_empty: bool = False) -> list[tuple[int, int]]:
    """The default splitter: one span after each `<step>` marker, ending at the next end token.

    Args:
      tokens: `[T]` token ids.
      skip_empty: drop a marker followed directly by an end token instead of raising (for generated chains,
        where an empty step is the model's output rather than a malformed input).

    Raises:
      ValueError: a `<step>` marker is followed directly by an end token (an empty step), unless `skip_empty`.
    """
    tokens = np.asarray(tokens)
    spans = []
    for marker in np.flatnonzero(tokens == special.STEP):
        start = int(marker) + 1
        end = start
        while end < len(tokens) and int(tokens[end]) not in STEP_END_IDS:
            end += 1
        if end > start:
            spans.append((start, end))
        elif not skip_empty:
            raise ValueError(f"empty step: the <step> marker at position {marker} is followed directly by "
                             f"{_token_name(tokens, end)}")
    return spans


def find_steps(tokens, *, splitter: Optional[Splitter] = None) -> Steps:
    """Splits one laid-out problem `[T]` into steps.

    Args:
      tokens: `[T]` token ids (concrete: the number of steps is a shape).
      splitter: maps the tokens to step spans; defaults to `marker_spans` (the `<step>` markers).

    Raises:
      ValueError: the tokens are not one sequence, there is no step, or a span is invalid.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"find_steps takes one problem's [T] tokens, got shape {tokens.shape}; "
                         "call it per problem and combine with stack_steps")
    spans = (splitter or marker_spans)(tokens)
    if not len(spans):
        raise ValueError("no steps found: the sequence has no <step> marker (empty rationale)")
    return from_spans(spans, len(tokens))


def stack_steps(steps: Sequence[Steps], n_steps: Optional[int] = None) -> Steps:
    """Stacks the steps of several problems of equal length `T` into `[N, n, T]`, padding with empty steps."""
    lengths = {s.mask.shape[-1] for s in steps}
    if len(lengths) != 1:
        raise ValueError(f"stack_steps needs problems of one length T (pad the tokens first), got {sorted(lengths)}")
    n = max(s.n_steps for s in steps) if n_steps is None else n_steps
    if any(s.n_steps > n for s in steps):
        raise ValueError(f"n_steps={n} is smaller than a problem's {max(s.n_steps for s in steps)} steps")

    def pad(s: Steps) -> Steps:
        extra = n - s.n_steps
        last = s.ends[-1]
        return Steps(mask=jnp.pad(s.mask, ((0, extra), (0, 0))),
                     starts=jnp.concatenate([s.starts, jnp.full((extra,), last, jnp.int32)]),
                     ends=jnp.concatenate([s.ends, jnp.full((extra,), last, jnp.int32)]))

    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[pad(s) for s in steps])


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`[...]` negative log-likelihood `logsumexp(logits) - logits[target]` of each target under the logits at
    its own position, in float32 at least: the package's one NLL. The training losses pass next-token targets
    (`sage_jax.train.losses.shift_targets`); the analyses score a sequence's own tokens with `sequence_nll`.

    Args:
      logits: `[..., V]` logits.
      targets: `[...]` ids in `[0, V)`.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def sequence_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """`[T]` negative log-likelihood of each token under the logits of the position before it (0 at token 0).

    Args:
      logits: `[T, V]` next-token logits.
      tokens: `[T]` token ids.
    """
    nll = token_nll(logits[:-1], tokens[1:])
    return jnp.concatenate([jnp.zeros((1,), nll.dtype), nll])


def token_entropy(logits: jax.Array) -> jax.Array:
    """`[T]` entropy (nats) of the distribution each token was predicted from (0 at token 0).

    Args:
      logits: `[T, V]` next-token logits.
    """
    logp = jax.nn.log_softmax(logits[:-1].astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.concatenate([jnp.zeros((1,), entropy.dtype), entropy])


def step_losses(logits: jax.Array, tokens: jax.Array, steps: Steps) -> jax.Array:
    """`[n]` `L_i = -log P(s_i | s_<i, x)`: the summed token NLL of each step's tokens."""
    return steps.mask.astype(logits.dtype) @ sequence_nll(logits, tokens)


def step_entropies(logits: jax.Array, steps: Steps) -> jax.Array:
    """`[n]` `H_i`: the mean predictive entropy over each step's tokens (0 for an empty padding step)."""
    weights = steps.mask.astype(logits.dtype)
    count = jnp.sum(weights, axis=-1)
    return (weights @ token_entropy(logits)) / jnp.maximum(count, 1)


def _token_name(tokens: np.ndarray, index: int) -> str:
    if index >= len(tokens):
        return "the end of the sequence"
    token = int(tokens[index])
    return f"{special.NAMES.get(token, f'token {token}')} at position {index}"
