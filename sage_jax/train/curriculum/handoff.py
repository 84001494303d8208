"""How one curriculum stage hands over to the next: the state a stage starts from and the one it leaves.

Stage 1 starts from a fresh initialisation; every later stage starts from the final parameters of the stage
before it (restored from that stage's checkpoints), with a fresh optimizer state, step 0 and its own PRNG key.
A stage whose predecessor has not finished raises `StageOrderError`, never a silent fresh start.

A stage records what it started from in `stage<N>/handoff.json` (`Handoff`: the previous stage's number, the
step and the fingerprint of the checkpoint it took). A finished stage is not trained again, so when its
predecessor later changes (its `steps` raised on a finished run: it resumes and trains on), the stage would be
reported "already finished" while built on the old predecessor. `check_handoff` compares the record with the
predecessor's final checkpoint now and raises `StaleStageError`, saying how to retrain, instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Optional

import jax
from jax.sharding import Mesh

from sage_jax.train.checkpoint import Checkpointer, Restored
from sage_jax.train.curriculum.config import CurriculumConfig
from sage_jax.train.sharding import DEFAULT_RULES, Rules, tree_shardings
from sage_jax.train.state import StepConfig, TrainState, abstract_state, attach_optimizer, init_train_state


HANDOFF_FILE = "handoff.json"

log = logging.getLogger(__name__)


class StageOrderError(RuntimeError):
    """A stage was asked to start before the stage it starts from had finished."""


class StaleStageError(StageOrderError):
    """A stage's checkpoints were trained from a predecessor checkpoint that is no longer its final one."""


@dataclasses.dataclass(frozen=True)
class Handoff:
    """The checkpoint a stage started from: the previous stage's number, that checkpoint's step and its
    fingerprint (`sage_jax.train.checkpoint.Restored.fingerprint`)."""

    stage: int
    step: int
    fingerprint: str


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
    return final_checkpoint(cfg, number, mesh).state


def final_checkpoint(cfg: CurriculumConfig, number: int, mesh: Optional[Mesh] = None) -> Restored:
    """`final_state` with the checkpoint it came from (step, path, fingerprint)."""
    stage = cfg.stage(number)
    directory = cfg.stage_dir(number) / "ckpt"
    restored = None
    if directory.is_dir():  # read-only: a reader creates, renames and deletes nothing
        with Checkpointer(directory, keep=stage.keep, divergence_factor=stage.divergence_factor,
                          read_only=True) as ckpt:
            restored = ckpt.restore_latest(abstract_state(stage.step_config(cfg.model), mesh))
    _check_finished(number, None if restored is None else restored.step, stage.steps, directory)
    return restored


def _check_finished(number: int, step: Optional[int], steps: int, directory) -> None:
    """Raises `StageOrderError` unless stage `number`'s newest checkpoint `step` reached its `steps`."""
    if step is None or step < steps:
        reached = "no checkpoint" if step is None else f"only step {step}"
        raise StageOrderError(f"stage {number} has not finished ({reached} of {steps} in {directory}); "
                              f"run stage {number} first")


def initial_state(cfg: CurriculumConfig, number: int, mesh: Optional[Mesh] = None) -> TrainState:
    """The state stage `number` starts from: a fresh initialisation for the first stage, else the previous
    stage's final parameters with a fresh optimizer state, step 0 and the stage's own key."""
    return start_state(cfg, number, mesh)[0]


def start_state(cfg: CurriculumConfig, number: int,
                mesh: Optional[Mesh] = None) -> tuple[TrainState, Optional[Handoff]]:
    """`initial_state` and the `Handoff` it was taken from (None for the first stage)."""
    step_cfg = cfg.stage(number).step_config(cfg.model)
    previous = cfg.previous(number)
    if previous is None:
        return init_train_state(step_cfg, stage_key(cfg, number), mesh), None
    before = final_checkpoint(cfg, previous.stage, mesh)
    state = state_from_params(step_cfg, before.state.params, stage_key(cfg, number), mesh,
                              inverse=before.state.inverse)
    return state, Handoff(previous.stage, before.step, before.fingerprint)


def write_handoff(cfg: CurriculumConfig, number: int, handoff: Handoff) -> None:
    """Records in `stage<number>/handoff.json` what the stage started from (process 0 writes)."""
    if jax.process_index() != 0:
        return
    path = cfg.stage_dir(number) / HANDOFF_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(handoff), indent=1))
    tmp.replace(path)


def check_handoff(cfg: CurriculumConfig, number: int) -> None:
    """Raises when stage `number` has checkpoints trained from a predecessor checkpoint that is no longer the
    predecessor's final one. A stage without `handoff.json` (the first, or one trained before it was
    written) is not checked; nor, with a warning, one whose predecessor's checkpoints were removed (to save
    space, say), since nothing is left to compare with.

    Raises:
      StaleStageError: the recorded handoff differs from the predecessor's final checkpoint now; the message
        names both and says how to retrain the stage and the ones after it.
      StageOrderError: the predecessor has not finished (e.g. its `steps` were raised and it was not rerun).
    """
    path = cfg.stage_dir(number) / HANDOFF_FILE
    if not path.is_file():
        return
    recorded = Handoff(**json.loads(path.read_text()))
    directory = cfg.stage_dir(recorded.stage) / "ckpt"
    if not directory.is_dir() or not any(child.name.isdigit() for child in directory.iterdir()):
        log.warning("stage %d: cannot check that it still follows from stage %d, whose checkpoint directory %s "
                    "holds no checkpoint", number, recorded.stage, directory)
        return
    previous = cfg.stage(recorded.stage)
    with Checkpointer(directory, keep=previous.keep, divergence_factor=previous.divergence_factor,
                      read_only=True) as ckpt:  # the newest checkpoint's meta: no array is restored
        step = max(ckpt.steps(), default=None)
        fingerprint = None if step is None else ckpt.fingerprint(step)
    _check_finished(recorded.stage, step, previous.steps, directory)
    if (step, fingerprint) == (recorded.step, recorded.fingerprint):
        return
    later = [s.stage for s in cfg.stages if s.stage >= number and cfg.stage_dir(s.stage).exists()]
    dirs = " ".join(str(cfg.stage_dir(s)) for s in later)
    change = (f"stage {recorded.stage} now ends at step {step}" if step != recorded.step else
              f"stage {recorded.stage}'s final checkpoint (step {step}) holds other parameters")
    raise StaleStageError(
        f"stage {number} in {cfg.stage_dir(number)} was trained from stage {recorded.stage} at step {recorded.step}, "
        f"but {change}: stage(s) {', '.join(map(str, later))} no longer follow from it. To retrain them from the "
        f"new stage {recorded.stage}, remove {dirs} (or train into a new workdir); to keep them, train stage "
        f"{recorded.stage} as before (stage{recorded.stage}.steps={recorded.step})")

