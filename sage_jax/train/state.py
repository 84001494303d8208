"""`TrainState` and its (sharded) initialisation.

Initialisation never materialises a replicated copy: `jax.eval_shape` gives the state's shapes, the partition
rules give each leaf a sharding, and one `jit` with those `out_shardings` creates every shard where it lives.

The Inverse Analysis Layer (`sage_jax.nn.inverse`) trains beside the model where a stage asks for it
(`StepConfig.inverse_optim`, stage 3 by default): its parameters live in `TrainState.inverse` (`None` when the
stage does not train it, so the state, its checkpoints and its update are those of a model-only run), and the
optimizer state is then `{"model": ..., "inverse": ...}`, one AdamW per parameter group (`trainable`,
`state_optimizer`). Separate groups keep the model's update independent of the IAL: each group clips its own
gradient norm and has its own schedule, so the IAL's gradients never rescale the model's.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from sage_jax.config import SageConfig
from sage_jax.model import init_params
from sage_jax.nn.inverse import init_inverse_params
from sage_jax.train.losses import LossConfig
from sage_jax.train.optim import OptimConfig, make_optimizer
from sage_jax.train.sharding import DEFAULT_RULES, Rules, tree_shardings


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about a train step: it is part of the jit cache key.

    Attributes:
      model: the model architecture.
      optim: optimizer and learning-rate schedule.
      loss: weights of the loss terms.
      microbatches: gradient-accumulation steps inside one update; must divide the batch size.
      inverse_optim: train the Inverse Analysis Layer jointly, with this optimizer (its own parameter
        group); `None`: the state has no IAL (`TrainState.inverse is None`).
    """

    model: SageConfig
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    microbatches: int = 1
    inverse_optim: Optional[OptimConfig] = None

    def __post_init__(self):
        if not isinstance(self.microbatches, int) or self.microbatches < 1:
            raise ValueError(f"StepConfig.microbatches must be a positive integer, got {self.microbatches!r}")


@struct.dataclass
class TrainState:
    """The whole mutable state of a run, as one pytree.

    Attributes:
      step: int32 scalar, updates applied so far.
      params: the model parameters (`sage_jax.init_params` layout).
      opt_state: the optax state of `make_optimizer(cfg.optim)`.
      rng: a typed PRNG key (`jax.random.key`), split once per step; saved with checkpoints.
      inverse: the Inverse Analysis Layer's parameters (`sage_jax.nn.inverse.init_inverse_params` layout)
        when the stage trains it, else `None` (no leaves: the pytree is that of a model-only state).
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    rng: jax.Array
    inverse: Any = None


def trainable(state: TrainState) -> Any:
    """What the optimizer updates: `state.params`, or `{"model": params, "inverse": inverse}` with an IAL."""
    return state.params if state.inverse is None else {"model": state.params, "inverse": state.inverse}


def with_trainable(state: TrainState, tree: Any) -> TrainState:
    """`state` with its trainable parameters replaced by `tree` (the layout `trainable` gives)."""
    if state.inverse is None:
        return state.replace(params=tree)
    return state.replace(params=tree["model"], inverse=tree["inverse"])


def state_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
    """The optimizer of `trainable(state)`: `make_optimizer(cfg.optim)` alone, or one per parameter group."""
    if cfg.inverse_optim is None:
        return make_optimizer(cfg.optim)
    return grouped({"model": make_optimizer(cfg.optim), "inverse": make_optimizer(cfg.inverse_optim)})


def grouped(transforms: dict[str, optax.GradientTransformation]) -> optax.GradientTransformation:
    """Applies `transforms[name]` to the subtree `name` of a dict of parameter groups; its state is a dict too.

    Unlike `optax.multi_transform`, no group sees the other's leaves (not even as masked nodes), so a group's
    global-norm clipping and its state are exactly those of the transform applied to that group alone.
    """
    def init(params):
        return {name: t.init(params[name]) for name, t in transforms.items()}

    def update(updates, state, params=None):
        out = {name: t.update(updates[name], state[name], None if params is None else params[name])
               for name, t in transforms.items()}
        return {name: u for name, (u, _) in out.items()}, {name: s for name, (_, s) in out.items()}

    return optax.GradientTransformation(init, update)


def create_state(cfg: StepConfig, key: jax.Array) -> TrainState:
    """A fresh `TrainState` (pure; jit it, or use `init_train_state` for a sharded one)."""
    params_key, rng = jax.random.split(key)
    params = init_params(cfg.model, params_key)
    return attach_optimizer(cfg, params, rng, inverse_key=jax.random.fold_in(params_key, 1))


def attach_optimizer(cfg: StepConfig, params: Any, rng: jax.Array, *, inverse: Any = None,
                     inverse_key: Optional[jax.Array] = None) -> TrainState:
    """A step-0 `TrainState` of `params` with a fresh optimizer state (pure).

    Args:
      cfg: the step configuration; with `cfg.inverse_optim` the state carries IAL parameters.
      params: the model parameters.
      rng: the state's PRNG key.
      inverse: IAL parameters to continue from; when `None` and the stage trains an IAL, fresh ones are
        drawn from `inverse_key`. Ignored (dropped) when `cfg.inverse_optim` is `None`.
      inverse_key: key of a fresh IAL initialisation.
    """
    if cfg.inverse_optim is None:
        inverse = None
    elif inverse is None:
        if inverse_key is None:
            raise ValueError("attach_optimizer: the stage trains an Inverse Analysis Layer and has none to "
                             "continue from; pass inverse_key to initialise one")
        inverse = init_inverse_params(cfg.model, inverse_key)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None, rng=rng, inverse=inverse)
    return state.replace(opt_state=state_optimizer(cfg).init(trainable(state)))


def abstract_state(cfg: StepConfig, mesh: Optional[Mesh] = None, rules: Rules = DEFAULT_RULES) -> TrainState:
    """The state's `ShapeDtypeStruct`s (with their target shardings when `mesh` is given): a restore target."""
    shapes = jax.eval_shape(functools.partial(create_state, cfg), jax.random.key(0))
    if mesh is None:
        return shapes
    shardings = tree_shardings(shapes, mesh, rules)
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  shapes, shardings)


def init_train_state(cfg: StepConfig, key: jax.Array, mesh: Optional[Mesh] = None,
                     rules: Rules = DEFAULT_RULES) -> TrainState:
    """A fresh `TrainState`, created directly in its sharded layout when `mesh` is given.

    Args:
      cfg: the static step configuration.
      key: PRNG key; split into the parameter initialisation key and the state's `rng`.
      mesh: a `(data, fsdp)` mesh (`sage_jax.train.sharding.make_mesh`), or `None` for the default device.
      rules: partition rules by parameter path.
    """
    shardings = None if mesh is None else tree_shardings(abstract_state(cfg), mesh, rules)
    return jax.jit(create_state, static_argnums=0, out_shardings=shardings)(cfg, key)
