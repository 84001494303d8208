"""Multi-process training: joining a `jax.distributed` cluster, and feeding each process's rows of a batch.

On the CPU backend (the Mac-cluster profile, and tests on localhost) the processes' devices talk through gloo
over TCP; `initialize` selects it explicitly rather than relying on jax's default, which has changed between
versions. After `initialize`, `jax.devices()` lists every process's devices, so `sharding.make_mesh()` builds
the global mesh, and `init_train_state` / `compile_train_step` work unchanged: every process runs the same
program on the same global arrays and XLA inserts the cross-process collectives.

The one thing that differs is the batch: each process holds only its own devices' rows. `process_rows` says
which rows of the global batch those are (a data loader reads just those), and `global_batch` assembles the
global `jax.Array`s from them without any process seeing the others' data.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from sage_jax.train.sharding import BATCH_AXES, batch_sharding

CPU_COLLECTIVES = "gloo"


def initialize(coordinator_address: str, num_processes: int, process_id: int,
               local_device_count: Optional[int] = None, *, timeout_s: int = 300) -> None:
    """Joins this process to a `jax.distributed` cluster, with gloo collectives on the CPU backend.

    Call it once per process, before anything touches a jax backend (`jax.devices()` included).

    Args:
      coordinator_address: `"host:port"` of process 0, which also starts the coordination service there;
        the same string on every process.
      num_processes: how many processes join.
      process_id: this process's index in `[0, num_processes)`.
      local_device_count: CPU devices to create in this process (`jax_num_cpu_devices`; simulated devices
        that split the host's cores); `None` keeps jax's default (`--xla_force_host_platform_device_count`,
        else one).
      timeout_s: how long to wait for all processes to connect before failing.
    """
    if local_device_count is not None:
        if not isinstance(local_device_count, int) or local_device_count < 1:
            raise ValueError(f"initialize: local_device_count must be a positive integer, got "
                             f"{local_device_count!r}")
        jax.config.update("jax_num_cpu_devices", local_device_count)
    jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
    # "deactivate": the arguments are complete, so a Slurm or MPI environment must not override them.
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, cluster_detection_method="deactivate",
                               initialization_timeout=timeout_s)


def process_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
    """The rows of a `[global_batch_size, ...]` batch that this process's devices hold under `mesh`.

    Returns:
      int row indices in ascending order, the order `global_batch` expects its local rows in
      (`[global_batch_size / process_count]` when every process holds distinct rows). On one process: all.
    """
    _check_mesh(mesh)
    shards = _batch_shards(mesh)
    if global_batch_size % shards:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the {shards} batch shards "
                         f"(mesh axes {BATCH_AXES} of {dict(mesh.shape)})")
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    spans = sorted({(index[0].start or 0, global_batch_size if index[0].stop is None else index[0].stop)
                    for index in indices.values()})
    return np.concatenate([np.arange(start, stop) for start, stop in spans])


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch arrays, split over `BATCH_AXES`, from this process's rows of them.

    Every process calls it with the same field names and its own rows (`batch[process_rows(mesh, B)]` for
    each field, in that order), and gets `jax.Array`s of the global shape `[B, ...]` of which it holds only
    its devices' shards.

    Args:
      local_batch: field name -> `[B / process_count, ...]` host array.
      mesh: the global `(data, fsdp)` mesh the step is compiled for.

    Returns:
      field name -> `[B, ...]` `jax.Array` with `sharding.batch_sharding(mesh)`.
    """
    _check_mesh(mesh)
    sizes = {name: np.shape(value)[0] if np.ndim(value) else None for name, value in local_batch.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"global_batch: every field needs the same leading (row) axis; got rows {sizes}")
    rows, shards = next(iter(sizes.values())), _batch_shards(mesh)
    local_shards = len(process_rows(mesh, shards))
    if rows % local_shards:
        raise ValueError(f"global_batch: {rows} rows cannot be split into this process's {local_shards} "
                         "batch shards")
    global_rows = rows // local_shards * shards
    sharding = batch_sharding(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value),
                                                         (global_rows,) + np.shape(value)[1:])
            for name, value in local_batch.items()}


def _batch_shards(mesh: Mesh) -> int:
    """How many pieces `batch_sharding(mesh)` cuts the batch into."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def _check_mesh(mesh: Mesh) -> None:
    if not set(BATCH_AXES) <= set(mesh.axis_names):
        raise ValueError(f"the batch is split over mesh axes {BATCH_AXES}, but the mesh has axes "
                         f"{tuple(mesh.axis_names)}; build it with sharding.make_mesh")
