"""The training objective: `L = L_reasoning + lambda1 * L_explanation + lambda2 * L_consistency`
(+ `lambda_meta * L_meta` for the meta-cognitive head), each term a masked token mean.

Conventions:

- A batch carries `tokens [B, T]` and `segments [B, T]`: the `sage_jax.layout.Segment` id of every token.
  `Segment.PAD` marks padding.
- Alignment. The model reads all `T` tokens; position `t` predicts token `t + 1`, so `targets[:, t] =
  tokens[:, t + 1]` and a loss term selects position `t` by the segment of its *target*. The last position
  has no target (`Segment.PAD`). Keeping length `T` (instead of `T - 1`) keeps the shapes the data produced.
- A token belongs to the segment it is predicted as part of: `<step>` markers to the rationale, `<answer>`
  and the answer's `<eos>` to the answer, `<explain>` and the explanation's `<eos>` to the explanation. So
  `L_reasoning` (rationale and answer targets) never teaches the model to start an explanation.
- Masked means divide by `max(count, 1)`: an empty mask gives 0 and a zero gradient, never NaN. Masked
  entries are selected away with `where` (not multiplied by 0), so a non-finite value there cannot reach
  the loss value (its gradient still can: `0 * NaN` is NaN, and a NaN anywhere in the forward should stop
  a run anyway).
- `normalizer`: every mean accepts the denominator explicitly, so that gradient accumulation can divide
  each microbatch's sum by the token count of the *whole* batch and reproduce the full-batch loss.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import optax

from sage_jax.interpret.steps import token_nll
from sage_jax.layout import Segment

TERMS = ("reasoning", "explanation", "consistency", "meta")

Scalar = Union[float, jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (static). A weight of exactly 0 drops its term from the gradient graph
    (the term is still computed and logged), so an ablation trains exactly what the remaining terms define.

    Attributes:
      lambda_explanation: `lambda1`, weight of `L_explanation`.
      lambda_consistency: `lambda2`, weight of `L_consistency`.
      lambda_meta: weight of the meta-cognitive head's calibration loss `L_meta`.
    """

    lambda_explanation: float = 1.0
    lambda_consistency: float = 1.0
    lambda_meta: float = 0.1

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"LossConfig.{field.name} must be a finite number >= 0, got {value!r}")

    def weight(self, term: str) -> float:
        """The weight of `term` (one of `TERMS`) in the total loss."""
        return {"reasoning": 1.0, "explanation": self.lambda_explanation,
                "consistency": self.lambda_consistency, "meta": self.lambda_meta}[term]


def shift_targets(tokens: jax.Array, segments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Next-token targets and their segments, aligned with the model's `T` output positions.

    Args:
      tokens: `[B, T]` token ids.
      segments: `[B, T]` segment ids of `tokens`.

    Returns:
      `(targets [B, T], target_segments [B, T])`: `targets[:, t] = tokens[:, t + 1]`; the last position gets
      token 0 and `Segment.PAD`, so no loss term selects it.
    """
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    target_segments = jnp.pad(segments[:, 1:].astype(jnp.int32), ((0, 0), (0, 1)), constant_values=Segment.PAD)
    return targets, target_segments


def reasoning_mask(target_segments: jax.Array) -> jax.Array:
    """`[B, T]` bool: positions whose target is a rationale or answer token (`L_reasoning`, `L_meta`)."""
    return (target_segments == Segment.RATIONALE) | (target_segments == Segment.ANSWER)


def explanation_mask(target_segments: jax.Array) -> jax.Array:
    """`[B, T]` bool: positions whose target is an explanation token (`L_explanation`)."""
    return target_segments == Segment.EXPLANATION


def masked_mean(values: jax.Array, mask: jax.Array, normalizer: Optional[Scalar] = None) -> jax.Array:
    """`sum(values[mask]) / max(normalizer, 1)`, with `normalizer = mask.sum()` by default.

    Args:
      values: any shape, float.
      mask: bool, broadcastable to `values`.
      normalizer: the denominator; pass the whole batch's count when `values` is one microbatch of it.
    """
    total = jnp.sum(jnp.where(mask, values, 0.0), dtype=jnp.float32)
    count = jnp.sum(mask, dtype=jnp.float32) if normalizer is None else jnp.asarray(normalizer, jnp.float32)
    return total / jnp.maximum(count, 1.0)


def reasoning_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array, *,
                   normalizer: Optional[Scalar] = None) -> jax.Array:
    """`L_reasoning`: mean next-token NLL over rationale and answer targets.

    Args:
      logits: `[B, T, V]` model logits.
      targets: `[B, T]` next-token ids (`shift_targets`).
      loss_mask: `[B, T]` bool, usually `reasoning_mask(target_segments)`.
      normalizer: denominator of the mean (default `loss_mask.sum()`).
    """
    return masked_mean(token_nll(logits, targets), loss_mask, normalizer)


def explanation_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array, *,
                     normalizer: Optional[Scalar] = None) -> jax.Array:
    """`L_explanation`: mean next-token NLL over explanation targets. The explanation follows the chain in
    the same sequence, so the model is conditioned on the problem and its reasoning when it explains.

    Args:
      logits: `[B, T, V]` model logits.
      targets: `[B, T]` next-token ids (`shift_targets`).
      loss_mask: `[B, T]` bool, usually `explanation_mask(target_segments)`.
      normalizer: denominator of the mean (default `loss_mask.sum()`).
    """
    return masked_mean(token_nll(logits, targets), loss_mask, normalizer)


def token_correctness(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`[B, T]` float 0/1: whether the greedy prediction at each position is its target.

    The meta head's training target: a calibrated confidence at position `t` is the probability that the
    model's own greedy choice there is right. Constant with respect to the parameters (no gradient).
    """
    correct = jnp.argmax(logits, axis=-1) == targets
    return jax.lax.stop_gradient(correct.astype(jnp.float32))


def meta_confidence_loss(meta_logits: jax.Array, correct: jax.Array, loss_mask: jax.Array, *,
                         normalizer: Optional[Scalar] = None) -> jax.Array:
    """`L_meta`: binary cross-entropy of the meta head's confidence logits against per-token correctness.

    BCE is a proper scoring rule, so its minimiser is the calibrated probability of being right.

    Args:
      meta_logits: `[B, T]` confidence logits (`ForwardOutput.meta`).
      correct: `[B, T]` targets in [0, 1], usually `token_correctness(logits, targets)`.
      loss_mask: `[B, T]` bool, the positions that count (usually `reasoning_mask`).
      normalizer: denominator of the mean (default `loss_mask.sum()`).
    """
    bce = optax.sigmoid_binary_cross_entropy(meta_logits.astype(jnp.float32), correct.astype(jnp.float32))
    return masked_mean(bce, loss_mask, normalizer)


def combine_losses(terms: Mapping[str, Scalar], cfg: LossConfig) -> jax.Array:
    """`L_reasoning + lambda1 L_explanation + lambda2 L_consistency + lambda_meta L_meta`.

    Args:
      terms: values of the terms named in `TERMS`; missing terms count as 0. A precomputed consistency
        scalar goes here like any other term.
      cfg: the weights. Terms with weight 0 are left out of the sum (not multiplied by 0), so their gradient
        graph is absent and a non-finite value in them cannot reach the total.
    """
    unknown = set(terms) - set(TERMS)
    if unknown:
        raise ValueError(f"combine_losses: unknown loss term(s) {sorted(unknown)}; the terms are {TERMS}")
    total = jnp.zeros((), jnp.float32)
    for name in TERMS:
        if name in terms and cfg.weight(name) != 0:
            total = total + cfg.weight(name) * jnp.asarray(terms[name], jnp.float32)
    return total


ConsistencyFn = Callable[..., Union[jax.Array, tuple[jax.Array, Mapping[str, jax.Array]]]]
"""`consistency(params, batch, out, key[, inverse=...]) -> scalar or (scalar, parts)`: `L_consistency` of one
(micro)batch, given the model params, the batch dict, the `ForwardOutput` of the model on it and a PRNG key,
plus the Inverse Analysis Layer's parameters as `inverse=` when the state trains one. `parts` (named scalars)
are logged beside the term. Under gradient accumulation both are averaged over microbatches. A hook with a
`record` attribute (a `forward` RecordSpec) gets an `out` that recorded it. The default is
`sage_jax.train.consistency.IALConsistency`."""
