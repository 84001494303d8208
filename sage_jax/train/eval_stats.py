"""Teacher-forced statistics of held-out batches: loss, token accuracy and the meta head's calibration error.

The targets are the train step's (`sage_jax.train.step.target_masks`): with a batch's `loss_mask`, the tokens
its stage trains on, split into `L_reasoning` targets and explanation targets. The meta head's confidence at
position `t` (`sigmoid(ForwardOutput.meta)`) is scored against "the greedy prediction at `t` is the target"
over the reasoning targets, which is what `L_meta` trains it to predict.

Calibration: `ECE = sum_b (n_b / N) |accuracy_b - confidence_b|` over `bins` equal-width confidence bins on
[0, 1] (Guo et al. 2017), with `accuracy_b` the fraction right and `confidence_b` the mean confidence in bin
`b`. Bins are kept as sums (`count`, `confidence`, `correct`), so statistics of several batches add up exactly.

This lives in `sage_jax.train` because the curriculum evaluates while it trains; `sage_jax.evaluate`
re-exports it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.interpret.steps import token_nll
from sage_jax.layout import Segment
from sage_jax.model import forward
from sage_jax.train.losses import shift_targets
from sage_jax.train.step import target_masks

DEFAULT_BINS = 10


def reliability_sums(confidence: jax.Array, correct: jax.Array, mask: jax.Array,
                     bins: int = DEFAULT_BINS) -> jax.Array:
    """`[bins, 3]` float32 per-bin sums `(count, sum of confidence, sum of correct)` of the masked entries.

    Args:
      confidence: any shape, in [0, 1].
      correct: same shape, 0/1 (or a probability of being right).
      mask: same shape, bool: which entries count.
      bins: equal-width bins on [0, 1]; a confidence of exactly 1 falls in the last.
    """
    index = jnp.clip(jnp.floor(confidence * bins).astype(jnp.int32), 0, bins - 1).reshape(-1)
    weight = mask.reshape(-1).astype(jnp.float32)
    columns = jnp.stack([weight, weight * confidence.reshape(-1), weight * correct.reshape(-1)], axis=-1)
    return jnp.zeros((bins, 3), jnp.float32).at[index].add(columns.astype(jnp.float32))


def expected_calibration_error(sums: np.ndarray) -> float:
    """ECE from `[bins, 3]` sums (`reliability_sums`, possibly added over batches); 0 when nothing counted."""
    sums = np.asarray(sums, np.float64)
    count = sums[:, 0]
    total = count.sum()
    if total == 0:
        return 0.0
    filled = count > 0
    gap = np.abs(sums[filled, 2] - sums[filled, 1]) / count[filled]
    return float(np.sum(count[filled] / total * gap))


@dataclasses.dataclass(frozen=True)
class TokenStats:
    """Sums over target tokens (host numpy), so that batches add up exactly.

    Attributes:
      reasoning: `[3]` (tokens, summed NLL, greedy-correct tokens) over `L_reasoning` targets.
      explanation: `[3]` the same over explanation targets.
      reliability: `[bins, 3]` meta-head calibration sums over reasoning targets (`reliability_sums`).
    """

    reasoning: np.ndarray
    explanation: np.ndarray
    reliability: np.ndarray

    @staticmethod
    def merge(stats: Sequence["TokenStats"]) -> "TokenStats":
        """The sums of several batches' statistics."""
        if not stats:
            raise ValueError("TokenStats.merge needs at least one TokenStats")
        return TokenStats(*(np.sum([getattr(s, f.name) for s in stats], axis=0)
                            for f in dataclasses.fields(TokenStats)))

    def summary(self) -> dict[str, float]:
        """`reasoning_loss`, `reasoning_accuracy`, `explanation_loss`, `explanation_accuracy` (means per
        target token; 0 without targets), `meta_ece` and `meta_confidence` (mean confidence)."""
        out = {}
        for name in ("reasoning", "explanation"):
            count, nll, correct = getattr(self, name)
            out[f"{name}_loss"] = float(nll / max(count, 1.0))
            out[f"{name}_accuracy"] = float(correct / max(count, 1.0))
        out["meta_ece"] = expected_calibration_error(self.reliability)
        out["meta_confidence"] = float(self.reliability[:, 1].sum() / max(self.reliability[:, 0].sum(), 1.0))
        return out


def token_stats(params: Any, batch: Mapping[str, jax.Array], cfg: SageConfig,
                bins: int = DEFAULT_BINS) -> dict[str, jax.Array]:
    """The device-side sums of `TokenStats` for one batch (`tokens`, `segments`, optional `loss_mask`)."""
    tokens, segments = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segments"])
    out = forward(params, tokens, cfg, mask=segments != Segment.PAD)
    targets, _ = shift_targets(tokens, segments)
    r_mask, e_mask = target_masks({k: batch[k] for k in ("tokens", "segments", "loss_mask") if k in batch})
    nll = token_nll(out.logits, targets)
    correct = (jnp.argmax(out.logits, axis=-1) == targets).astype(jnp.float32)

    def sums(mask):
        m = mask.astype(jnp.float32)
        return jnp.stack([m.sum(), (nll * m).sum(), (correct * m).sum()])

    confidence = jax.nn.sigmoid(out.meta.astype(jnp.float32)) if out.meta is not None else jnp.zeros_like(nll)
    return {"reasoning": sums(r_mask), "explanation": sums(e_mask),
            "reliability": reliability_sums(confidence, correct, r_mask, bins)}


def compile_token_stats(cfg: SageConfig, bins: int = DEFAULT_BINS) -> Callable[[Any, Mapping[str, Any]],
                                                                              TokenStats]:
    """`fn(params, batch) -> TokenStats` (jitted once per batch shape)."""
    fn = jax.jit(functools.partial(token_stats, cfg=cfg, bins=bins))

    def stats(params, batch):
        host = jax.device_get(fn(params, {k: batch[k] for k in ("tokens", "segments", "loss_mask")
                                          if k in batch}))
        return TokenStats(reasoning=np.asarray(host["reasoning"]), explanation=np.asarray(host["explanation"]),
                          reliability=np.asarray(host["reliability"]))

    return stats
