r"""Evaluate a curriculum run: answer accuracy on held-out procedural problems by number of steps and on
reasoning-gym tasks (each with its own scorer), and the meta head's calibration error.

    python -m experiments.evaluate --config=experiments/configs/tiny.py --config.eval.gym_tasks=chain_sum

Reads the final parameters of `--stage` (default: the curriculum's last stage) from the run's `workdir` and
writes `<workdir>/eval_stage<N>.json`.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from sage_jax.evaluate.suite import evaluate_run, format_table
from sage_jax.train.curriculum import curriculum_from_dict

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/tiny.py", "Curriculum config file.")
_STAGE = flags.DEFINE_integer("stage", None, "Evaluate this stage's final parameters (default: the last stage).")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    cfg = curriculum_from_dict(config.to_dict())
    results = evaluate_run(cfg, config.eval.to_dict(), _STAGE.value)
    out = pathlib.Path(cfg.workdir) / f"eval_stage{results['stage']}.json"
    out.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"written to {out}")



if __name__ == "__main__":
    app.run(main)
