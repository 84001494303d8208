"""Teacher-forced held-out statistics: ECE of known bins (additive over batches, masked), and the
teacher-forced loss against the train step's own loss."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.data import PipelineConfig, Tokenizer, default_mixture, make_pipeline
from sage_jax.train import OptimConfig, StepConfig, compile_train_step, init_train_state
from sage_jax.train.eval_stats import TokenStats, compile_token_stats, expected_calibration_error, reliability_sums

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)


def test_ece_of_known_bins_and_additivity():
    confidence = np.array([0.9] * 10 + [0.2] * 10, np.float32)
    correct = np.array([1] * 6 + [0] * 4 + [1] * 2 + [0] * 8, np.float32)
    sums = np.asarray(reliability_sums(confidence, correct, np.ones(20, bool)))
    assert expected_calibration_error(sums) == pytest.approx(0.5 * 0.3 + 0.5 * 0.0, abs=1e-6)
    halves = [np.asarray(reliability_sums(confidence[i::2], correct[i::2], np.ones(10, bool))) for i in (0, 1)]
    np.testing.assert_allclose(halves[0] + halves[1], sums, rtol=1e-6)
    masked = np.asarray(reliability_sums(confidence, correct, np.arange(20) < 10))
    assert expected_calibration_error(masked) == pytest.approx(0.3, abs=1e-6)
    assert expected_calibration_error(np.zeros((10, 3))) == 0.0


def test_teacher_forced_loss_equals_the_train_steps_loss_before_its_update():
    step_cfg = StepConfig(model=MODEL, optim=OptimConfig(total_steps=10, warmup_steps=1))
    batch = next(iter(make_pipeline(default_mixture(3), TOKENIZER,
                                    PipelineConfig(seq_len=64, batch_size=4, source_size=100))))
    state = init_train_state(step_cfg, jax.random.key(1))
    stats = compile_token_stats(MODEL)(state.params, batch)
    _, metrics = compile_train_step(step_cfg)(state, batch)
    summary = TokenStats.merge([stats, stats]).summary()
    np.testing.assert_allclose(summary["reasoning_loss"], metrics["reasoning"], rtol=1e-5)
    np.testing.assert_allclose(summary["explanation_loss"], metrics["explanation"], rtol=1e-5)
    assert stats.reasoning[0] == metrics["loss_tokens"]
    assert stats.reliability[:, 0].sum() == metrics["loss_tokens"]
    assert 0.0 <= summary["meta_ece"] <= 1.0
