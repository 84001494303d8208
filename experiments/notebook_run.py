"""The run a notebook probes: a finished run when there is one, else a small run trained once for the notebooks.

Each notebook's first cell calls `notebook_run()`:

- `$SAGE_RUN_DIR` (default `runs/demo`, where `make demo` trains) is loaded with `sage_jax.load_run` when it
  holds a run whose last stage has finished;
- otherwise the run of `experiments/configs/notebook.py` in `$SAGE_NOTEBOOK_RUN_DIR` (default `runs/notebook`)
  is loaded, after training it there (about a minute on 2 cores) when it has not finished; a second notebook
  finds it finished and only loads it.

Relative directories are taken from the repository root, so the kernel's working directory does not matter.
"""

from __future__ import annotations

import os
import pathlib
from typing import Optional

import sage_jax as sj
from experiments.configs import notebook
from sage_jax.train import StageOrderError, train_run

RUN_DIR_ENV = "SAGE_RUN_DIR"
NOTEBOOK_RUN_DIR_ENV = "SAGE_NOTEBOOK_RUN_DIR"
DEFAULT_RUN_DIR = "runs/demo"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """`path` itself when absolute, else relative to the repository root."""
    path = pathlib.Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def notebook_run(run_dir: Optional[str | os.PathLike] = None) -> sj.Run:
    """The finished run in `run_dir` (default `$SAGE_RUN_DIR` or `runs/demo`), else the small notebook run
    (trained into `$SAGE_NOTEBOOK_RUN_DIR` or `runs/notebook` first when it has not finished there)."""
    wanted = resolve(run_dir or os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))
    try:
        return sj.load_run(wanted)
    except (FileNotFoundError, StageOrderError) as err:
        reason = err
    config = notebook.get_config()
    config.workdir = str(resolve(os.environ.get(NOTEBOOK_RUN_DIR_ENV, config.workdir)))
    try:
        return sj.load_run(config.workdir)
    except (FileNotFoundError, StageOrderError):
        pass
    print(f"no finished run in {wanted} ({reason})\ntraining the small notebook run into {config.workdir} "
          "(about a minute)")
    train_run(config.to_dict())
    return sj.load_run(config.workdir)
