"""Two runs on one workdir, and a full disk under the metrics writer (issue 17, failures 1 and 2).

The workdir lock needs two processes: the owner is a child Python process, the second run is this one."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from sage_jax.train.lock import LOCK_FILE, WorkdirLock, WorkdirLockedError
from sage_jax.train.metrics import MetricsWriter
from sage_jax.train.run import train_run

ROOT = pathlib.Path(__file__).resolve().parents[2]
_HOLD = ("import sys, time; from sage_jax.train.lock import WorkdirLock; lock = WorkdirLock(sys.argv[1]); "
         "lock.acquire(); print('locked', flush=True); time.sleep(600)")


@pytest.fixture
def owner(tmp_path):
    """A child process holding the lock of `tmp_path / 'w'`."""
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "w")], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    yield child
    child.kill()
    child.wait()


def test_a_second_run_on_a_locked_workdir_fails_at_once_naming_the_owner(tmp_path, owner):
    from experiments.configs import test as test_config

    config = test_config.get_config()
    config.workdir = str(tmp_path / "w")
    host = os.uname().nodename
    with pytest.raises(WorkdirLockedError, match=rf"{tmp_path / 'w'} is in use by another run \(pid {owner.pid} "
                                                 rf"on host {host}, since "):
        train_run(config.to_dict(), stages=[1])
    assert sorted(os.listdir(tmp_path / "w")) == [LOCK_FILE]  # no config.json, no checkpoint written


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, owner, caplog):
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    with WorkdirLock(tmp_path / "w") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {owner.pid}" in caplog.text
    assert (tmp_path / "w" / LOCK_FILE).read_text() == ""  # released: empty, and free to take again
    WorkdirLock(tmp_path / "w").acquire()


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_under_tensorboard_raises_at_once_naming_the_file(tmp_path, monkeypatch):
    """tensorboardX's writer thread used to die on errno 28 and leave `write` blocked on its full queue."""
    from tensorboardX.record_writer import RecordWriter

    writer = MetricsWriter(tmp_path)
    monkeypatch.setattr(RecordWriter, "write", _enospc)
    done = threading.Event()
    errors = []

    def write_many():
        try:
            for step in range(100):
                writer.write(step, {"loss": 1.0})
        except OSError as err:
            errors.append(err)
        done.set()

    threading.Thread(target=write_many, daemon=True).start()
    assert done.wait(60), "MetricsWriter.write blocked on a full disk"
    (err,) = errors
    assert err.errno == errno.ENOSPC and "events.out.tfevents" in str(err) and str(tmp_path) in str(err)
    monkeypatch.undo()
    writer.close()


def test_metrics_jsonl_stays_parseable_after_a_torn_row(tmp_path):
    """A full disk leaves half a row; after the resume, every line is one JSON object again."""
    with MetricsWriter(tmp_path) as writer:
        writer.write(0, {"loss": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "lo')
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 1.5})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.5}]


def test_a_full_disk_under_metrics_jsonl_raises_naming_the_file(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer._jsonl.close()
    writer._jsonl = _FullFile()
    with pytest.raises(OSError, match=rf"No space left on device \(writing metrics to {tmp_path}/metrics.jsonl\)"):
        writer.write(0, {"loss": 1.0})


class _FullFile:
    write = flush = close = staticmethod(_enospc)


@pytest.mark.parametrize("field, value, message", [
    ("workdir", "", r"CurriculumConfig.workdir is empty"),
    ("stage1.steps", 0, r"stage1.steps must be a positive integer, got 0"),
])
def test_config_mistakes_name_the_field(field, value, message):
    from experiments.configs import test as test_config
    from sage_jax.train import curriculum_from_dict

    config = test_config.get_config().to_dict()
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        curriculum_from_dict(config)


def test_an_unknown_config_override_is_one_line_naming_the_field_and_file():
    """ml_collections raised a chained KeyError/AttributeError ("'nonexistent'"), at import when --config was not
    given; `define_config_file` exits first with one line."""
    from absl import flags

    from experiments.config_file import define_config_file, unknown_override

    test_file, tiny_file = (str(ROOT / "experiments" / "configs" / f"{n}.py") for n in ("test", "tiny"))
    argv = ["train", f"--config={test_file}", "--config.nonexistent=1"]
    with pytest.raises(SystemExit) as exit_info:
        define_config_file("config", tiny_file, "", argv=argv, flag_values=flags.FlagValues())
    message = str(exit_info.value)
    assert "\n" not in message
    assert message.startswith(f"FATAL Flags parsing error: --config.nonexistent: {test_file} has no field "
                              "'nonexistent' at the top level (its fields: data, eval, ")
    nested = unknown_override(["train", "--config.stage1.stepz=2"], "config", tiny_file)  # the default file
    assert nested.startswith(f"--config.stage1.stepz: {tiny_file} has no field 'stepz' in config.stage1 (its "
                             "fields: b1, ")
    good = ["train", f"--config={test_file}", "--config.stage1.steps=7"]
    flag_values = flags.FlagValues()
    holder = define_config_file("config", None, "", argv=good, flag_values=flag_values)
    flag_values(good)
    assert holder.value.stage1.steps == 7


def test_a_later_stage_built_on_an_old_stage_1_is_refused(tmp_path, caplog):
    """Raising stage 1's steps on a finished run resumes stage 1; stage 2, trained from the old stage 1, used to
    be reported "already finished". Its handoff record no longer matches, and `run_stage` refuses it saying what
    to do. The checkpoints are written directly, nothing is trained (tests/train/test_run.py checks that training
    writes the record)."""
    import jax
    import jax.numpy as jnp

    from experiments.configs import test as test_config
    from sage_jax.train import Checkpointer, StaleStageError, curriculum_from_dict, init_train_state
    from sage_jax.data import Tokenizer
    from sage_jax.train.curriculum.data import stage_pipeline
    from sage_jax.train.curriculum.handoff import start_state, write_handoff
    from sage_jax.train.curriculum.stages import run_stage

    config = test_config.get_config()
    config.workdir = str(tmp_path)
    for stage in (config.stage1, config.stage2):
        stage.update(steps=1, warmup_steps=0)
    first = curriculum_from_dict(config.to_dict())

    def finish(number, state, step, data_state=None):
        with Checkpointer(tmp_path / f"stage{number}" / "ckpt") as ckpt:
            ckpt.save(state.replace(step=jnp.asarray(step, state.step.dtype)), data_state)

    stage1 = init_train_state(first.stage(1).step_config(first.model), jax.random.key(0))
    finish(1, stage1, 1)
    stage2, handoff = start_state(first, 2)
    write_handoff(first, 2, handoff)
    fresh = iter(stage_pipeline(first, first.stage(2), Tokenizer.load(first.model.vocab_size)))
    finish(2, stage2, 1, fresh.get_state())
    assert json.loads((tmp_path / "stage2" / "handoff.json").read_text())["step"] == 1
    assert run_stage(first, 2).resumed_from == 1  # nothing changed: finished, no error
    config.stage1.steps = 2
    finish(1, stage1, 2)  # what resuming stage 1 with steps=2 leaves
    with pytest.raises(StaleStageError, match=rf"stage 2 in {tmp_path}/stage2 was trained from stage 1 at step 1, "
                                              rf"but stage 1 now ends at step 2: stage\(s\) 2 no longer follow "
                                              rf"from it\. .*remove {tmp_path}/stage2 .*stage1\.steps=1\)$"):
        run_stage(curriculum_from_dict(config.to_dict()), 2)
    shutil.rmtree(tmp_path / "stage1")  # removed to save space: nothing to compare with, a warning only
    assert run_stage(curriculum_from_dict(config.to_dict()), 2).resumed_from == 1
    assert "cannot check that it still follows from stage 1" in caplog.text


def test_an_fsdp_that_does_not_divide_the_devices_is_refused_before_anything_is_written(tmp_path):
    """`--fsdp=3` on one device was ignored; now the run stops with a usage error and leaves no workdir."""
    workdir = tmp_path / "w"
    done = subprocess.run([sys.executable, "-m", "experiments.train", "--config=experiments/configs/test.py",
                           f"--config.workdir={workdir}", "--fsdp=3"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert done.returncode != 0
    assert "--fsdp=3 must be a positive divisor of the 1 device(s)" in done.stderr
    assert not workdir.exists()
