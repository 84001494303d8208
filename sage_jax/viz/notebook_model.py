"""The model a notebook probes: the demo's trained run when it exists, otherwise a small one trained on the spot.

Notebooks call `load_or_train()` in their first cell, so that each of them stays a few lines of setup:

- The run directory is `$SAGE_RUN_DIR`, or `runs/demo` (where `make demo` trains). Relative paths are taken
  from the repository root, not the working directory, so a notebook opened from `notebooks/` finds the run.
- A run is loaded when its last curriculum stage has finished. Its curriculum config is read from
  `<run>/config.json` (written by `train_notebook_run`); a run without one is taken to be the demo's and is
  read with the demo's config file, `experiments/configs/tiny.py` (or `$SAGE_RUN_CONFIG`), loaded by path as
  absl's `config_flags` would, so the library never imports `experiments`.
- Otherwise a small curriculum on chained sums (`notebook_curriculum`: the `test` model preset, about a minute
  on 2 CPU cores) is trained into `runs/notebook` (or `$SAGE_NOTEBOOK_RUN_DIR`) and loaded from there; a second
  notebook finds it finished and only loads it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

import sage_jax
from sage_jax.config import SageConfig
from sage_jax.data.schema import Example
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate.heldout import procedural_by_difficulty
from sage_jax.model import ForwardOutput, forward
from sage_jax.train import CurriculumConfig, curriculum_from_dict, final_state, run_curriculum

RUN_DIR_ENV = "SAGE_RUN_DIR"
RUN_CONFIG_ENV = "SAGE_RUN_CONFIG"
NOTEBOOK_RUN_DIR_ENV = "SAGE_NOTEBOOK_RUN_DIR"
DEFAULT_RUN_DIR = "runs/demo"
DEMO_CONFIG = "experiments/configs/tiny.py"
DEFAULT_NOTEBOOK_RUN_DIR = "runs/notebook"
CONFIG_FILE = "config.json"
REPO_ROOT = pathlib.Path(sage_jax.__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class RunModel:
    """A trained model and what a notebook needs beside it.

    Attributes:
      cfg: the model config (static; pass it to `sage_jax.forward`, `explain`, ...).
      params: the final parameters of the run's last stage.
      tokenizer: the shipped tokenizer of `cfg.vocab_size`.
      curriculum: the run's curriculum config (data knobs, stages, workdir).
      run_dir: where the run lives.
      trained_here: whether this call trained it (False: loaded a finished run).
    """

    cfg: SageConfig
    params: Any
    tokenizer: Tokenizer
    curriculum: CurriculumConfig
    run_dir: pathlib.Path
    trained_here: bool

    def forward(self, tokens, *, edits=None, record=None) -> ForwardOutput:
        """`sage_jax.forward` of this model, jitted (one compile per shape and `record`), on `[B, T]` or `[T]`
        tokens (a `[T]` sequence runs as a batch of one)."""
        tokens = jnp.asarray(tokens)
        record = tuple(record) if isinstance(record, (list, tuple)) else record
        return _jit_forward(self.params, tokens if tokens.ndim == 2 else tokens[None], self.cfg, edits=edits,
                            record=record)

    def problems(self, n_steps: int, count: int = 1, seed: int = 11) -> tuple[Example, ...]:
        """`count` held-out chained sums with `n_steps` rationale steps, from the run's own difficulty knobs."""
        return procedural_by_difficulty(self.curriculum.chain_sum, (n_steps,), count, seed=seed).examples


_jit_forward = jax.jit(forward, static_argnames=("cfg", "record"))


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """`path` itself when absolute, else relative to the repository root."""
    path = pathlib.Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def notebook_curriculum(workdir: str | os.PathLike, *, steps: Sequence[int] = (150, 400, 60),
                        seed: int = 0) -> dict:
    """The small fallback curriculum as a config mapping (`curriculum_from_dict` layout).

    The `test` model preset with the shipped 512-id tokenizer and a 64-token context, on chained sums of 2-3
    one-digit terms; stage 1 language modelling, stage 2 loss on the chain and answer, stage 3 with rendered
    explanations. `steps` are the three stages' update counts (the defaults take about a minute on 2 cores).
    """
    if len(steps) != 3 or any(int(s) < 1 for s in steps):
        raise ValueError(f"steps={tuple(steps)}: give three positive update counts, one per stage")

    def stage(n, mixture, segments, seq_len, batch_size, peak_lr):
        return dict(steps=int(n), mixture=mixture, loss_segments=segments, seq_len=seq_len, batch_size=batch_size,
                    peak_lr=peak_lr, warmup_steps=max(1, min(20, int(n) // 10)), end_lr_ratio=0.1,
                    checkpoint_every=0, eval_batches=1, keep=1)

    chain = "procedural/chain_sum:1"
    return dict(
        model="test", model_overrides=dict(vocab_size=512, max_seq_len=64), workdir=str(workdir), seed=seed,
        source_size=10_000, progress_every=max(steps), data=dict(chain_sum=dict(n_terms=[2, 3], max_value=[9, 9]),
                                                                 max_steps=16),
        stage1=stage(steps[0], chain, "prompt,rationale,answer", 32, 16, 1e-2),
        stage2=stage(steps[1], chain, "rationale,answer", 32, 16, 5e-3),
        stage3=stage(steps[2], chain + ":explain", "rationale,answer,explanation", 64, 8, 1e-3))


def train_notebook_run(workdir: str | os.PathLike, *, steps: Sequence[int] = (150, 400, 60),
                       progress_stream=None) -> CurriculumConfig:
    """Trains (or resumes, or finds finished) `notebook_curriculum` in `workdir` and writes its `config.json`."""
    config = notebook_curriculum(resolve(workdir), steps=steps)
    cfg = curriculum_from_dict(config)
    pathlib.Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(cfg.workdir) / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    run_curriculum(cfg, progress_stream=progress_stream)
    return cfg


def run_config(run_dir: pathlib.Path, config_file: Optional[str | os.PathLike] = None) -> CurriculumConfig:
    """The curriculum of the run in `run_dir`: its `config.json`, else the config file (demo's by default)."""
    saved = run_dir / CONFIG_FILE
    if saved.exists():
        try:
            config = json.loads(saved.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{saved}:{err.lineno}: not valid JSON ({err.msg})") from None
    else:
        config = load_config_file(resolve(config_file or os.environ.get(RUN_CONFIG_ENV, DEMO_CONFIG)))
    return curriculum_from_dict({**config, "workdir": str(run_dir)})


def load_config_file(path: pathlib.Path) -> dict:
    """`get_config().to_dict()` of an ml_collections config file, loaded by path (as absl `config_flags` does)."""
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist (set ${RUN_CONFIG_ENV} to the run's config)")
    spec = importlib.util.spec_from_file_location(f"_sage_run_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    return module.get_config().to_dict()


def is_finished(run_dir: pathlib.Path) -> bool:
    """Whether `run_dir` holds a checkpoint of stage 3 (the last stage of every curriculum here)."""
    ckpt = run_dir / "stage3" / "ckpt"
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def load_run(run_dir: str | os.PathLike, config_file: Optional[str | os.PathLike] = None) -> RunModel:
    """Loads the finished run in `run_dir` (its last stage's final parameters)."""
    run_dir = resolve(run_dir)
    cfg = run_config(run_dir, config_file)
    params = final_state(cfg, cfg.stages[-1].stage).params
    return RunModel(cfg.model, params, Tokenizer.load(cfg.model.vocab_size), cfg, run_dir, trained_here=False)


def load_or_train(run_dir: Optional[str | os.PathLike] = None, *, progress_stream=None) -> RunModel:
    """The run in `run_dir` (default `$SAGE_RUN_DIR` or `runs/demo`) when finished, else the small notebook run
    (trained into `$SAGE_NOTEBOOK_RUN_DIR` or `runs/notebook` when it is not there yet)."""
    wanted = resolve(run_dir or os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))
    if is_finished(wanted):
        return load_run(wanted)
    fallback = resolve(os.environ.get(NOTEBOOK_RUN_DIR_ENV, DEFAULT_NOTEBOOK_RUN_DIR))
    if is_finished(fallback) and (fallback / CONFIG_FILE).exists():
        return load_run(fallback)
    print(f"no finished run in {wanted}: training the small notebook curriculum into {fallback} (about a minute)")
    train_notebook_run(fallback, progress_stream=progress_stream)
    return dataclasses.replace(load_run(fallback), trained_here=True)
