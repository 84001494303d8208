"""The train step: a pure function `(state, batch) -> (state, metrics)`, one optimizer update per call.

Gradient accumulation happens inside the step: the batch `[B, ...]` is split into `k = cfg.microbatches`
microbatches of `B / k` rows (microbatch `j` holds rows `j, j + k, j + 2k, ...`, so under a mesh every
device keeps rows of every microbatch and no data moves), and `lax.scan` sums their gradients. Each
microbatch's token sums are divided by the token counts of the *whole* batch, so the summed loss and
gradient are those of the full batch (up to float summation order). `L_consistency` is a callable that
returns a per-microbatch mean (averaged over microbatches), or a precomputed scalar (logged and added to
the loss, with no gradient).

A step whose loss or gradient is not finite returns its input state unchanged (step counter included) with
`metrics["finite"] == False`; `sage_jax.train.loop` turns that into an error. So a non-finite update never
reaches the parameters, whether or not anyone reads the metrics.

`batch` is a dict of arrays with a leading batch axis: `tokens [B, T]` and `segments [B, T]`
(`sage_jax.train.losses` defines the segment ids), an optional `loss_mask [B, T]`, plus any fields the
consistency callable reads.

Which tokens are targets. Without `loss_mask`, `L_reasoning` covers rationale and answer targets and
`L_explanation` explanation targets (the stage-2/3 objective). With `loss_mask` (what `sage_jax.data` pipelines
emit, chosen by the curriculum stage's `Mixture.loss_segments`), the targets are the tokens it marks: its
explanation tokens go to `L_explanation` and every other marked token to `L_reasoning`, so stage 1 trains on
all text (prompt included) and a stage that leaves explanations out has an explanation term of zero tokens.
`L_meta` covers the same targets as `L_reasoning`.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sage_jax.layout import Segment
from sage_jax.model import forward
from sage_jax.train import compat
from sage_jax.train.losses import (TERMS, ConsistencyFn, combine_losses, explanation_loss, explanation_mask,
                                   meta_confidence_loss, reasoning_loss, reasoning_mask, shift_targets,
                                   token_correctness)
from sage_jax.train.optim import learning_rate_schedule
from sage_jax.train.sharding import (BATCH_AXES, DEFAULT_RULES, Rules, activation_rules, batch_sharding, replicated,
                                     tree_shardings)
from sage_jax.train.state import StepConfig, TrainState, abstract_state, state_optimizer, trainable, with_trainable

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
Consistency = Union[ConsistencyFn, float, jax.Array, None]


def train_step(state: TrainState, batch: Batch, *, cfg: StepConfig, consistency: Consistency = None,
               mesh: Optional[Mesh] = None) -> tuple[TrainState, Metrics]:
    """One optimizer update from `batch`, accumulated over `cfg.microbatches`.

    Args:
      state: the current state (donated by `compile_train_step`).
      batch: `tokens [B, T]`, `segments [B, T]` and optional extra `[B, ...]` fields.
      cfg: static configuration.
      consistency: `L_consistency` of a microbatch, `fn(params, batch, out, key) -> scalar` (called with
        `inverse=` the IAL parameters as well when the state has them, `sage_jax.train.consistency`); it may
        return `(scalar, {name: scalar})` to log its parts; or a precomputed scalar; or `None` (0).
      mesh: the device mesh, to keep microbatches split over the batch axes; `None` on one device.

    Returns:
      The new state and scalar metrics: `loss`, each term in `TERMS`, `grad_norm` (before clipping),
      `learning_rate` (of this update), `tokens` (B * T), `loss_tokens` (`L_reasoning` targets),
      `explanation_tokens`, and `finite` (bool).
    """
    tokens, _ = check_batch(batch, cfg.microbatches)
    k = cfg.microbatches
    r_mask, e_mask = target_masks(batch)
    n_reasoning = jnp.sum(r_mask, dtype=jnp.float32)
    n_explanation = jnp.sum(e_mask, dtype=jnp.float32)

    rng, step_key = jax.random.split(state.rng)
    micro = jax.tree_util.tree_map(functools.partial(_split_rows, k=k, mesh=mesh), dict(batch))
    loss_fn = functools.partial(_microbatch_loss, cfg=cfg, consistency=consistency, n_micro=k,
                                n_reasoning=n_reasoning, n_explanation=n_explanation)

    params = trainable(state)

    def accumulate(grads, xs):
        (loss, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(params, *xs)
        return jax.tree_util.tree_map(jnp.add, grads, g), (loss, terms)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    with activation_rules(mesh):
        grads, (losses, terms) = jax.lax.scan(accumulate, zeros, (micro, jax.random.split(step_key, k)))

    grad_norm = compat.tree_norm(grads)
    loss = jnp.sum(losses)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = state_optimizer(cfg).update(grads, state.opt_state, params)
    updated = with_trainable(state, optax.apply_updates(params, updates)).replace(
        step=state.step + 1, opt_state=opt_state, rng=rng)
    new_state = jax.lax.cond(finite, lambda: updated, lambda: state)

    metrics = {"loss": loss, **{name: jnp.sum(value) for name, value in terms.items()},
               "grad_norm": grad_norm, "learning_rate": learning_rate_schedule(cfg.optim)(state.step),
               "tokens": jnp.asarray(tokens.size, jnp.float32), "loss_tokens": n_reasoning,
               "explanation_tokens": n_explanation, "finite": finite}
    return new_state, metrics


def compile_train_step(cfg: StepConfig, *, mesh: Optional[Mesh] = None, rules: Rules = DEFAULT_RULES,
                       consistency: Consistency = None) -> Callable[[TrainState, Batch],
                                                                    tuple[TrainState, Metrics]]:
    """`train_step` jitted once, with the state donated and, under a mesh, explicit shardings: the state
    by `rules`, the batch split over `BATCH_AXES`, the metrics replicated."""
    step = functools.partial(train_step, cfg=cfg, consistency=consistency, mesh=mesh)
    if mesh is None:
        return jax.jit(step, donate_argnames="state")
    state_shardings = tree_shardings(abstract_state(cfg), mesh, rules)
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnames="state")


def check_batch(batch: Batch, microbatches: int) -> tuple[jax.Array, jax.Array]:
    """Checks the batch's fields and shapes (at trace time) and returns `(tokens, segments)`."""
    for name in ("tokens", "segments"):
        if name not in batch:
            raise ValueError(f"batch has no {name!r} field (fields: {sorted(batch)}); a batch needs "
                             "tokens [B, T] and segments [B, T]")
        if not jnp.issubdtype(jnp.result_type(batch[name]), jnp.integer):
            raise ValueError(f"batch[{name!r}] must hold integers, got dtype {jnp.result_type(batch[name])}")
    tokens, segments = batch["tokens"], batch["segments"]
    if jnp.ndim(tokens) != 2 or jnp.shape(segments) != jnp.shape(tokens):
        raise ValueError(f"batch['tokens'] must be [B, T] and batch['segments'] the same shape; got "
                         f"{jnp.shape(tokens)} and {jnp.shape(segments)}")
    rows = jnp.shape(tokens)[0]
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(batch))[0]:
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != rows:
            raise ValueError(f"batch field {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; every "
                             f"field needs the leading batch axis of size {rows}")
    if rows % microbatches:
        raise ValueError(f"batch size {rows} is not divisible by StepConfig.microbatches={microbatches}")
    return tokens, segments


def target_masks(batch: Batch) -> tuple[jax.Array, jax.Array]:
    """`(reasoning [B, T], explanation [B, T])` bool masks over output positions (position `t` predicts
    token `t + 1`): the targets of `L_reasoning` / `L_meta` and of `L_explanation`.

    With `batch["loss_mask"]` (`[B, T]`, 1 where *token* `t` is a target, as `sage_jax.data` pipelines
    make it), the targets are the marked tokens, split by whether they are explanation tokens; without it,
    rationale and answer targets, and explanation targets (`losses.reasoning_mask`, `explanation_mask`).
    """
    _, target_segments = shift_targets(batch["tokens"], batch["segments"])
    explanation = explanation_mask(target_segments)
    if "loss_mask" not in batch:
        return reasoning_mask(target_segments), explanation
    loss_mask = jnp.asarray(batch["loss_mask"])
    if jnp.shape(loss_mask) != jnp.shape(batch["tokens"]):
        raise ValueError(f"batch['loss_mask'] has shape {jnp.shape(loss_mask)}; it must match "
                         f"batch['tokens'] {jnp.shape(batch['tokens'])}")
    marked = jnp.pad(loss_mask[:, 1:] != 0, ((0, 0), (0, 1))) & (target_segments != Segment.PAD)
    return marked & ~explanation, marked & explanation


def _split_rows(x: jax.Array, *, k: int, mesh: Optional[Mesh]) -> jax.Array:
    """`[B, ...] -> [k, B / k, ...]`, microbatch `j` = rows `j, j + k, ...` (strided: shards stay put)."""
    x = jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
    if mesh is not None:
        x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, BATCH_AXES)))
    return x


def _microbatch_loss(trained, micro: Batch, key: jax.Array, *, cfg: StepConfig,
                     consistency: Consistency, n_micro: int, n_reasoning: jax.Array,
                     n_explanation: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The combined loss of one microbatch, each token term divided by the whole batch's count."""
    params, hook_args = (trained, {}) if cfg.inverse_optim is None else (trained["model"],
                                                                          {"inverse": trained["inverse"]})
    tokens, segments = micro["tokens"], micro["segments"]
    record = getattr(consistency, "record", None) if callable(consistency) else None
    out = forward(params, tokens, cfg.model, mask=segments != Segment.PAD, record=record)
    targets, _ = shift_targets(tokens, segments)
    r_mask, e_mask = target_masks(micro)
    terms = {
        "reasoning": reasoning_loss(out.logits, targets, r_mask, normalizer=n_reasoning),
        "explanation": explanation_loss(out.logits, targets, e_mask, normalizer=n_explanation),
    }
    if out.meta is not None:
        correct = token_correctness(out.logits, targets)
        terms["meta"] = meta_confidence_loss(out.meta, correct, r_mask, normalizer=n_reasoning)
    parts = {}
    if callable(consistency):
        value = consistency(params, micro, out, key, **hook_args)
        value, parts = value if isinstance(value, tuple) else (value, {})
        terms["consistency"] = jnp.asarray(value, jnp.float32) / n_micro
    elif consistency is not None:
        terms["consistency"] = jnp.asarray(consistency, jnp.float32) / n_micro
    total = combine_losses(terms, cfg.loss)
    return total, {**{name: terms.get(name, jnp.zeros((), jnp.float32)) for name in TERMS},
                   **{name: jnp.asarray(v, jnp.float32) / n_micro for name, v in parts.items()}}
