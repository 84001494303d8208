"""`L_consistency`: the Inverse Analysis Layer (IAL) learns to reproduce the forward model and its exact analysis.

    L_consistency = mean_t KL(sg(p_forward(. | t)) || p_IAL(. | t))                      ("consistency_kl")
                  + map_weight * mean_{i, j} KL_Bernoulli(sg(Sig_exact[i, j]) || Sig_IAL[i, j])  ("consistency_map")

- The KL term runs over the positions whose target is a rationale or answer token (what the explanations are
  about); `p_forward` is the model's own next-token distribution, held fixed (`stop_gradient`).
- The map term compares the IAL's significance map with the exact one (Eq. 7, `sage_jax.interpret.significance`,
  the teacher, under `stop_gradient`) on each step's source tokens (the tokens before it). Both maps lie in
  [0, 1], so the Bernoulli KL (binary cross-entropy minus the teacher's entropy) is a proper divergence that is 0
  exactly when the maps agree, like the KL term.
- The teacher is the expensive part (one forward and one vjp batched over the steps, per problem), so it runs on
  the first `teacher_rows` rows of every microbatch only, and on at most `max_steps` steps of each; the KL term
  uses every row. Rows keep their order from the data pipeline, which shuffles, so the teacher rows are a fresh
  random sample every step.
- Nothing reaches the forward model: the IAL reads `stop_gradient` features (`sage_jax.nn.inverse`) and both
  teachers are held fixed. So the term trains the IAL alone, and the model's update is the same whatever
  `lambda2` is (tested bit for bit).

The steps of a row come from the pipeline's `step_index [B, T]` through `sage_jax.layout.steps_from_index` (step
`k` owns its tokens without the marker, the layout's convention).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from sage_jax.config import SageConfig
from sage_jax.interpret.consistency import kl_divergence
from sage_jax.interpret.significance import WEIGHTINGS, significance_batch
from sage_jax.layout import Segment, steps_from_index
from sage_jax.model import forward
from sage_jax.nn.inverse import InverseAnalysisLayer, InverseConfig, inverse_features
from sage_jax.train.losses import masked_mean, reasoning_mask, shift_targets

_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ConsistencyConfig:
    """Static settings of the IAL consistency loss.

    Attributes:
      map_weight: weight of the map term against the KL term inside `L_consistency`.
      teacher_rows: rows of each microbatch that get an exact significance map (the cost knob).
      max_steps: steps per row that are analysed (later steps are left out of the map term).
      layer: the layer whose hidden states the exact map differentiates (0: token embeddings).
      weighting: the exact map's `w_ij`: "attention" or "rollout".
    """

    map_weight: float = 1.0
    teacher_rows: int = 2
    max_steps: int = 4
    layer: int = 0
    weighting: str = "attention"

    def __post_init__(self):
        if not isinstance(self.map_weight, (int, float)) or not 0 <= self.map_weight < float("inf"):
            raise ValueError(f"consistency map_weight must be a finite number >= 0, got {self.map_weight!r}")
        for name in ("teacher_rows", "max_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"consistency {name} must be a positive integer, got {value!r}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"consistency layer must be an integer >= 0, got {self.layer!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"consistency weighting={self.weighting!r}: choose one of {WEIGHTINGS}")


@dataclasses.dataclass(frozen=True)
class IALConsistency:
    """The consistency hook of the train step (`sage_jax.train.losses.ConsistencyFn`); hashable, so compiled
    steps are shared by equal configurations.

    Attributes:
      model: the forward model's config.
      config: the loss settings.
    """

    model: SageConfig
    config: ConsistencyConfig = ConsistencyConfig()
    record: ClassVar[tuple[str, ...]] = ("attn", "value_norms")  # what the IAL's features read from the forward

    def __post_init__(self):
        if self.config.layer >= self.model.n_layers:
            raise ValueError(f"consistency layer={self.config.layer} is outside [0, {self.model.n_layers}) of "
                             f"model {self.model.name!r}")

    def __call__(self, params: Any, batch, out, key: jax.Array, *, inverse: Any = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`(L_consistency, {"consistency_kl", "consistency_map"})` of one microbatch.

        Args:
          params: the model parameters (held fixed here).
          batch: `tokens [B, T]`, `segments [B, T]`, `step_index [B, T]`.
          out: the step's `ForwardOutput` of `params` on `batch` with `record`'s fields (the train step's forward
            records what a hook's `record` names), so that the IAL's features cost no second forward; None to
            run that forward here. Held fixed either way.
          key: unused (the loss is deterministic).
          inverse: the IAL parameters, the only thing this loss trains.
        """
        del key
        if inverse is None:
            raise ValueError("IALConsistency needs the Inverse Analysis Layer's parameters (inverse=...); train a "
                             "stage with an IAL (stageN.inverse=True) or set its consistency_weight to 0")
        if "step_index" not in batch:
            raise ValueError(f"IALConsistency needs batch['step_index'] [B, T] (fields: {sorted(batch)})")
        tokens, segments = batch["tokens"], batch["segments"]
        steps = steps_from_index(tokens, batch["step_index"], self.config.max_steps)
        frozen = jax.lax.stop_gradient(params)
        traced = out if out is not None else forward(frozen, tokens, self.model, mask=segments != Segment.PAD,
                                                      record=self.record)
        if traced.trace is None or traced.trace.attn is None or traced.trace.value_norms is None:
            raise ValueError(f"IALConsistency needs out.trace to hold {self.record}: run the forward with "
                             "record=IALConsistency.record, or pass out=None")
        features = inverse_features(traced.hidden, traced.trace, steps.mask)
        predicted = InverseAnalysisLayer(InverseConfig.from_sage(self.model)).apply({"params": inverse}, features)

        _, target_segments = shift_targets(tokens, segments)
        rows = min(self.config.teacher_rows, tokens.shape[0])
        taught = jax.tree_util.tree_map(lambda x: x[:rows], steps)
        exact = significance_batch(frozen, self.model, tokens[:rows], taught, layer=self.config.layer,
                                   weighting=self.config.weighting)
        where = taught.sources & jnp.any(taught.mask, axis=-1, keepdims=True)
        return consistency_terms(traced.logits, predicted.logits, reasoning_mask(target_segments), exact.score,
                                 predicted.significance[:rows], where, map_weight=self.config.map_weight)


def consistency_terms(forward_logits: jax.Array, reconstructed_logits: jax.Array, kl_where: jax.Array,
                      exact_map: jax.Array, predicted_map: jax.Array, map_where: jax.Array, *, map_weight: float
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`L_consistency` from its teachers, however they were obtained (module docstring).

    `IALConsistency` computes the teachers inside the train step; `sage_jax.train.inverse_only` reads them
    from a cache computed once. Both teachers are held fixed (`stop_gradient`).

    Args:
      forward_logits: `[..., V]` the forward model's logits (the positions the KL runs over, any leading shape).
      reconstructed_logits: `[..., V]` the IAL's reconstruction at the same positions.
      kl_where: `[...]` bool, the positions that count in the KL term.
      exact_map: `[B, n, T]` the exact significance maps.
      predicted_map: `[B, n, T]` the IAL's maps of the same rows.
      map_where: `[B, n, T]` bool, the (step, token) pairs that count in the map term.
      map_weight: weight of the map term.

    Returns:
      `(kl + map_weight * map_term, {"consistency_kl": kl, "consistency_map": map_term})`.
    """
    kl = masked_mean(kl_divergence(jax.lax.stop_gradient(forward_logits), reconstructed_logits), kl_where)
    map_term = masked_mean(bernoulli_kl(jax.lax.stop_gradient(exact_map), predicted_map), map_where)
    return kl + map_weight * map_term, {"consistency_kl": kl, "consistency_map": map_term}


def bernoulli_kl(target: jax.Array, predicted: jax.Array) -> jax.Array:
    """Elementwise `KL(Bernoulli(target) || Bernoulli(predicted))` in nats, `predicted` clipped to
    `[1e-6, 1 - 1e-6]`; 0 where they are equal (up to that clipping)."""
    p = jnp.clip(predicted.astype(jnp.float32), _EPS, 1.0 - _EPS)
    t = jnp.clip(target.astype(jnp.float32), 0.0, 1.0)
    return xlogy(t, t) - xlogy(t, p) + xlogy(1.0 - t, 1.0 - t) - xlogy(1.0 - t, 1.0 - p)
