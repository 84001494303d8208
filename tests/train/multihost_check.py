"""One process of the two-process localhost run of `test_multihost.py` (and, with no mesh, the single-device
reference it is compared with: `run_steps`).

    python -m tests.train.multihost_check COORDINATOR NUM_PROCESSES PROCESS_ID LOCAL_DEVICES PARAMS_NPZ

joins the cluster (`sage_jax.train.distributed.initialize`), builds the 2 x 2 `(data, fsdp)` mesh over all
processes' devices, runs `STEPS` sharded train steps on the global batches `make_batch(i, GLOBAL_BATCH)`,
of which this process feeds only its own rows, and prints one JSON object of measurements on a line of its
own (gloo writes its connection log to the same stdout). Process 0 also writes the final parameters, gathered
from every process, to PARAMS_NPZ (keyed by parameter path), and all processes together write the final state as
an orbax checkpoint to `checkpoint_dir(PARAMS_NPZ)`, each process its own shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sage_jax.train import distributed
from sage_jax.train.checkpoint import Checkpointer
from sage_jax.train.paths import path_str
from sage_jax.train.sharding import make_mesh
from sage_jax.train.state import TrainState, init_train_state
from sage_jax.train.step import compile_train_step
from tests.train.conftest import STEP_CFG, make_batch

STEPS = 3
GLOBAL_BATCH = 8
CFG = dataclasses.replace(STEP_CFG, microbatches=2)


def run_steps(mesh: Optional[Mesh]) -> tuple[TrainState, list[float]]:
    """`STEPS` updates from `init_train_state(CFG, key(0))`; under `mesh`, each process feeds its own rows."""
    state = init_train_state(CFG, jax.random.key(0), mesh)
    step = compile_train_step(CFG, mesh=mesh)
    losses = []
    for i in range(STEPS):
        batch = make_batch(i, batch=GLOBAL_BATCH)
        if mesh is not None:
            rows = distributed.process_rows(mesh, GLOBAL_BATCH)
            batch = distributed.global_batch({name: value[rows] for name, value in batch.items()}, mesh)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


def checkpoint_dir(params_npz: str) -> str:
    """Where the processes write their checkpoint: beside the gathered parameters."""
    return os.path.join(os.path.dirname(params_npz), "ckpt")


def flat_params(params) -> dict[str, np.ndarray]:
    """Host copies of `params` keyed by path (`"layers/attn/q/kernel"`)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {path_str(path): np.asarray(leaf) for path, leaf in leaves}


def main(coordinator: str, num_processes: int, process_id: int, local_devices: int, params_npz: str) -> dict:
    distributed.initialize(coordinator, num_processes, process_id, local_device_count=local_devices)
    mesh = make_mesh(data=2, fsdp=2)
    state, losses = run_steps(mesh)
    params = multihost_utils.process_allgather(state.params, tiled=True)
    with Checkpointer(checkpoint_dir(params_npz)) as ckpt:
        ckpt.save(state, {"next": STEPS})
    if process_id == 0:
        np.savez(params_npz, **flat_params(params))
    out = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "mesh_processes": [[d.process_index for d in row] for row in mesh.devices],
        "rows": distributed.process_rows(mesh, GLOBAL_BATCH).tolist(),
        "embed_local_shards": len(state.params["embed"].addressable_shards),
        "losses": losses,
    }
    jax.distributed.shutdown()
    return out


if __name__ == "__main__":
    address, count, index, devices, npz = sys.argv[1:]
    result = main(address, int(count), int(index), int(devices), npz)
    print("\n" + json.dumps(result), flush=True)  # own line: gloo logs to the same stdout
