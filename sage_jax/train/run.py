"""A run directory that describes itself, and `load_run(run_dir) -> Run`: a trained run in one call.

`train_run(config)` writes the config it trains with into `<workdir>/config.json` before training: the whole
mapping (`ml_collections.ConfigDict.to_dict()` of an `experiments/configs` file, or a plain dict in the layout of
`sage_jax.train.curriculum_from_dict`), sections that only experiments read (such as `eval`)
included. Each stage writes `stage<N>/ckpt`. So `load_run` needs the directory and nothing else: a run can be
moved, shared, or analysed from a notebook without the config file it was trained with. A later training call
on the same directory rewrites `config.json` with its own config (e.g. more steps for a stage), which is the
config its checkpoints were written under.

    run = load_run("runs/demo")
    out = sage_jax.forward(run.params, tokens, run.cfg)        # tokens [B, T] -> logits [B, T, V]
    explanation = sage_jax.interpret.explain(run.params, run.cfg, question, rationale, tokenizer=run.tokenizer)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, TextIO

import jax
from jax.sharding import Mesh

from sage_jax.config import SageConfig
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.model import Params
from sage_jax.train.curriculum.config import CurriculumConfig
from sage_jax.train.curriculum.handoff import final_state
from sage_jax.train.curriculum.parse import curriculum_from_dict
from sage_jax.train.curriculum.stages import StageResult, run_curriculum
from sage_jax.train.lock import WorkdirLock
from sage_jax.train.step import Consistency

CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run: what an analysis needs, loaded from its directory by `load_run`.

    Attributes:
      run_dir: the run directory.
      config: its `config.json` as saved (the curriculum's mapping and the sections only experiments read,
        such as `eval`).
      curriculum: the curriculum parsed from `config`, its `workdir` set to `run_dir` (so a moved run still
        reads its own checkpoints).
      stage: the stage whose final parameters these are.
      cfg: the model config (static: pass it to `sage_jax.forward`, `sage_jax.interpret.explain`, ...).
      params: the model parameters (block parameters carry a leading `[L]` layer axis).
      inverse: the trained Inverse Analysis Layer's parameters, or None when that stage trained none.
      tokenizer: the shipped tokenizer of `cfg.vocab_size`.
    """

    run_dir: pathlib.Path
    config: Mapping[str, Any]
    curriculum: CurriculumConfig
    stage: int
    cfg: SageConfig
    params: Params
    inverse: Optional[Params]
    tokenizer: Tokenizer


def save_config(config: Mapping[str, Any]) -> pathlib.Path:
    """Writes `config` as `<config["workdir"]>/config.json` (process 0 only) and returns that path.

    The config is parsed first, so one that `load_run` could not read fails here, before any training.

    Raises:
      ValueError: `config` is not a valid curriculum config (the message names the field) or not JSON data.
    """
    curriculum_from_dict(config)
    path = pathlib.Path(config["workdir"]) / CONFIG_FILE
    try:
        text = json.dumps(config, indent=2)
    except TypeError as err:
        raise ValueError(f"the run config must be JSON data (numbers, strings, lists, mappings): {err}") from None
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def train_run(config: Mapping[str, Any], stages: Optional[Sequence[int]] = None, *,
              consistency: Optional[Mapping[int, Consistency]] = None, mesh: Optional[Mesh] = None,
              progress_stream: Optional[TextIO] = None) -> dict[int, StageResult]:
    """Writes `config.json` into the config's `workdir`, then runs (or resumes) the curriculum's `stages`,
    holding the workdir's lock (`sage_jax.train.lock`; process 0 only) throughout.

    Args and the result are those of `sage_jax.train.run_curriculum`, with the curriculum given as
    its config mapping (so that the run directory can describe itself).

    Raises:
      WorkdirLockedError: another run is training in the same workdir.
    """
    cfg = curriculum_from_dict(config)
    lock = WorkdirLock(config["workdir"])
    if jax.process_index() == 0:
        lock.acquire()
    try:
        save_config(config)
        return run_curriculum(cfg, stages, consistency=consistency, mesh=mesh, progress_stream=progress_stream)
    finally:
        lock.release()


def load_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The config a run was trained with: its `config.json`.

    Raises:
      FileNotFoundError: `run_dir` is not a directory, or holds no `config.json` (the message says how to
        write one).
      ValueError: `config.json` is not valid JSON (the message names the line).
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run in {run_dir}: it is not a directory. Train one with `python -m "
                                f"experiments.train --config=<config file> --config.workdir={run_dir}`")
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no {CONFIG_FILE}, so nothing says which curriculum trained it. Training writes it: "
            f"re-run `python -m experiments.train --config=<the config file it was trained with> "
            f"--config.workdir={run_dir}` (finished stages are not trained again), or save that config's "
            f"`to_dict()` there with `sage_jax.train.run.save_config`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def load_run(run_dir: str | os.PathLike, *, stage: Optional[int] = None) -> Run:
    """Loads a trained run from its directory: config, final parameters, the trained IAL, tokenizer.

    Args:
      run_dir: a directory a curriculum trained into (it holds `config.json` and `stage<N>/ckpt`); relative
        paths are taken from the working directory.
      stage: whose final parameters (default: the curriculum's last stage).

    Raises:
      FileNotFoundError: no run directory, or one without `config.json` (see `load_config`).
      ValueError: `stage` is not a stage of the run's curriculum.
      StageOrderError: that stage has not finished (the message names its checkpoint directory).
    """
    run_dir = pathlib.Path(run_dir).expanduser()
    config = load_config(run_dir)
    curriculum = curriculum_from_dict({**config, "workdir": str(run_dir)})
    stage = curriculum.stages[-1].stage if stage is None else curriculum.stage(stage).stage
    state = final_state(curriculum, stage)
    return Run(run_dir=run_dir, config=config, curriculum=curriculum, stage=stage, cfg=curriculum.model,
               params=state.params, inverse=state.inverse, tokenizer=Tokenizer.load(curriculum.model.vocab_size))
