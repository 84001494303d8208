r"""Train the curriculum (all stages, or some), resuming from the latest valid checkpoints.

    python -m experiments.train --config=experiments/configs/tiny.py --config.stage2.steps=1200 --stages=2,3

Writes the config into `<workdir>/config.json` (so `sage_jax.load_run(workdir)` needs nothing else), and each
stage writes `<workdir>/stage<N>/{ckpt,logs}`; a re-run continues where the last one stopped.
"""

from __future__ import annotations

import jax
from absl import app, flags
from absl import logging as absl_logging

from experiments.config_file import define_config_file
from sage_jax.train import curriculum_from_dict
from sage_jax.train.run import train_run
from sage_jax.train.sharding import make_mesh

_CONFIG = define_config_file("config", "experiments/configs/tiny.py", "Curriculum config file.")
_STAGES = flags.DEFINE_list("stages", None, "Stages to run, e.g. 1,2,3 or 2 (default: all in the config).")
_FSDP = flags.DEFINE_integer("fsdp", 1, "With several devices: the mesh's fsdp axis size (data = devices / fsdp).")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value.to_dict()
    cfg = curriculum_from_dict(config)
    stages = None if _STAGES.value is None else [int(s) for s in _STAGES.value]
    devices = jax.device_count()
    if _FSDP.value < 1 or devices % _FSDP.value:
        raise app.UsageError(f"--fsdp={_FSDP.value} must be a positive divisor of the {devices} device(s) this "
                             "process sees")
    mesh = None if devices == 1 else make_mesh(data=devices // _FSDP.value, fsdp=_FSDP.value)
    for number, result in train_run(config, stages, mesh=mesh).items():
        summary = ", ".join(f"{k} {v:.4f}" for k, v in result.eval.items())
        resumed = "" if result.resumed_from is None else f" (resumed from step {result.resumed_from})"
        print(f"stage {number}: step {int(result.state.step)} in {cfg.stage_dir(number)}{resumed}"
              + (f"; held-out {summary}" if summary else "; already finished"))
        for (source, reason), count in sorted(result.dropped.items()):
            print(f"  dropped {count} examples of {source}: {reason}")


if __name__ == "__main__":
    app.run(main)
