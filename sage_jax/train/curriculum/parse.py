"""Curriculum configs from their written forms: `curriculum_from_dict` reads an ml_collections mapping (the
layout of `experiments/configs/tiny.py`), `parse_mixture` a mixture's text (`"procedural/chain_sum:0.7:explain"`).

Every bad entry is an error naming `stageN.field`, so a typo in a config file or a flag fails at start-up.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

from sage_jax import configs
from sage_jax.config import SageConfig
from sage_jax.data.mixture import Mixture, SourceSpec, default_mixture
from sage_jax.data.procedural import ChainSumKnobs, VariableChainKnobs
from sage_jax.layout import Segment
from sage_jax.train.consistency import ConsistencyConfig
from sage_jax.train.curriculum.config import CurriculumConfig, StageConfig, TargetsConfig
from sage_jax.train.losses import LossConfig
from sage_jax.train.optim import OptimConfig

STAGE_NAMES = ("stage1", "stage2", "stage3")
_OPTIM_FIELDS = tuple(f.name for f in dataclasses.fields(OptimConfig) if f.name != "total_steps")
_STAGE_FIELDS = ("steps", "mixture", "loss_segments", "seq_len", "batch_size", "microbatches", "checkpoint_every",
                 "eval_every", "eval_batches", "keep", "lambda_explanation", "lambda_meta", "consistency_weight",
                 "inverse", "inverse_peak_lr", "divergence_factor")
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
    `measured_gemm_flops`, `progress_every`, `data.{chain_sum, variable_chain}` (knob ranges), `data.max_steps`,
    and sections `stage1`, `stage2`, `stage3`, each with the `StageConfig` fields, the `OptimConfig` fields but
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
        steps = section.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:  # before OptimConfig reads it
            raise ValueError(f"{name}.steps must be a positive integer, got {steps!r}")
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
            **{k: section[k] for k in ("microbatches", "checkpoint_every", "eval_every", "eval_batches", "keep",
                                       "divergence_factor") if k in section}))
    data = dict(config.get("data", {}))
    knobs = {"chain_sum": ChainSumKnobs, "variable_chain": VariableChainKnobs}
    return CurriculumConfig(
        model=model, stages=tuple(stages), workdir=str(config["workdir"]), seed=int(config.get("seed", 0)),
        source_size=int(config.get("source_size", 100_000)),
        **{task: cls(**{k: tuple(v) for k, v in dict(data[task]).items()}) for task, cls in knobs.items()
           if task in data},
        max_steps=int(data.get("max_steps", 16)), peak_flops=config.get("peak_flops"),
        measured_gemm_flops=config.get("measured_gemm_flops"), progress_every=int(config.get("progress_every", 10)))
