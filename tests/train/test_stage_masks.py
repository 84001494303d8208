"""The train step honours the batch's `loss_mask` (the curriculum stage's choice of target segments)."""

from __future__ import annotations

import chex
import jax
import numpy as np

from sage_jax.data import PipelineConfig, Tokenizer, default_mixture, make_pipeline
from sage_jax.data.pipeline import loss_mask as segment_mask
from sage_jax.interpret.steps import token_nll
from sage_jax.layout import Segment
from sage_jax.model import forward
from sage_jax.train import losses
from sage_jax.train.state import init_train_state
from sage_jax.train.step import target_masks
from tests.train.conftest import STEP_CFG, make_batch

ALL_TEXT = (Segment.PROMPT, Segment.RATIONALE, Segment.ANSWER, Segment.EXPLANATION)


def _with_mask(batch, parts):
    mask = segment_mask(batch["segments"], parts)
    mask[:, 0] = 0.0
    return {**batch, "loss_mask": mask}


def test_without_loss_mask_targets_are_rationale_answer_and_explanation():
    batch = make_batch(0)
    r, e = target_masks(batch)
    _, target_segments = losses.shift_targets(batch["tokens"], batch["segments"])
    np.testing.assert_array_equal(r, losses.reasoning_mask(target_segments))
    np.testing.assert_array_equal(e, losses.explanation_mask(target_segments))


def test_loss_mask_selects_the_marked_tokens_shifted_onto_their_predicting_positions():
    batch = _with_mask(make_batch(0), ALL_TEXT)
    r, e = target_masks(batch)
    expected = np.zeros_like(batch["loss_mask"], bool)
    expected[:, :-1] = batch["loss_mask"][:, 1:] > 0
    _, target_segments = losses.shift_targets(batch["tokens"], batch["segments"])
    np.testing.assert_array_equal(np.asarray(r) | np.asarray(e), expected)
    np.testing.assert_array_equal(e, expected & (np.asarray(target_segments) == Segment.EXPLANATION))
    assert np.asarray(r)[:, :3].all()  # prompt targets are in L_reasoning under the stage-1 mask


def test_pipeline_masks_of_each_stage_count_every_marked_token_once():
    tokenizer = Tokenizer.load(512)
    for stage in (1, 2, 3):
        batch = next(iter(make_pipeline(default_mixture(stage), tokenizer,
                                        PipelineConfig(seq_len=128, batch_size=4, source_size=200))))
        r, e = target_masks(batch)
        assert int(np.sum(r) + np.sum(e)) == int(batch["loss_mask"].sum())
        has_explanation = int(np.sum(e)) > 0
        assert has_explanation == (stage == 3)


def test_a_mask_equal_to_the_default_targets_gives_the_same_update_bit_for_bit(step_fn):
    batch = make_batch(1)
    masked = _with_mask(batch, (Segment.RATIONALE, Segment.ANSWER, Segment.EXPLANATION))
    s1, m1 = step_fn(init_train_state(STEP_CFG, jax.random.key(3)), batch)
    s2, m2 = step_fn(init_train_state(STEP_CFG, jax.random.key(3)), masked)
    chex.assert_trees_all_equal(s1.params, s2.params)
    chex.assert_trees_all_equal({k: m1[k] for k in losses.TERMS}, {k: m2[k] for k in losses.TERMS})


def test_stage_one_mask_trains_on_the_prompt_and_stage_two_mask_drops_the_explanation(step_fn):
    batch = make_batch(2)
    state = init_train_state(STEP_CFG, jax.random.key(4))
    out = forward(state.params, batch["tokens"], STEP_CFG.model, mask=batch["segments"] != Segment.PAD)
    targets, target_segments = losses.shift_targets(batch["tokens"], batch["segments"])
    nll = np.asarray(token_nll(out.logits, targets))
    ts = np.asarray(target_segments)
    lm = (ts == Segment.PROMPT) | (ts == Segment.RATIONALE) | (ts == Segment.ANSWER)

    _, stage1 = step_fn(init_train_state(STEP_CFG, jax.random.key(4)), _with_mask(batch, ALL_TEXT))
    np.testing.assert_allclose(stage1["reasoning"], nll[lm].mean(), rtol=1e-5)
    np.testing.assert_allclose(stage1["explanation"], nll[ts == Segment.EXPLANATION].mean(), rtol=1e-5)
    assert float(stage1["loss_tokens"]) == lm.sum()

    _, stage2 = step_fn(init_train_state(STEP_CFG, jax.random.key(4)),
                        _with_mask(batch, (Segment.RATIONALE, Segment.ANSWER)))
    assert float(stage2["explanation"]) == 0.0 and float(stage2["explanation_tokens"]) == 0.0
    rationale = (ts == Segment.RATIONALE) | (ts == Segment.ANSWER)
    np.testing.assert_allclose(stage2["reasoning"], nll[rationale].mean(), rtol=1e-5)
