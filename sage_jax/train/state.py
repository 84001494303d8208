"""`TrainState` and its (sharded) initialisation.

Initialisation never materialises a replicated copy: `jax.eval_shape` gives the state's shapes, the partition
rules give each leaf a sharding, and one `jit` with those `out_shardings` creates every shard where it lives.
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
    """

    model: SageConfig
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    microbatches: int = 1

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
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    rng: jax.Array


def create_state(cfg: StepConfig, key: jax.Array) -> TrainState:
    """A fresh `TrainState` (pure; jit it, or use `init_train_state` for a sharded one)."""
    params_key, rng = jax.random.split(key)
    params = init_params(cfg.model, params_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=make_optimizer(cfg.optim).init(params), rng=rng)


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
