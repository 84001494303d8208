"""Running the curriculum: each stage trains, resumes and evaluates held-out batches of its own mixture.

A stage trains in pieces between evaluation points (`sage_jax.train.loop.train` per piece, each ending with a
checkpoint), and resumes from the newest checkpoint that restores (model, optimizer, step, PRNG key and the
grain iterator's position together); a finished stage is not run again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Mapping, Optional, Sequence, TextIO

import jax
from jax.sharding import Mesh

from sage_jax.config import SageConfig
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.train.checkpoint import Checkpointer
from sage_jax.train.consistency import IALConsistency
from sage_jax.train.curriculum.config import CurriculumConfig, StageConfig
from sage_jax.train.curriculum.data import stage_pipeline
from sage_jax.train.curriculum.handoff import check_handoff, start_state, write_handoff
from sage_jax.train.eval_stats import TokenStats, compile_token_stats
from sage_jax.train.loop import train
from sage_jax.train.metrics import MetricsWriter, Progress, Reporter, Throughput, flops_per_token
from sage_jax.train.peak import devices_peak_flops
from sage_jax.train.state import StepConfig, TrainState, abstract_state
from sage_jax.train.step import Consistency, compile_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What `run_stage` did.

    Attributes:
      state: the state at the stage's last step reached.
      resumed_from: the checkpoint step it resumed from (None: it started the stage).
      eval: the last evaluation's metrics (empty when none ran).
      dropped: examples the training pipeline dropped, by `(source, reason)`.
    """

    state: TrainState
    resumed_from: Optional[int]
    eval: Mapping[str, float]
    dropped: Mapping[tuple[str, str], int]



def run_stage(cfg: CurriculumConfig, number: int, *, tokenizer: Optional[Tokenizer] = None,
              consistency: Consistency = None, mesh: Optional[Mesh] = None, until: Optional[int] = None,
              progress_stream: Optional[TextIO] = None) -> StageResult:
    """Runs (or resumes) stage `number` up to step `until` (default: the stage's `steps`).

    Args:
      cfg: the curriculum.
      number: which stage.
      tokenizer: defaults to `Tokenizer.load(cfg.model.vocab_size)`.
      consistency: the `L_consistency` hook passed to the train step (see `sage_jax.train.step`).
      mesh: a `(data, fsdp)` mesh, or None for one device.
      until: stop (with a checkpoint) after this many steps of the stage; a later call continues.
      progress_stream: where the progress line goes (default stderr).

    Raises:
      StageOrderError: the previous stage has not finished.
      StaleStageError: the stage's checkpoints were trained from a checkpoint of the previous stage that is no
        longer its final one (`handoff.check_handoff`).
      ValueError: the stage weights a consistency loss but no `consistency` was given.
    """
    stage = cfg.stage(number)
    end = stage.steps if until is None else min(until, stage.steps)
    if consistency is None and stage.inverse_optim is not None:
        consistency = IALConsistency(cfg.model, stage.consistency)
    if stage.loss.lambda_consistency > 0 and consistency is None:
        raise ValueError(f"stage{number}.loss.lambda_consistency={stage.loss.lambda_consistency} but the stage "
                         "trains no Inverse Analysis Layer (stage.inverse) and no consistency function was given "
                         "to run_stage; set the weight to 0, turn the IAL on, or pass a function")
    tokenizer = Tokenizer.load(cfg.model.vocab_size) if tokenizer is None else tokenizer
    step_cfg = stage.step_config(cfg.model)
    directory = cfg.stage_dir(number)
    pipeline = stage_pipeline(cfg, stage, tokenizer)
    batches = iter(pipeline)

    with Checkpointer(directory / "ckpt", keep=stage.keep, divergence_factor=stage.divergence_factor) as ckpt:
        restored = ckpt.restore_latest(abstract_state(step_cfg, mesh))
        if restored is not None:
            check_handoff(cfg, number)
            for path, error in restored.skipped:
                log.warning("stage %d: skipped checkpoint %s (%s)", number, path, error)
            state = restored.state
            batches.set_state(restored.data_state)
            log.info("stage %d: resumed from %s (step %d)", number, restored.path, restored.step)
        else:
            state, handoff = start_state(cfg, number, mesh)
            if handoff is not None:
                write_handoff(cfg, number, handoff)
        start = int(jax.device_get(state.step))
        evaluated: dict[str, float] = {}
        if start >= end:
            return StageResult(state=state, resumed_from=None if restored is None else restored.step,
                               eval=evaluated, dropped=dict(pipeline.dropped))
        step_fn = _compiled_step(step_cfg, mesh, consistency)
        evaluate = HeldOutEvaluator(cfg, stage, tokenizer)
        progress = Progress(stage.steps, every=cfg.progress_every,
                            **({} if progress_stream is None else {"stream": progress_stream}))
        fpt = flops_per_token(cfg.model, stage.seq_len)
        peak = _peak_flops(cfg, mesh)
        with MetricsWriter(directory / "logs") as writer:
            t = start
            while t < end:
                stop = end if not stage.eval_every else min(end, (t // stage.eval_every + 1) * stage.eval_every)
                reporter = Reporter(Throughput(fpt, peak, measured_gemm_flops=cfg.measured_gemm_flops), writer,
                                    progress)
                state = train(step_fn, state, batches, num_steps=stop, checkpointer=ckpt,
                              save_every=stage.checkpoint_every, data_state=batches.get_state, report=reporter)
                if stage.eval_every or stop == stage.steps:
                    evaluated = evaluate(state.params)
                    writer.write(stop - 1, {f"eval/{k}": v for k, v in evaluated.items()})
                writer.flush()
                t = stop
    return StageResult(state=state, resumed_from=None if restored is None else restored.step, eval=evaluated,
                       dropped=dict(pipeline.dropped))


def run_curriculum(cfg: CurriculumConfig, stages: Optional[Sequence[int]] = None, *,
                   consistency: Optional[Mapping[int, Consistency]] = None, mesh: Optional[Mesh] = None,
                   progress_stream: Optional[TextIO] = None) -> dict[int, StageResult]:
    """Runs (or resumes) the given stages (default: all, in order); finished stages are skipped."""
    numbers = [s.stage for s in cfg.stages] if stages is None else list(stages)
    tokenizer = Tokenizer.load(cfg.model.vocab_size)
    results = {}
    for number in numbers:
        hook = None if consistency is None else consistency.get(number)
        results[number] = run_stage(cfg, number, tokenizer=tokenizer, consistency=hook, mesh=mesh,
                                    progress_stream=progress_stream)
    return results


def _peak_flops(cfg: CurriculumConfig, mesh: Optional[Mesh]) -> Optional[float]:
    """The peak MFU is measured against: `cfg.peak_flops` when set, else the theoretical peak of the devices the
    stage runs on (None where it is not known: MFU is then not reported)."""
    if cfg.peak_flops is not None:
        log.info("MFU against peak_flops=%g FLOP/s from the config", cfg.peak_flops)
        return cfg.peak_flops
    devices = [jax.devices()[0]] if mesh is None else list(mesh.devices.flat)
    estimate = devices_peak_flops(devices, cfg.model.dtype)
    if estimate.flops is None:
        log.warning("MFU not reported: %s", estimate.derivation)
    else:
        log.info("MFU against the theoretical peak: %s", estimate.derivation)
    return estimate.flops


@functools.lru_cache(maxsize=8)
def _compiled_step(step_cfg: StepConfig, mesh: Optional[Mesh], consistency: Consistency):
    """One compiled step per (config, mesh, hook), shared by the runs of a process (resuming in-process, tests)."""
    return compile_train_step(step_cfg, mesh=mesh, consistency=consistency)


@functools.lru_cache(maxsize=8)
def _compiled_stats(model: SageConfig):
    return compile_token_stats(model)


class HeldOutEvaluator:
    """Teacher-forced statistics of held-out batches of a stage's mixture (the same batches every time)."""

    def __init__(self, cfg: CurriculumConfig, stage: StageConfig, tokenizer: Tokenizer):
        pipeline = stage_pipeline(cfg, stage, tokenizer, held_out=True)
        iterator = iter(pipeline)
        self._batches = [next(iterator) for _ in range(stage.eval_batches)]
        self._stats = _compiled_stats(cfg.model)

    def __call__(self, params) -> dict[str, float]:
        stats = TokenStats.merge([self._stats(params, batch) for batch in self._batches])
        return stats.summary()
