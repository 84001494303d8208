"""The three-stage curriculum: stage 1 pretraining, stage 2 chain-of-thought fine-tuning, stage 3 meta-learning.

Each stage is one `StageConfig`: its own data mixture (whose `loss_segments` choose the target tokens, see
`sage_jax.train.step`), sequence length, batch size, optimizer schedule and loss weights, and its own directory
`<workdir>/stage<N>/` holding `ckpt/` (orbax checkpoints) and `logs/` (`metrics.jsonl` + TensorBoard events).

- Stage 1 starts from a fresh initialisation (`CurriculumConfig.seed`); every later stage starts from the
  *final* parameters of the stage before it in `CurriculumConfig.stages`, with a fresh optimizer state, step 0
  and its own PRNG key. A stage whose predecessor has not finished is an error, never a silent fresh start.
- Resume is automatic: `run_stage` restores the newest checkpoint of its stage that restores (model, optimizer,
  step, PRNG key and the grain iterator's position together) and continues from there; a finished stage is
  not run again. Batches are a pure function of the iterator position, so an interrupted and resumed stage
  is bitwise the run that was never interrupted (tested).
- Stage 3 trains on explanations from three kinds of source, mixed by weight in its mixture: rendered from the
  true dependencies of procedural problems (`procedural/<task>:w:explain`), rendered from the exact analysis that
  the model the stage starts from makes of its training problems (`self/<task>:w`, `sage_jax.train.targets`;
  the rendered pool is cached as `<stage dir>/targets/self_<task>[_heldout].jsonl`), and user-supplied annotated
  explanations (`StageConfig.targets.annotated_path`, JSONL, `sage_jax.data.annotated`).
- The Inverse Analysis Layer trains jointly where a stage sets `inverse_optim` (stage 3 by default): its params
  are `TrainState.inverse`, created when the stage starts unless the previous stage's state has them, and the
  consistency loss defaults to `sage_jax.train.consistency.IALConsistency` (weight
  `StageConfig.loss.lambda_consistency`). `run_stage(consistency=fn)` replaces it with any
  `fn(params, batch, out, key) -> scalar`. A positive weight with neither an IAL nor a function is an error (the
  run would not train what its config says).
- Evaluation during training (every `eval_every` steps and at the end of a stage): teacher-forced loss, token
  accuracy and the meta head's calibration error on held-out batches of the stage's own mixture (a pipeline
  with another seed), logged as `eval/...` beside the training metrics. A stage trains in pieces between
  evaluation points (`sage_jax.train.loop.train` per piece), and each piece ends with a checkpoint.
- Metrics are appended to `logs/metrics.jsonl`; a run that crashed after its last checkpoint logs the steps
  since that checkpoint again when resumed (same values, as resume is exact): keep the last row per step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from typing import Any, Mapping, Optional, Sequence, TextIO

import jax
import numpy as np
from jax.sharding import Mesh

from sage_jax import configs
from sage_jax.config import SageConfig
from sage_jax.data.annotated import AnnotatedSource
from sage_jax.data.explanations import with_explanation
from sage_jax.data.mixture import Mixture, SourceSpec, default_mixture
from sage_jax.data.pipeline import DataPipeline, PipelineConfig, make_pipeline
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource, VariableChainKnobs
from sage_jax.data.sources import ExampleSource, MappedSource, make_source
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.layout import Segment
from sage_jax.train.checkpoint import Checkpointer
from sage_jax.train.consistency import ConsistencyConfig, IALConsistency
from sage_jax.train.eval_stats import TokenStats, compile_token_stats
from sage_jax.train.loop import train
from sage_jax.train.losses import LossConfig
from sage_jax.train.metrics import MetricsWriter, Progress, Reporter, Throughput, flops_per_token
from sage_jax.train.optim import OptimConfig
from sage_jax.train.sharding import DEFAULT_RULES, Rules, tree_shardings
from sage_jax.train.state import StepConfig, TrainState, abstract_state, attach_optimizer, init_train_state
from sage_jax.train.step import Consistency, compile_train_step
from sage_jax.train.targets import SelfExplainedSource, self_explanations

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003
"""Held-out data uses `seed + EVAL_SEED_OFFSET` for its sources and shuffle, so it is a separate sample."""


class StageOrderError(RuntimeError):
    """A stage was asked to start before the stage it starts from had finished."""


ON_BAD_LINE = ("raise", "skip")


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
      keep: checkpoints kept.
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
      peak_flops: device peak FLOP/s for MFU (None: MFU not reported).
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
    progress_every: int = 10

    def __post_init__(self):
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


def build_sources(cfg: CurriculumConfig, mixture: Mixture, seed: int, data_dir: Optional[str] = None, *,
                  stage: Optional[StageConfig] = None, tokenizer: Optional[Tokenizer] = None,
                  held_out: bool = False) -> tuple[ExampleSource, ...]:
    """The mixture's sources, procedural ones with `cfg`'s difficulty knobs, each seeded from `(seed, i)`.

    `self/<task>` sources (the previous stage's model's analysis of `<task>` problems) and `annotated/..` sources
    belong to `stage` (default: the curriculum stage whose mixture `mixture` is); `held_out` picks the held-out
    self-analysis pool. Self-analysis sources are lazy: nothing is analysed until a batch needs one of their items.
    """
    knobs = {"procedural/chain_sum": cfg.chain_sum, "procedural/variable_chain": cfg.variable_chain}
    sources = []
    for i, spec in enumerate(mixture.sources):
        source_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        kind, _, task = spec.name.partition("/")
        if spec.name in knobs and not spec.multiple_choice:
            source: ExampleSource = ProceduralSource(knobs[spec.name], size=cfg.source_size, seed=source_seed)
            if spec.explain:
                source = MappedSource(source, lambda ex, _: with_explanation(ex))
        elif kind == "self":
            source = _self_source(cfg, stage or _owner(cfg, mixture, spec.name), task, source_seed, tokenizer,
                                  held_out)
        elif kind == "annotated":
            source = _annotated_source(stage or _owner(cfg, mixture, spec.name))
        else:
            source = make_source(spec, size=cfg.source_size, seed=source_seed, data_dir=data_dir)
        sources.append(source)
    return tuple(sources)


def _owner(cfg: CurriculumConfig, mixture: Mixture, name: str) -> StageConfig:
    for stage in cfg.stages:
        if stage.mixture == mixture:
            return stage
    raise ValueError(f"source {name!r} belongs to a curriculum stage; its mixture is not one of this curriculum's")


def _self_source(cfg: CurriculumConfig, stage: StageConfig, task: str, seed: int, tokenizer: Optional[Tokenizer],
                 held_out: bool) -> SelfExplainedSource:
    knobs = {"chain_sum": cfg.chain_sum, "variable_chain": cfg.variable_chain}
    if task not in knobs:
        raise ValueError(f"stage{stage.stage}.mixture: source 'self/{task}' must name a procedural task, one of "
                         f"{['self/' + t for t in knobs]}")
    previous = cfg.previous(stage.stage)
    if previous is None:
        raise ValueError(f"stage{stage.stage}.mixture: 'self/{task}' needs a stage before stage {stage.stage} "
                         "whose model analyses the problems")
    tokenizer = Tokenizer.load(cfg.model.vocab_size) if tokenizer is None else tokenizer
    targets = stage.targets
    size = min(targets.self_problems, stage.eval_batches * stage.batch_size) if held_out else targets.self_problems

    def analyse(examples):
        params = final_state(cfg, previous.stage).params
        return [a.example for a in self_explanations(params, cfg.model, tokenizer, examples,
                                                     top_k=targets.self_top_k)]

    cache = cfg.stage_dir(stage.stage) / "targets" / f"self_{task}{'_heldout' if held_out else ''}.jsonl"
    problems = ProceduralSource(knobs[task], size=size, seed=seed)
    return SelfExplainedSource(problems, size, analyse, cache=str(cache))


def _annotated_source(stage: StageConfig) -> AnnotatedSource:
    if stage.targets.annotated_path is None:
        raise ValueError(f"stage{stage.stage}.mixture names an annotated source but stage{stage.stage}."
                         "annotated_path is not set")
    source = AnnotatedSource(stage.targets.annotated_path, on_bad_line=stage.targets.on_bad_line)
    for line, reason in source.file.skipped:
        log.warning("stage %d: skipped %s:%d: %s", stage.stage, source.file.path, line, reason)
    return source


def stage_pipeline(cfg: CurriculumConfig, stage: StageConfig, tokenizer: Tokenizer, *,
                   held_out: bool = False) -> DataPipeline:
    """The training (or, with `held_out`, the evaluation) pipeline of `stage`."""
    seed = cfg.seed + (EVAL_SEED_OFFSET if held_out else 0)
    pipe_cfg = PipelineConfig(seq_len=stage.seq_len, batch_size=stage.batch_size, max_steps=cfg.max_steps,
                              seed=seed % 2**31, source_size=cfg.source_size)
    sources = build_sources(cfg, stage.mixture, seed, stage=stage, tokenizer=tokenizer, held_out=held_out)
    for source in sources:  # analyse here, in the caller's thread, never inside grain's prefetch threads
        if isinstance(source, SelfExplainedSource):
            source.examples()
    return make_pipeline(stage.mixture, tokenizer, pipe_cfg, sources=sources)


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

    with Checkpointer(directory / "ckpt", keep=stage.keep) as ckpt:
        restored = ckpt.restore_latest(abstract_state(step_cfg, mesh))
        if restored is not None:
            for path, error in restored.skipped:
                log.warning("stage %d: skipped checkpoint %s (%s)", number, path, error)
            state = restored.state
            batches.set_state(restored.data_state)
            log.info("stage %d: resumed from %s (step %d)", number, restored.path, restored.step)
        else:
            state = initial_state(cfg, number, mesh)
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
        with MetricsWriter(directory / "logs") as writer:
            t = start
            while t < end:
                stop = end if not stage.eval_every else min(end, (t // stage.eval_every + 1) * stage.eval_every)
                reporter = Reporter(Throughput(fpt, cfg.peak_flops), writer, progress)
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


def initial_state(cfg: CurriculumConfig, number: int, mesh: Optional[Mesh] = None) -> TrainState:
    """The state stage `number` starts from: a fresh initialisation for the first stage, else the previous
    stage's final parameters with a fresh optimizer state, step 0 and the stage's own key."""
    step_cfg = cfg.stage(number).step_config(cfg.model)
    previous = cfg.previous(number)
    if previous is None:
        return init_train_state(step_cfg, stage_key(cfg, number), mesh)
    before = final_state(cfg, previous.stage, mesh)
    return state_from_params(step_cfg, before.params, stage_key(cfg, number), mesh, inverse=before.inverse)


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



STAGE_NAMES = ("stage1", "stage2", "stage3")
_OPTIM_FIELDS = tuple(f.name for f in dataclasses.fields(OptimConfig) if f.name != "total_steps")
_STAGE_FIELDS = ("steps", "mixture", "loss_segments", "seq_len", "batch_size", "microbatches", "checkpoint_every",
                 "eval_every", "eval_batches", "keep", "lambda_explanation", "lambda_meta", "consistency_weight",
                 "inverse", "inverse_peak_lr")
_CONSISTENCY_FIELDS = {f"consistency_{f.name}": f.name for f in dataclasses.fields(ConsistencyConfig)}
_TARGET_FIELDS = {f.name if f.name.startswith(("self_", "annotated_")) else f"annotated_{f.name}": f.name
                  for f in dataclasses.fields(TargetsConfig)}


def parse_mixture(spec: str, stage: int, loss_segments: str = "default") -> Mixture:
    """A `Mixture` from its text form, as config files and flags write it.

    Args:
      spec: `"default"` (`sage_jax.data.default_mixture(stage)`), or comma-separated
        `name:weight[:explain][:multiple_choice]`, e.g. `"procedural/chain_sum:0.7:explain,gym/chain_sum:0.3"`.
      stage: the stage, for the default.
      loss_segments: `"default"` (the default mixture's for `stage` when `spec` is default, else rationale and
        answer), or comma-separated segment names among `prompt, rationale, answer, explanation`.
    """
    base = default_mixture(stage)
    if spec.strip() == "default":
        sources = base.sources
    else:
        sources = []
        for entry in spec.split(","):
            name, *rest = [p.strip() for p in entry.split(":")]
            flags = set(rest[1:])
            if not rest or flags - {"explain", "multiple_choice"}:
                raise ValueError(f"stage{stage}.mixture entry {entry!r}: expected name:weight[:explain]"
                                 "[:multiple_choice]")
            try:
                weight = float(rest[0])
            except ValueError:
                raise ValueError(f"stage{stage}.mixture entry {entry!r}: weight {rest[0]!r} is not a number") from None
            sources.append(SourceSpec(name, weight, explain="explain" in flags,
                                      multiple_choice="multiple_choice" in flags))
    if loss_segments.strip() == "default":
        segments = base.loss_segments if spec.strip() == "default" else (Segment.RATIONALE, Segment.ANSWER)
    else:
        names = {s.name.lower(): s for s in Segment if s != Segment.PAD}
        unknown = [n for n in loss_segments.split(",") if n.strip().lower() not in names]
        if unknown:
            raise ValueError(f"stage{stage}.loss_segments: unknown segment(s) {unknown}; choose from {sorted(names)}")
        segments = tuple(names[n.strip().lower()] for n in loss_segments.split(","))
    return Mixture(sources=tuple(sources), loss_segments=segments)


def curriculum_from_dict(config: Mapping[str, Any]) -> CurriculumConfig:
    """A `CurriculumConfig` from a nested mapping (an `ml_collections.ConfigDict`'s `to_dict()`).

    Layout (see `experiments/configs/tiny.py`): `model` (a preset name), optional `model_overrides`
    (`SageConfig` fields to replace, e.g. `max_seq_len`), `workdir`, `seed`, `source_size`, `peak_flops`,
    `progress_every`, `data.{chain_sum, variable_chain}` (knob ranges), `data.max_steps`, and sections
    `stage1`, `stage2`, `stage3`, each with the `StageConfig` fields, the `OptimConfig` fields but
    `total_steps` (the stage's `steps`), `lambda_explanation`, `lambda_meta` and `consistency_weight`; for the
    IAL `inverse` (bool) and `inverse_peak_lr` (0 or absent: the stage's `peak_lr`), `consistency_<field>` for each
    `ConsistencyConfig` field; for explanation targets `self_problems`, `self_top_k`, `annotated_path` ("" for
    none), `annotated_weight` and `annotated_on_bad_line`. Unknown keys in a stage section are errors naming the
    key.
    """
    model = configs.get(config["model"])
    overrides = dict(config.get("model_overrides") or {})
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SageConfig)}
    if unknown:
        raise ValueError(f"model_overrides: unknown SageConfig field(s) {sorted(unknown)}")
    model = dataclasses.replace(model, **overrides) if overrides else model
    stages = []
    for number, name in enumerate(STAGE_NAMES, start=1):
        if name not in config:
            continue
        section = dict(config[name])
        known = set(_STAGE_FIELDS) | set(_OPTIM_FIELDS) | set(_CONSISTENCY_FIELDS) | set(_TARGET_FIELDS)
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"{name}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        optim = OptimConfig(total_steps=section["steps"],
                            **{k: section[k] for k in _OPTIM_FIELDS if k in section})
        inverse_optim = None
        if section.get("inverse", False):
            inverse_optim = dataclasses.replace(optim, peak_lr=section.get("inverse_peak_lr") or optim.peak_lr)
        consistency = ConsistencyConfig(**{field: section[key] for key, field in _CONSISTENCY_FIELDS.items()
                                           if key in section})
        targets = {field: section[key] for key, field in _TARGET_FIELDS.items() if key in section}
        targets = TargetsConfig(**{**targets, "annotated_path": targets.get("annotated_path") or None})  # "": none
        mixture = parse_mixture(section.get("mixture", "default"), number, section.get("loss_segments", "default"))
        if targets.annotated_path is not None:
            annotated = SourceSpec(f"annotated/{pathlib.Path(targets.annotated_path).name}",
                                   targets.annotated_weight)
            mixture = dataclasses.replace(mixture, sources=mixture.sources + (annotated,))
        loss = LossConfig(lambda_explanation=section.get("lambda_explanation", 1.0),
                          lambda_consistency=section.get("consistency_weight", 0.0),
                          lambda_meta=section.get("lambda_meta", 0.1))
        stages.append(StageConfig(
            stage=number, steps=section["steps"],
            mixture=mixture, seq_len=section["seq_len"], batch_size=section["batch_size"], optim=optim, loss=loss,
            inverse_optim=inverse_optim, consistency=consistency, targets=targets,
            **{k: section[k] for k in ("microbatches", "checkpoint_every", "eval_every", "eval_batches", "keep")
               if k in section}))
    data = dict(config.get("data", {}))
    knobs = {"chain_sum": ChainSumKnobs, "variable_chain": VariableChainKnobs}
    return CurriculumConfig(
        model=model, stages=tuple(stages), workdir=str(config["workdir"]), seed=int(config.get("seed", 0)),
        source_size=int(config.get("source_size", 100_000)),
        **{task: cls(**{k: tuple(v) for k, v in dict(data[task]).items()}) for task, cls in knobs.items()
           if task in data},
        max_steps=int(data.get("max_steps", 16)), peak_flops=config.get("peak_flops"),
        progress_every=int(config.get("progress_every", 10)))
