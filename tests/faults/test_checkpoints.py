"""Checkpoints under faults (issue 17): flipped bits, a diverging run, a failed background write, read-only
readers. States come from the `test` preset's training config; no test here trains a model except the
diverging run, which takes a few steps."""

from __future__ import annotations

import dataclasses
import errno
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from sage_jax.train.checkpoint import HEALTH_FILE, Checkpointer
from sage_jax.train.loop import NonFiniteError, train
from sage_jax.train.optim import OptimConfig
from sage_jax.train.state import abstract_state, init_train_state
from sage_jax.train.step import compile_train_step
from tests.train.conftest import STEP_CFG, Batches


def _state(step: int, seed: int = 0):
    state = init_train_state(STEP_CFG, jax.random.key(seed))
    return state.replace(step=state.step + step)


def _equal(a, b) -> bool:
    """Parameters and optimizer state of two `TrainState`s equal, bit for bit."""
    trees = [(s.params, s.opt_state) for s in (a, b)]
    return all(np.array_equal(x, y) for x, y in zip(*map(jax.tree_util.tree_leaves, trees)))


def test_flipped_bits_in_array_data_never_restore_changed_values(tmp_path):
    """Each flip either breaks decoding or changes values; the digest catches the latter, so step 1 is restored."""
    source = tmp_path / "source"
    with Checkpointer(source, keep=3) as ckpt:
        ckpt.save(_state(1, seed=1), {"next": 1})
        ckpt.save(_state(2, seed=2), {"next": 2})
    data = max((source / "2" / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    size = data.stat().st_size
    target, detected = abstract_state(STEP_CFG), 0
    for n, offset in enumerate(np.linspace(64, size - 64, 12).astype(int)):
        copy = tmp_path / f"copy{n}"
        shutil.copytree(source, copy)
        flipped = copy / data.relative_to(source)
        raw = bytearray(flipped.read_bytes())
        raw[offset] ^= 0x10
        flipped.write_bytes(bytes(raw))
        with Checkpointer(copy, keep=3) as ckpt:
            restored = ckpt.restore_latest(target)
        if restored.step == 2:  # the flip hit bytes no array is read from: the values are the saved ones
            assert _equal(restored.state, _state(2, seed=2)), f"flip at byte {offset} changed step 2's values"
            continue
        detected += 1
        assert restored.step == 1 and _equal(restored.state, _state(1, seed=1))
        assert [path for path, _ in restored.skipped] == [str(copy / "2")]
        assert (copy / "2.corrupt").is_dir()
    assert detected >= 10


def test_checksum_mismatch_names_the_array(tmp_path):
    """A checkpoint whose values changed but still decode: the digest in its meta no longer matches."""
    with Checkpointer(tmp_path, keep=3) as ckpt:
        ckpt.save(_state(1), None)
        ckpt.save(_state(2), None)
    meta = tmp_path / "2" / "meta" / "metadata"
    record = json.loads(meta.read_text())
    path = "['params']['embed']"
    record["digests"][path] = "0" * 64
    meta.write_text(json.dumps(record))
    with Checkpointer(tmp_path, keep=3) as ckpt:
        restored = ckpt.restore_latest(abstract_state(STEP_CFG))
    assert restored.step == 1
    ((where, error),) = restored.skipped
    assert where == str(tmp_path / "2") and "ChecksumError" in error and f"array {path} does not match" in error


def test_rotation_keeps_the_last_good_checkpoint_of_a_diverging_run(tmp_path):
    """Losses 6, 2e4, 3e7, 4e9, NaN at steps 1..5 (each judging the checkpoint of its step), keep=2."""
    with Checkpointer(tmp_path, keep=2, divergence_factor=10.0) as ckpt:
        ckpt.observe(0, 6.2)  # the reference
        for step, loss in [(1, 6.0), (2, 2e4), (3, 3e7), (4, 4e9), (5, float("nan"))]:
            ckpt.save(_state(step), {"next": step})
            ckpt.wait()
            ckpt.observe(step, loss)
        assert ckpt.last_good == 1
        ckpt.save(_state(6), {"next": 6})
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [1, 5, 6]
    health = json.loads((tmp_path / HEALTH_FILE).read_text())
    assert health["last_good"] == 1 and health["reference_loss"] == 6.2
    with Checkpointer(tmp_path, keep=2) as ckpt:
        restored = ckpt.restore_latest(abstract_state(STEP_CFG))
    # 6 is not judged yet, so a resume after a kill continues from it bit-identically
    assert restored.step == 6 and restored.skipped == ()


def test_a_diverging_run_resumes_from_its_last_good_checkpoint(tmp_path):
    """lr 1e2 and a checkpoint every step: finite exploding losses, then NaN. The rerun at a normal learning
    rate restores the last good checkpoint (the unhealthy ones are renamed `.diverged`) and trains past."""
    wild = dataclasses.replace(STEP_CFG, optim=OptimConfig(peak_lr=1e2, warmup_steps=1, total_steps=40,
                                                             max_grad_norm=1e9))
    state = init_train_state(wild, jax.random.key(0))
    batches = Batches()
    with Checkpointer(tmp_path, keep=2) as ckpt:
        with pytest.raises(NonFiniteError) as raised:
            train(compile_train_step(wild), state, batches, num_steps=40, checkpointer=ckpt, save_every=1,
                  data_state=batches.state)
        last_good = ckpt.last_good
    assert last_good is not None and last_good < raised.value.step
    with Checkpointer(tmp_path, keep=2) as ckpt:
        restored = ckpt.restore_latest(abstract_state(STEP_CFG))
        assert restored.step == last_good
        batches = Batches(**{"start": restored.data_state["next"]})
        state = train(compile_train_step(STEP_CFG), restored.state, batches, num_steps=raised.value.step + 2,
                      checkpointer=ckpt, save_every=1, data_state=batches.state)
    assert int(state.step) == raised.value.step + 2
    assert any(p.name.endswith(".diverged") for p in tmp_path.iterdir())


def test_a_failed_background_save_stops_the_run_at_the_next_step(tmp_path, monkeypatch, step_fn_test):
    """The disk fills while checkpoint 2 is written: the run stops at step 2, not at the next save (step 4)."""
    batches = Batches()
    seen = []
    with Checkpointer(tmp_path / "ckpt", keep=3) as ckpt:
        real_save = ckpt._manager.save

        def failing_save(step, *args, **kwargs):
            real_save(step, *args, **kwargs)
            if step == 2:
                ckpt._manager.check_for_errors = _raise_enospc

        monkeypatch.setattr(ckpt._manager, "save", failing_save)
        with pytest.raises(OSError, match=rf"writing a checkpoint under {tmp_path / 'ckpt'} failed: OSError: "
                                          r"\[Errno 28\] No space left on device"):
            train(step_fn_test, init_train_state(STEP_CFG, jax.random.key(0)), batches, num_steps=8,
                  checkpointer=ckpt, save_every=2, data_state=batches.state,
                  report=lambda t, metrics: seen.append(t))
        monkeypatch.setattr(ckpt._manager, "check_for_errors", lambda: None)
    assert seen == [0, 1]  # step 2 was dispatched but never reported: the run stopped right after the save
    with Checkpointer(tmp_path / "ckpt", keep=3) as ckpt:
        assert ckpt.restore_latest(abstract_state(STEP_CFG)).step == 2


def _raise_enospc():
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_read_only_reader_renames_nothing(tmp_path):
    with Checkpointer(tmp_path, keep=3) as ckpt:
        ckpt.save(_state(1), None)
        ckpt.save(_state(2), None)
    shutil.rmtree(tmp_path / "2" / "state")
    (tmp_path / "2" / "state").mkdir()
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with Checkpointer(tmp_path, keep=3, read_only=True) as ckpt:
        restored = ckpt.restore_latest(abstract_state(STEP_CFG))
        with pytest.raises(PermissionError, match="read-only"):
            ckpt.save(_state(3), None)
    assert restored.step == 1
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def step_fn_test():
    return compile_train_step(STEP_CFG)


def test_health_survives_reopening(tmp_path):
    with Checkpointer(tmp_path, keep=2) as ckpt:
        ckpt.observe(0, 5.0)
        ckpt.save(_state(1), None)
        ckpt.wait()
        ckpt.observe(1, 4.0)
    assert Checkpointer(tmp_path, keep=2, read_only=True).last_good == 1
    assert pathlib.Path(tmp_path / HEALTH_FILE).exists()
