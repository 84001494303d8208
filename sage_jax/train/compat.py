"""The jax APIs that moved between the versions sage_jax supports, imported in one place.

The main profile runs the latest jax; the optional jax-metal profile pins jax 0.5.0 (see WORKSPACE.md).
Between the two, `shard_map` moved from `jax.experimental.shard_map` to `jax.shard_map` (and renamed its
`check_rep` flag to `check_vma`), meshes gained axis types, and optax's tree norm moved from
`optax.tree_utils.tree_l2_norm` (0.2.4, the metal pin) to `optax.tree.norm`. Everything else in `sage_jax.train` uses
APIs that exist unchanged in both (`jax.sharding.Mesh`, `NamedSharding`, `PartitionSpec`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

try:
    from optax.tree import norm as tree_norm  # optax >= 0.2.5
except ImportError:
    from optax.tree_utils import tree_l2_norm as tree_norm

try:
    from jax import shard_map as _shard_map
    _CHECK_FLAG = "check_vma"
except ImportError:  # jax < 0.7
    from jax.experimental.shard_map import shard_map as _shard_map
    _CHECK_FLAG = "check_rep"


def shard_map(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any, *, check: bool = True) -> Callable:
    """`fn` run per device on its shards (`jax.shard_map`), with the same keyword names on every jax version.

    Args:
      fn: the per-device function.
      mesh: the device mesh.
      in_specs, out_specs: `PartitionSpec` pytrees of the inputs and outputs.
      check: verify that outputs declared replicated really are (`check_vma` / `check_rep`).
    """
    return _shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **{_CHECK_FLAG: check})


def make_mesh(shape: Sequence[int], axis_names: Sequence[str],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` of `shape` over `devices` (default: all), laid out for the interconnect by `mesh_utils`.

    Axes are `Auto` where jax has axis types, so sharding follows `NamedSharding`s and jit's propagation
    (the behaviour of jax 0.5), never the explicit-sharding type system.
    """
    devices = list(jax.devices() if devices is None else devices)
    need = int(np.prod(shape))
    if need != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} over axes {tuple(axis_names)} needs {need} devices, "
                         f"got {len(devices)}")
    grid = mesh_utils.create_device_mesh(tuple(shape), devices=devices)
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:
        return Mesh(grid, tuple(axis_names))
    return Mesh(grid, tuple(axis_names), axis_types=(axis_type.Auto,) * len(shape))
