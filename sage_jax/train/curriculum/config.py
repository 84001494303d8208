"""The curriculum's static configuration: the whole run (`CurriculumConfig`), each stage (`StageConfig`) and a
stage's explanation targets (`TargetsConfig`), validated at construction with errors that name the field.

They are frozen and hashable, so a stage's `StepConfig` (built by `StageConfig.step_config`) can key the cache
of compiled steps.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

from sage_jax.config import SageConfig
from sage_jax.data.annotated import ON_BAD_LINE
from sage_jax.data.mixture import Mixture
from sage_jax.data.procedural import ChainSumKnobs, VariableChainKnobs
from sage_jax.train.consistency import ConsistencyConfig
from sage_jax.train.losses import LossConfig
from sage_jax.train.optim import OptimConfig
from sage_jax.train.state import StepConfig

@dataclasses.dataclass(frozen=True)
class TargetsConfig:
    """Where a stage's explanation targets come from, besides true dependencies (static).

    Attributes:
      self_problems: problems per `self/<task>` source that the previous stage's model analyses (the pool is
        analysed once, at the stage's first batch, and cycled; the held-out pool has at most
        `eval_batches * batch_size`).
      self_top_k: source tokens each step's rendered explanation names.
      annotated_path: a JSONL file of annotated explanations (`sage_jax.data.annotated` documents the schema),
        mixed in as source `annotated/<file name>` with weight `annotated_weight`; None: none.
      annotated_weight: its mixture weight (relative to the mixture's other weights).
      on_bad_line: "raise" (stop at the first bad line, naming file:line) or "skip" (log each and go on).
    """

    self_problems: int = 256
    self_top_k: int = 2
    annotated_path: Optional[str] = None
    annotated_weight: float = 0.2
    on_bad_line: str = "raise"

    def __post_init__(self):
        for name in ("self_problems", "self_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"targets {name} must be a positive integer, got {value!r}")
        if self.on_bad_line not in ON_BAD_LINE:
            raise ValueError(f"targets on_bad_line={self.on_bad_line!r}: choose one of {ON_BAD_LINE}")
        if not isinstance(self.annotated_weight, (int, float)) or not 0 < self.annotated_weight < float("inf"):
            raise ValueError(f"targets annotated_weight must be a positive number, got {self.annotated_weight!r}")


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One curriculum stage (static).

    Attributes:
      stage: 1 (pretraining), 2 (chain-of-thought) or 3 (meta-learning); names the directory `stage<N>`.
      steps: optimizer updates of this stage.
      mixture: sources, weights and the segments that carry loss.
      seq_len: tokens per row; examples that do not fit are dropped and counted by the pipeline.
      batch_size: rows per update.
      optim: optimizer and schedule (its `total_steps` should be `steps`).
      loss: loss weights; `lambda_consistency` is the weight of the consistency hook.
      microbatches: gradient-accumulation steps per update.
      checkpoint_every: also checkpoint every this many steps (0: only at the end and at eval points).
      eval_every: evaluate held-out batches every this many steps (0: only at the end of the stage).
      eval_batches: held-out batches per evaluation.
      keep: checkpoints kept (besides the last good one, which rotation never deletes).
      divergence_factor: a checkpoint whose loss exceeds this multiple of the stage's first loss is unhealthy:
        never the last good one, and passed over on resume (see `sage_jax.train.checkpoint`).
      inverse_optim: train the Inverse Analysis Layer jointly with this optimizer (its own parameter group);
        None: the stage has no IAL.
      consistency: settings of the default consistency loss (`IALConsistency`).
      targets: self-analysis and annotated explanation targets.
    """

    stage: int
    steps: int
    mixture: Mixture
    seq_len: int
    batch_size: int
    optim: OptimConfig
    loss: LossConfig = LossConfig(lambda_consistency=0.0)
    microbatches: int = 1
    checkpoint_every: int = 0
    eval_every: int = 0
    eval_batches: int = 2
    keep: int = 2
    divergence_factor: float = 10.0
    inverse_optim: Optional[OptimConfig] = None
    consistency: ConsistencyConfig = ConsistencyConfig()
    targets: TargetsConfig = TargetsConfig()

    def __post_init__(self):
        if self.stage not in (1, 2, 3):
            raise ValueError(f"StageConfig.stage={self.stage!r} must be 1, 2 or 3")
        for name in ("steps", "seq_len", "batch_size", "microbatches", "eval_batches", "keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"stage{self.stage}.{name} must be a positive integer, got {value!r}")
        for name in ("checkpoint_every", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"stage{self.stage}.{name} must be an integer >= 0, got {value!r}")
        if not (isinstance(self.divergence_factor, (int, float)) and self.divergence_factor > 1):
            raise ValueError(f"stage{self.stage}.divergence_factor must be a number greater than 1, got "
                             f"{self.divergence_factor!r}")
        if self.batch_size % self.microbatches:
            raise ValueError(f"stage{self.stage}.batch_size={self.batch_size} is not divisible by "
                             f"microbatches={self.microbatches}")

    def step_config(self, model: SageConfig) -> StepConfig:
        """The train step's static configuration for `model`."""
        return StepConfig(model=model, optim=self.optim, loss=self.loss, microbatches=self.microbatches,
                          inverse_optim=self.inverse_optim)


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    """A whole curriculum run (static).

    Attributes:
      model: the model architecture, shared by every stage.
      stages: the stages in order; each starts from the previous one's final parameters.
      workdir: where every stage writes `stage<N>/ckpt` and `stage<N>/logs`.
      seed: initialisation, stage keys and data order.
      source_size: distinct items per generated source.
      chain_sum, variable_chain: difficulty of the procedural sources.
      max_steps: rows of the step-dependency tensor (examples with more steps are dropped).
      peak_flops: the summed peak FLOP/s of the devices used, for MFU: an explicit override of the theoretical
        peak (None: `sage_jax.train.peak.devices_peak_flops` of the devices used, and no MFU where it is not
        known).
      measured_gemm_flops: a GEMM rate measured on the machine, reported beside MFU as `mfu_of_measured_gemm`
        (None: not reported).
      progress_every: redraw the progress line every this many steps.
    """

    model: SageConfig
    stages: tuple[StageConfig, ...]
    workdir: str
    seed: int = 0
    source_size: int = 100_000
    chain_sum: ChainSumKnobs = ChainSumKnobs()
    variable_chain: VariableChainKnobs = VariableChainKnobs()
    max_steps: int = 16
    peak_flops: Optional[float] = None
    measured_gemm_flops: Optional[float] = None
    progress_every: int = 10

    def __post_init__(self):
        if not str(self.workdir).strip():  # "" would train into the current directory
            raise ValueError("CurriculumConfig.workdir is empty: name the run directory (--config.workdir=DIR)")
        for name in ("peak_flops", "measured_gemm_flops"):
            flops = getattr(self, name)
            if flops is not None and (isinstance(flops, bool) or not isinstance(flops, (int, float)) or flops <= 0):
                raise ValueError(f"CurriculumConfig.{name} must be a positive FLOP/s or None, got {flops!r}")
        object.__setattr__(self, "stages", tuple(self.stages))
        numbers = [s.stage for s in self.stages]
        if not numbers or len(set(numbers)) != len(numbers):
            raise ValueError(f"CurriculumConfig.stages must name each stage once, got stages {numbers}")
        for stage in self.stages:
            if stage.seq_len > self.model.max_seq_len:
                raise ValueError(f"stage{stage.stage}.seq_len={stage.seq_len} exceeds the model's max_seq_len="
                                 f"{self.model.max_seq_len}")

    def stage(self, number: int) -> StageConfig:
        """The config of stage `number`."""
        for stage in self.stages:
            if stage.stage == number:
                return stage
        raise ValueError(f"the curriculum has no stage {number}; it has {[s.stage for s in self.stages]}")

    def previous(self, number: int) -> Optional[StageConfig]:
        """The stage that stage `number` starts from, or None for the first."""
        index = [s.stage for s in self.stages].index(self.stage(number).stage)
        return self.stages[index - 1] if index else None

    def stage_dir(self, number: int) -> pathlib.Path:
        """`<workdir>/stage<number>`."""
        return pathlib.Path(self.workdir) / f"stage{number}"
