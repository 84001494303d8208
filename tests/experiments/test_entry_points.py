"""The absl entry points on the `test` config, end to end: train all stages, re-run (nothing left to do),
then evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    out = _run("experiments.train", "--config=experiments/configs/test.py", f"--config.workdir={workdir}",
               "--config.stage2.steps=3")
    return workdir, out


def test_train_runs_every_stage_with_its_own_checkpoints_and_logs(trained):
    workdir, out = trained
    for stage, steps in ((1, 3), (2, 3), (3, 3)):
        assert f"stage {stage}: step {steps} in {workdir}/stage{stage}; held-out" in out
        assert str(steps) in os.listdir(workdir / f"stage{stage}" / "ckpt")
        rows = [json.loads(line) for line in open(workdir / f"stage{stage}" / "logs" / "metrics.jsonl")]
        assert [r["step"] for r in rows if "loss" in r] == list(range(steps))
        assert any("eval/reasoning_loss" in r for r in rows)
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / f"stage{stage}" / "logs"))


def test_a_rerun_of_finished_stages_does_nothing(trained):
    workdir, _ = trained
    out = _run("experiments.train", "--config=experiments/configs/test.py", f"--config.workdir={workdir}",
               "--config.stage2.steps=3", "--stages=1,2")
    assert "stage 1: step 3" in out and "already finished" in out


def test_evaluate_writes_accuracy_by_steps_and_calibration(trained):
    workdir, _ = trained
    out = _run("experiments.evaluate", "--config=experiments/configs/test.py", f"--config.workdir={workdir}",
               "--config.stage2.steps=3")
    results = json.loads((workdir / "eval_stage3.json").read_text())
    assert sorted(results["accuracy_by_steps"]) == ["1", "2"]
    for row in results["accuracy_by_steps"].values():
        assert row["n"] == 4 and 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["seen_in_training"] <= 1.0
    assert 0.0 <= results["teacher_forced"]["meta_ece"] <= 1.0
    assert "meta-head calibration error" in out
