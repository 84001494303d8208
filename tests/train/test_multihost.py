"""Multi-process training on localhost: two processes with two CPU devices each join one `jax.distributed`
cluster (gloo collectives), train 3 steps on a 2 x 2 `(data, fsdp)` mesh over all four devices, each feeding
only its own rows, and must match the same steps on one device. Plus the batch helpers on one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from sage_jax.train import distributed
from sage_jax.train.checkpoint import Checkpointer
from sage_jax.train.sharding import batch_sharding, make_mesh
from sage_jax.train.state import abstract_state
from tests.conftest import COMPILE_FAST
from tests.train import multihost_check
from tests.train.conftest import make_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROCESSES, LOCAL_DEVICES, TIMEOUT_S = 2, 2, 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _json_line(stdout: str) -> dict:
    """The measurements: the last stdout line that is a JSON object (gloo logs to stdout as well)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in the process's stdout:\n{stdout[-3000:]}"
    return json.loads(lines[-1])


def _report(procs, outputs) -> str:
    return "\n".join(f"--- process {i} (rc {proc.returncode}) stderr:\n{err[-3000:]}"
                     for i, (proc, (_, err)) in enumerate(zip(procs, outputs)))


@pytest.fixture(scope="module")
def multihost(tmp_path_factory):
    params_npz = str(tmp_path_factory.mktemp("multihost") / "params.npz")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = COMPILE_FAST  # without any device count: that comes from initialize(...)
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.train.multihost_check", address, str(PROCESSES),
                               str(i), str(LOCAL_DEVICES), params_npz],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(PROCESSES)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        outputs = [proc.communicate() for proc in procs]
        pytest.fail(f"the two processes did not finish in {TIMEOUT_S} s\n{_report(procs, outputs)}")
    assert all(proc.returncode == 0 for proc in procs), _report(procs, outputs)
    results = [_json_line(out) for out, _ in outputs]
    with np.load(params_npz) as npz:
        params = dict(npz)
    return results, params, params_npz


@pytest.fixture(scope="module")
def one_device():
    state, losses = multihost_check.run_steps(None)
    return multihost_check.flat_params(jax.device_get(state.params)), losses


def test_each_process_sees_the_global_mesh_and_feeds_its_own_rows(multihost):
    results, _, _ = multihost
    assert [r["process_index"] for r in results] == [0, 1]
    for r in results:
        assert (r["process_count"], r["devices"], r["local_devices"]) == (2, 4, 2)
        assert r["mesh_processes"] == [[0, 0], [1, 1]]  # data across processes, fsdp within each
        assert r["embed_local_shards"] == 2
    assert results[0]["rows"] == [0, 1, 2, 3] and results[1]["rows"] == [4, 5, 6, 7]


def test_two_process_training_matches_one_device(multihost, one_device):
    results, params, _ = multihost
    single_params, single_losses = one_device
    # Metrics are replicated: every process reads the same numbers.
    assert results[0]["losses"] == results[1]["losses"]
    # Same arithmetic with reductions split across devices and processes: float32 reordering only
    # (the 8-device single-process check, multidevice_check, holds to the same bounds).
    assert results[0]["losses"] == pytest.approx(single_losses, rel=1e-6)
    assert single_losses[2] < single_losses[0]
    assert sorted(params) == sorted(single_params)
    chex.assert_trees_all_close(params, single_params, atol=1e-5, rtol=0)


def test_a_checkpoint_written_by_two_processes_restores_in_one(multihost):
    """Each process wrote its own shards of the 2 x 2 sharded state; one process with one device restores the
    whole state (model, optimizer, step, key, data position) onto its layout, equal to the gathered params."""
    _, params, params_npz = multihost
    directory = multihost_check.checkpoint_dir(params_npz)
    with Checkpointer(directory) as ckpt:
        restored = ckpt.restore_latest(abstract_state(multihost_check.CFG))
    assert restored.step == multihost_check.STEPS and restored.data_state == {"next": multihost_check.STEPS}
    chex.assert_trees_all_equal(multihost_check.flat_params(jax.device_get(restored.state.params)), params)
    assert int(restored.state.step) == multihost_check.STEPS


def test_batch_helpers_on_one_process_cover_the_whole_batch():
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    np.testing.assert_array_equal(distributed.process_rows(mesh, 8), np.arange(8))
    batch = make_batch(0, batch=8)
    arrays = distributed.global_batch(batch, mesh)
    assert arrays["tokens"].sharding == batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(arrays["segments"]), batch["segments"])


def test_batch_helpers_reject_bad_rows_and_meshes():
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    batch = make_batch(0, batch=8)
    with pytest.raises(ValueError, match=r"same leading \(row\) axis; got rows \{'tokens': 8, 'segments': 7\}"):
        distributed.global_batch({"tokens": batch["tokens"], "segments": batch["segments"][:7]}, mesh)
    with pytest.raises(ValueError, match=r"over mesh axes \('data', 'fsdp'\), but the mesh has axes \('batch',\)"):
        distributed.process_rows(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",)), 8)
    with pytest.raises(ValueError, match="global batch size 6 is not divisible by the 4 batch shards"):
        distributed.process_rows(jax.sharding.AbstractMesh((2, 2), ("data", "fsdp")), 6)


def test_initialize_rejects_a_bad_device_count_before_touching_jax():
    with pytest.raises(ValueError, match="local_device_count must be a positive integer, got 0"):
        distributed.initialize("localhost:1", 2, 0, local_device_count=0)
