"""Evaluation pieces: answer parsing, ECE, held-out sets by difficulty, batched greedy prediction, and the
teacher-forced statistics against the train step's own loss."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import special
from sage_jax.data import ChainSumKnobs, PipelineConfig, Tokenizer, default_mixture, make_pipeline
from sage_jax.evaluate import (TokenStats, accuracy_by, compile_token_stats, expected_calibration_error,
                               parse_answer, predict, procedural_by_difficulty, reliability_sums)
from sage_jax.train import OptimConfig, StepConfig, compile_train_step, init_train_state

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)


def test_parse_answer_reads_between_answer_and_the_next_special_token():
    ids = [special.STEP] + TOKENIZER.encode("3+4=7") + [special.ANSWER] + TOKENIZER.encode(" 7") + [special.EOS]
    assert parse_answer(ids, TOKENIZER) == "7"
    assert parse_answer(ids[:-1] + [special.STEP, 9], TOKENIZER) == "7"
    assert parse_answer([special.STEP] + TOKENIZER.encode("3+4=7"), TOKENIZER) is None


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


def test_held_out_sets_have_the_asked_step_counts_and_report_what_training_saw():
    held = procedural_by_difficulty(ChainSumKnobs(max_value=(9, 9)), (1, 3), 6, seed=5,
                                    training_questions={"never=?"})
    assert [len(ex.steps) for ex in held.examples] == [1] * 6 + [3] * 6
    assert held.seen == {1: 0.0, 3: 0.0}
    all_seen = procedural_by_difficulty(ChainSumKnobs(), (2,), 4, seed=5,
                                        training_questions={ex.question for ex in held.examples}
                                        | {ex.question for ex in procedural_by_difficulty(
                                            ChainSumKnobs(), (2,), 4, seed=5).examples})
    assert all_seen.seen == {2: 1.0}


def test_batched_prediction_equals_one_prompt_at_a_time():
    params = sj.init_params(MODEL, jax.random.key(0))
    examples = procedural_by_difficulty(ChainSumKnobs(), (1, 2), 2, seed=3).examples
    together = predict(params, MODEL, TOKENIZER, examples, max_new_tokens=8, batch_size=3)
    alone = predict(params, MODEL, TOKENIZER, examples, max_new_tokens=8, batch_size=1)
    assert [p.generated for p in together] == [p.generated for p in alone]
    assert len(together) == 4 and all(p.score == 0.0 for p in together if p.answer is None)
    table = accuracy_by(together, key=lambda ex: len(ex.steps))
    assert list(table) == [1, 2] and table[1]["n"] == 2


def test_predict_scores_with_the_given_scorer():
    params = sj.init_params(MODEL, jax.random.key(0))
    examples = procedural_by_difficulty(ChainSumKnobs(), (1,), 3, seed=3).examples
    preds = predict(params, MODEL, TOKENIZER, examples, max_new_tokens=4, batch_size=4,
                    scorer=lambda ex, answer: 0.5)
    assert [p.score for p in preds] == [0.5, 0.5, 0.5]


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
