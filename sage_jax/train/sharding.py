"""Device meshes and partition rules by parameter path.

The mesh has two axes: `data` (pure data parallelism: parameters replicated) and `fsdp` (fully sharded data
parallelism: parameters and optimizer state sharded, all-gathered by XLA where a layer uses them). The batch
is split over both. Parameters shard their `d_model` axis over `fsdp`, the axis every matrix has.

Rules are `(regex, PartitionSpec)` pairs matched with `re.search` against `sage_jax.train.paths.path_str` of
each leaf (`"params/layers/attn/q/kernel"`, `"opt_state/1/0/mu/layers/attn/q/kernel"`); the first match wins.
Block parameters carry a leading `[n_layers]` axis (the blocks are scanned), which the specs leave unsharded.
A rule whose spec has the wrong rank, or shards an axis the mesh cannot divide, is an error that names the
path: nothing falls back to replication silently. Scalars (step counters, the PRNG key) are replicated.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sage_jax.train import compat
from sage_jax.train.paths import path_str

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, P]]

ACTIVATION_RULES = (("batch", BATCH_AXES), ("length", None), ("embed", None))
"""Logical axes of the model's activation constraints (`nn.with_logical_constraint` in `sage_jax.nn.lm`) to mesh
axes: rows over the batch axes, positions and width whole. Without them the residual stream follows the
embedding's `d_model` sharding over `fsdp`, and XLA all-reduces whole microbatches of activations (the plan of
`nano_4b` on 12 x 16 GB: 27.6 GB and 2.0 TB per step at 4,096 tokens; WORKSPACE, "Scale")."""

DEFAULT_RULES: Rules = (
    (r"(^|/)inverse/", P()),                                    # the IAL (1.6% of nano_4b) and its Adam state
    (r"(^|/)embed$", P(None, "fsdp")),                          # [V, D]
    (r"unembed/kernel$", P("fsdp", None)),                      # [D, V]
    (r"attn/(q|k|v)/kernel$", P(None, "fsdp", None, None)),     # [L, D, heads, d]
    (r"attn/o$", P(None, None, None, "fsdp")),                  # [L, H, d, D]
    (r"ffn/(wi_gate|wi_up)/kernel$", P(None, "fsdp", None)),    # [L, D, F]
    (r"ffn/wo/kernel$", P(None, None, "fsdp")),                 # [L, F, D]
    (r".*", P()),                                               # norms, gates, meta head: small, replicated
)


def make_mesh(data: int = 1, fsdp: Optional[int] = None, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A `(data, fsdp)` mesh over `devices` (default all); `fsdp=None` takes the devices `data` leaves."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp is None:
        if len(devices) % data:
            raise ValueError(f"make_mesh: data={data} does not divide the {len(devices)} devices")
        fsdp = len(devices) // data
    return compat.make_mesh((data, fsdp), MESH_AXES, devices)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> P:
    """The `PartitionSpec` of the leaf at `path` with `shape`, checked against the mesh."""
    if len(shape) == 0:
        return P()
    for pattern, spec in rules:
        if re.search(pattern, path):
            break
    else:
        raise ValueError(f"no partition rule matches {path!r} (shape {tuple(shape)}); add one or a catch-all")
    if len(spec) > len(shape):
        raise ValueError(f"partition rule {pattern!r} gives {spec} of rank {len(spec)} for {path!r} of shape "
                         f"{tuple(shape)}")
    for dim, axes in zip(shape, spec):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in names]))
        if dim % size:
            raise ValueError(f"partition rule {pattern!r} shards an axis of size {dim} of {path!r} (shape "
                             f"{tuple(shape)}) over mesh axes {names} of size {size}, which does not divide it")
    return spec


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """`NamedSharding`s for every leaf of `tree` (arrays or `ShapeDtypeStruct`s), by path."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, spec_for(path_str(path), np.shape(leaf), mesh, rules)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays `[B, ...]`: the batch axis split over `data` and `fsdp`."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def activation_rules(mesh: Optional[Mesh]) -> Iterator[None]:
    """The context a step is traced in under `mesh`: the mesh and `ACTIVATION_RULES`, so that the model's
    logical activation constraints bind to it; nothing on one device (the constraints are then no-ops)."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(ACTIVATION_RULES):
        yield
