"""FLOP convention, throughput and MFU with an injected clock, the JSONL/TensorBoard writer, the progress
line, and the loop's lagged metric reads."""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.train.loop import train
from sage_jax.train.metrics import (MetricsWriter, Progress, Reporter, Throughput, flops_per_token,
                                    mean_visible_keys)
from sage_jax.train.state import init_train_state
from tests.train.conftest import STEP_CFG, Batches


def test_flops_per_token_follows_the_documented_convention():
    cfg = sj.configs.get("test")  # untied: the 64 x 32 embedding gather is not a matmul
    n = sj.param_count(cfg) - 64 * 32
    # T = 8. Reasoning heads (2, span 4): keys 1,2,3,4,4,4,4,4 -> 3.25; memory head (full): 4.5;
    # meta head (span 3): 1,2,3,3,3,3,3,3 -> 2.625.
    keys = 2 * 3.25 + 4.5 + 2.625
    assert flops_per_token(cfg, 8) == pytest.approx(6 * n + 12 * 2 * 8 * keys, rel=1e-12)
    tied = sj.configs.get("tiny")
    assert flops_per_token(tied, 256) == pytest.approx(
        6 * sj.param_count(tied) + 12 * 6 * 32 * (4 * mean_visible_keys(64, 256) + 4 * 128.5), rel=1e-12)


def test_causal_attention_is_halved():
    assert mean_visible_keys(None, 1000) == pytest.approx(500.5)
    assert mean_visible_keys(10_000, 1000) == pytest.approx(500.5)
    assert mean_visible_keys(1, 1000) == 1.0


class FakeClock:
    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_throughput_and_mfu_skip_the_compiling_step():
    meter = Throughput(flops_per_token=1e6, peak_flops=1e10, clock=FakeClock([10.0, 12.0, 13.0]))
    assert meter.update(1000) == {}
    assert meter.update(1000) == pytest.approx({"steps_per_s": 0.5, "tokens_per_s": 500.0,
                                                "mean_steps_per_s": 0.5, "mfu": 0.05})
    assert meter.update(1000) == pytest.approx({"steps_per_s": 1.0, "tokens_per_s": 1000.0,
                                                "mean_steps_per_s": 2 / 3, "mfu": 0.1})
    with pytest.raises(ValueError, match="peak_flops"):
        Throughput(1.0, peak_flops=0.0)


def test_mfu_of_the_measured_gemm_rate_is_reported_beside_the_theoretical_one():
    meter = Throughput(1e6, peak_flops=1e10, clock=FakeClock([10.0, 12.0]), measured_gemm_flops=2.5e9)
    meter.update(1000)
    assert meter.update(1000) == pytest.approx({"steps_per_s": 0.5, "tokens_per_s": 500.0, "mean_steps_per_s": 0.5,
                                                "mfu": 0.05, "mfu_of_measured_gemm": 0.2})
    with pytest.raises(ValueError, match="measured_gemm_flops"):
        Throughput(1.0, measured_gemm_flops=-1.0)


def test_progress_line_shows_step_rate_mfu_loss_and_eta():
    line = Progress(total_steps=100).line(39, {"steps_per_s": 2.0, "tokens_per_s": 12_345.0, "mfu": 0.123,
                                               "loss": 1.23456, "mean_steps_per_s": 0.5})
    assert line == ("step 40/100 | 2.00 steps/s | 12.3k tok/s | MFU 12.3% of theoretical | loss 1.2346 | "
                    "ETA 2m00s")
    both = Progress(total_steps=100).line(0, {"mfu": 0.24, "mfu_of_measured_gemm": 0.49})
    assert both == "step 1/100 | MFU 24.0% of theoretical (49.0% of measured GEMM)"
    measured_only = Progress(total_steps=100).line(0, {"mfu_of_measured_gemm": 0.49})
    assert measured_only == "step 1/100 | MFU 49.0% of measured GEMM"
    stream = io.StringIO()
    progress = Progress(total_steps=4, stream=stream, every=2)
    for step in range(4):
        progress.update(step, {"loss": float(step)})
    assert stream.getvalue() == "step 2/4 | loss 1.0000\nstep 4/4 | loss 3.0000\n"


def test_writer_logs_jsonl_and_tensorboard_events(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(3, {"loss": np.float32(1.5), "finite": np.bool_(True)})
        writer.write(4, {"loss": 1.25})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 3, "loss": 1.5, "finite": True}, {"step": 4, "loss": 1.25}]
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"loss" in events[0].read_bytes()


def test_loop_reports_every_step_once_in_order_with_rates(step_fn, tmp_path):
    clock = FakeClock([float(t) for t in range(10)])
    seen = []
    with MetricsWriter(tmp_path) as writer:
        reporter = Reporter(Throughput(flops_per_token(STEP_CFG.model, 16), peak_flops=1e9, clock=clock), writer)
        state = train(step_fn, init_train_state(STEP_CFG, jax.random.key(0)), Batches(), num_steps=4,
                      report=lambda t, m: seen.append((t, reporter(t, m))))
    assert [t for t, _ in seen] == [0, 1, 2, 3] and int(state.step) == 4
    assert "tokens_per_s" not in seen[0][1] and seen[1][1]["tokens_per_s"] == 64.0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3] and rows[3]["mfu"] > 0
