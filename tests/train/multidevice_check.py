"""Run by `test_sharding.py` in a subprocess with `--xla_force_host_platform_device_count=8` (XLA flags must
be set before jax starts). Prints one JSON object of measurements for the test to assert on."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sage_jax.train import compat
from sage_jax.train.checkpoint import Checkpointer
from sage_jax.train.sharding import make_mesh
from sage_jax.train.state import abstract_state, init_train_state
from sage_jax.train.step import compile_train_step
from tests.train.conftest import STEP_CFG, make_batch

STEPS = 3


def _max_diff(a, b) -> float:
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree_util.tree_leaves(diffs))


def _spec(spec: P) -> list:
    """A `PartitionSpec` as JSON (its `str` differs between jax versions)."""
    return [list(axes) if isinstance(axes, tuple) else axes for axes in spec]


def main() -> dict:
    cfg = dataclasses.replace(STEP_CFG, microbatches=2)
    mesh = make_mesh(data=4, fsdp=2)
    out = {"devices": jax.device_count()}

    sharded = init_train_state(cfg, jax.random.key(0), mesh)
    single = init_train_state(cfg, jax.random.key(0))
    out["embed_shard_shapes"] = sorted({s.data.shape for s in sharded.params["embed"].addressable_shards})
    out["mu_q_spec"] = _spec(sharded.opt_state[1][0].mu["layers"]["attn"]["q"]["kernel"].sharding.spec)
    out["init_diff"] = _max_diff(sharded.params, single.params)

    sharded_step, single_step = compile_train_step(cfg, mesh=mesh), compile_train_step(cfg)
    losses = {"sharded": [], "single": []}
    for i in range(STEPS):
        batch = make_batch(i, batch=16)
        sharded, m_sharded = sharded_step(sharded, batch)
        single, m_single = single_step(single, batch)
        losses["sharded"].append(float(m_sharded["loss"]))
        losses["single"].append(float(m_single["loss"]))
    out["losses"] = losses
    out["param_diff"] = _max_diff(sharded.params, single.params)
    out["batch_sharding"] = _spec(sharded_step.lower(sharded, make_batch(0, batch=16)).compile()
                                .input_shardings[0][1]["tokens"].spec)

    with tempfile.TemporaryDirectory() as directory, Checkpointer(directory) as ckpt:
        ckpt.save(sharded)
        ckpt.wait()
        on_one = ckpt.restore_latest(abstract_state(cfg)).state
        on_eight = ckpt.restore_latest(abstract_state(cfg, make_mesh(data=8, fsdp=1))).state
    saved = jax.device_get(sharded)
    out["restore_one_device_diff"] = _max_diff(jax.device_get(on_one.params), saved.params)
    out["restore_one_device_devices"] = len(on_one.params["embed"].sharding.device_set)
    out["restore_data8_diff"] = _max_diff(jax.device_get(on_eight.opt_state), saved.opt_state)
    out["restore_data8_spec"] = _spec(on_eight.params["embed"].sharding.spec)
    out["restore_data8_mesh"] = dict(on_eight.params["embed"].sharding.mesh.shape)

    total = compat.shard_map(lambda x: jax.lax.psum(jnp.sum(x), ("data", "fsdp")), mesh,
                             in_specs=P(("data", "fsdp")), out_specs=P())(jnp.arange(16.0))
    out["shard_map_sum"] = float(total)
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
