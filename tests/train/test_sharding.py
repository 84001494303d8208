"""Partition rules by path, and (in a 4-device subprocess) the sharded step against the single-device one,
sharded initialisation, and restoring a checkpoint onto other device counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from sage_jax.train.paths import path_str
from sage_jax.train.sharding import DEFAULT_RULES, spec_for
from sage_jax.train.state import abstract_state
from tests.train.conftest import STEP_CFG

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = AbstractMesh((2, 2), ("data", "fsdp"))


def test_rules_shard_parameters_and_their_optimizer_slots_alike():
    state = abstract_state(STEP_CFG)
    specs = jax.tree_util.tree_map_with_path(
        lambda path, leaf: spec_for(path_str(path), leaf.shape, MESH),
        state)
    assert specs.params["embed"] == P(None, "fsdp")
    assert specs.params["layers"]["attn"]["q"]["kernel"] == P(None, "fsdp", None, None)
    assert specs.params["layers"]["attn"]["o"] == P(None, None, None, "fsdp")
    assert specs.params["unembed"]["kernel"] == P("fsdp", None)
    assert specs.params["layers"]["attn_norm"]["scale"] == P()
    adam = specs.opt_state[1][0]
    assert adam.mu == specs.params and adam.nu == specs.params
    assert specs.step == P() and specs.rng == P()


def test_rule_errors_name_the_path():
    with pytest.raises(ValueError, match=r"size 31 of 'params/embed' \(shape \(64, 31\)\).*size 2"):
        spec_for("params/embed", (64, 31), AbstractMesh((1, 2), ("data", "fsdp")))
    with pytest.raises(ValueError, match=r"rank 3 for 'params/w'"):
        spec_for("params/w", (4, 4), MESH, ((r"w$", P(None, None, "fsdp")),))
    with pytest.raises(ValueError, match=r"no partition rule matches 'params/w'"):
        spec_for("params/w", (4, 4), MESH, DEFAULT_RULES[:-1])


@pytest.fixture(scope="module")
def multidevice():
    flags = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=8"  # tests/conftest.py's and 8 CPUs
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "tests.train.multidevice_check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_sharded_step_on_a_4x2_mesh_matches_one_device(multidevice):
    assert multidevice["devices"] == 8
    assert multidevice["batch_sharding"] == [["data", "fsdp"]]
    # Same arithmetic, but reductions split across devices: float32 reordering only.
    sharded, single = multidevice["losses"]["sharded"], multidevice["losses"]["single"]
    assert sharded == pytest.approx(single, rel=1e-6) and sharded[2] < sharded[0]
    assert multidevice["param_diff"] < 1e-5


def test_sharded_initialisation_creates_shards_in_place(multidevice):
    assert multidevice["embed_shard_shapes"] == [[64, 16]]  # [V, D] with D split over fsdp = 2
    assert multidevice["mu_q_spec"] == [None, "fsdp", None, None]
    assert multidevice["init_diff"] == 0.0


def test_checkpoint_restores_onto_other_device_counts_exactly(multidevice):
    assert multidevice["restore_one_device_diff"] == 0.0 and multidevice["restore_one_device_devices"] == 1
    assert multidevice["restore_data8_diff"] == 0.0
    assert multidevice["restore_data8_mesh"] == {"data": 8, "fsdp": 1}
    assert multidevice["restore_data8_spec"] == [None, "fsdp"]


def test_compat_shard_map_runs_per_device_code(multidevice):
    assert multidevice["shard_map_sum"] == 120.0
