"""Training: losses, optimizer, train state, the jitted step, sharding, checkpoints, metrics, the loop and the
three-stage curriculum (`curriculum/`: `run_curriculum(curriculum_from_dict(config))` is all a run needs), and
the run directory (`run.py`: `train_run(config)` also writes `config.json`, so that `load_run(workdir)` loads it).

A run, in short:

    cfg = StepConfig(model=configs.get("tiny"), optim=OptimConfig(total_steps=1000), microbatches=4)
    mesh = make_mesh(data=1)                                  # (data, fsdp) over all devices
    state = init_train_state(cfg, jax.random.key(0), mesh)    # created sharded, never replicated
    with Checkpointer(workdir / "ckpt") as ckpt:
        if (restored := ckpt.restore_latest(abstract_state(cfg, mesh))) is not None:
            state = restored.state                            # and restore the data iterator from
                                                              # restored.data_state
        state = train(compile_train_step(cfg, mesh=mesh), state, batches, num_steps=1000,
                      checkpointer=ckpt, save_every=100, data_state=iterator_state, report=Reporter(...))

Across hosts, call `distributed.initialize(...)` first and feed each process's rows through
`distributed.global_batch(local_rows, mesh)`; everything else is unchanged.
"""

from sage_jax.train import distributed
from sage_jax.train.checkpoint import CheckpointError, Checkpointer, Restored
from sage_jax.train.consistency import ConsistencyConfig, IALConsistency
from sage_jax.train.curriculum.config import CurriculumConfig, StageConfig, TargetsConfig
from sage_jax.train.curriculum.handoff import StageOrderError, StaleStageError, final_state
from sage_jax.train.curriculum.parse import curriculum_from_dict
from sage_jax.train.curriculum.stages import run_curriculum, run_stage
from sage_jax.train.inverse_only import InverseOnlyConfig, compute_teachers, load_inverse, train_inverse_only
from sage_jax.train.losses import LossConfig
from sage_jax.train.loop import NonFiniteError, train
from sage_jax.train.metrics import MetricsWriter, Progress, Reporter, Throughput, flops_per_token
from sage_jax.train.optim import OptimConfig, make_optimizer
from sage_jax.train.run import Run, load_run, save_config, train_run
from sage_jax.train.sharding import DEFAULT_RULES, make_mesh
from sage_jax.train.state import StepConfig, TrainState, abstract_state, init_train_state
from sage_jax.train.step import compile_train_step, train_step

__all__ = ["CheckpointError", "Checkpointer", "ConsistencyConfig", "CurriculumConfig", "DEFAULT_RULES",
           "IALConsistency", "InverseOnlyConfig", "LossConfig", "MetricsWriter", "NonFiniteError", "OptimConfig",
           "Progress", "Reporter", "Restored", "Run", "StageConfig", "StageOrderError", "StaleStageError",
           "StepConfig", "TargetsConfig", "Throughput", "TrainState", "abstract_state", "compile_train_step",
           "compute_teachers", "curriculum_from_dict", "distributed", "final_state", "flops_per_token",
           "init_train_state", "load_inverse", "load_run", "make_mesh", "make_optimizer", "run_curriculum",
           "run_stage", "save_config", "train", "train_inverse_only", "train_run", "train_step"]
