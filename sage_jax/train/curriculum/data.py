"""A curriculum stage's data: its mixture's sources and the grain pipelines of its training and held-out batches.

Procedural sources take the curriculum's difficulty knobs; `self/<task>` sources render explanations from the
exact analysis that the previous stage's final model makes of `<task>` problems (`sage_jax.train.targets`), and
`annotated/<file>` sources read the stage's annotated JSONL (`sage_jax.data.annotated`). Held-out batches come
from the same mixture under another seed.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from sage_jax.data.annotated import AnnotatedSource
from sage_jax.data.explanations import with_explanation
from sage_jax.data.mixture import Mixture
from sage_jax.data.pipeline import DataPipeline, PipelineConfig, make_pipeline
from sage_jax.data.procedural import ProceduralSource
from sage_jax.data.sources import ExampleSource, MappedSource, make_source
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.train.curriculum.config import CurriculumConfig, StageConfig
from sage_jax.train.curriculum.handoff import final_state
from sage_jax.train.targets import SelfExplainedSource, self_explanations

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003
"""Held-out data uses `seed + EVAL_SEED_OFFSET` for its sources and shuffle, so it is a separate sample."""

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
