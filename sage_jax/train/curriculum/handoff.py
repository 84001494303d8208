"""How one curriculum stage hands over to the next: the state a stage starts from and the one it leaves.

Stage 1 starts from a fresh initialisation; every later stage starts from the final parameters of the stage
before it (restored from that stage's checkpoints), with a fresh optimizer state, step 0 and its own PRNG key.
A stage whose predecessor has not finished raises `StageOrderError`, never a silent fresh start.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
from jax.sharding import Mesh

from sage_jax.train.checkpoint import Checkpointer
from sage_jax.train.curriculum.config import CurriculumConfig
from sage_jax.train.sharding import DEFAULT_RULES, Rules, tree_shardings
from sage_jax.train.state import StepConfig, TrainState, abstract_state, attach_optimizer, init_train_state


class StageOrderError(RuntimeError):
    """A stage was asked to start before the stage it starts from had finished."""


def state_from_params(cfg: StepConfig, params: Any, key: jax.Array, mesh: Optional[Mesh] = None,
                      rules: Rules = DEFAULT_RULES, *, inverse: Any = None) -> TrainState:
    """A step-0 `TrainState` holding `params`, a fresh optimizer state and PRNG key `key` (laid out by the
    rules under `mesh`). A stage with an IAL continues from `inverse`, or initialises one from
    `fold_in(key, 1)` when `inverse` is None."""
    def create(params, inverse, key):
        return attach_optimizer(cfg, params, key, inverse=inverse, inverse_key=jax.random.fold_in(key, 1))

    shardings = None if mesh is None else tree_shardings(abstract_state(cfg), mesh, rules)
    return jax.jit(create, out_shardings=shardings)(params, inverse, key)


def stage_key(cfg: CurriculumConfig, number: int) -> jax.Array:
    """The PRNG key a stage starts with: stage 1's initialises the model too."""
    return jax.random.fold_in(jax.random.key(cfg.seed), number)


def final_state(cfg: CurriculumConfig, number: int, mesh: Optional[Mesh] = None) -> TrainState:
    """The final state of a finished stage `number`, restored from its checkpoints.

    Raises:
      StageOrderError: the stage has no checkpoint, or has not reached its `steps`.
    """
    stage = cfg.stage(number)
    directory = cfg.stage_dir(number) / "ckpt"
    with Checkpointer(directory, keep=stage.keep) as ckpt:
        restored = ckpt.restore_latest(abstract_state(stage.step_config(cfg.model), mesh))
    if restored is None or restored.step < stage.steps:
        reached = "no checkpoint" if restored is None else f"only step {restored.step}"
        raise StageOrderError(f"stage {number} has not finished ({reached} of {stage.steps} in {directory}); "
                              f"run stage {number} first")
    return restored.state


def initial_state(cfg: CurriculumConfig, number: int, mesh: Optional[Mesh] = None) -> TrainState:
    """The state stage `number` starts from: a fresh initialisation for the first stage, else the previous
    stage's final parameters with a fresh optimizer state, step 0 and the stage's own key."""
    step_cfg = cfg.stage(number).step_config(cfg.model)
    previous = cfg.previous(number)
    if previous is None:
        return init_train_state(step_cfg, stage_key(cfg, number), mesh)
    before = final_state(cfg, previous.stage, mesh)
    return state_from_params(step_cfg, before.params, stage_key(cfg, number), mesh, inverse=before.inverse)

