"""The curriculum: config parsing, stage order, starting from the previous stage, exact resume."""

from __future__ import annotations

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import test as test_config
from sage_jax.data import Tokenizer
from sage_jax.layout import Segment
from sage_jax.train.checkpoint import Checkpointer
from sage_jax.train.curriculum.data import stage_pipeline
from sage_jax.train.curriculum.handoff import StageOrderError, final_state, initial_state
from sage_jax.train.curriculum.parse import curriculum_from_dict, parse_mixture
from sage_jax.train.curriculum.stages import run_stage
from sage_jax.train.state import abstract_state


def _config(workdir, **stage1):
    """The `test` config with stage 1 overridden and stage 2 shortened to one step."""
    config = test_config.get_config()
    config.workdir = str(workdir)
    config.stage1.update(stage1)
    config.stage2.steps = 1
    config.stage2.warmup_steps = 0
    return curriculum_from_dict(config.to_dict())


def _metrics(workdir, stage=1):
    rows = [json.loads(line) for line in open(workdir / f"stage{stage}" / "logs" / "metrics.jsonl")]
    return {row["step"]: row for row in rows if "loss" in row}


def test_parse_mixture_reads_sources_flags_and_segments():
    mixture = parse_mixture("procedural/chain_sum:0.7:explain, gym/chain_sum:0.3", 3,
                            "rationale,answer,explanation")
    assert [(s.name, s.weight, s.explain) for s in mixture.sources] == [
        ("procedural/chain_sum", 0.7, True), ("gym/chain_sum", 0.3, False)]
    assert mixture.loss_segments == (Segment.RATIONALE, Segment.ANSWER, Segment.EXPLANATION)
    assert parse_mixture("default", 1).loss_segments[0] == Segment.PROMPT


def test_a_task_may_come_plain_and_explained_in_one_mixture(tmp_path):
    """Stage 3 of the demo mixes plain chains beside explained ones: same task, rows told apart by `source`."""
    config = test_config.get_config()
    config.workdir = str(tmp_path)
    config.stage3.mixture = "procedural/chain_sum:1,procedural/chain_sum:1:explain"
    cfg = curriculum_from_dict(config.to_dict())
    batch = next(iter(stage_pipeline(cfg, cfg.stage(3), Tokenizer.load(cfg.model.vocab_size))))
    explained = (batch["segments"] == Segment.EXPLANATION).any(axis=1)
    assert explained.tolist() == (batch["source"] == 1).tolist()
    assert 0 < explained.sum() < len(explained)


@pytest.mark.parametrize("spec, segments, message", [
    ("procedural/chain_sum", "default", "expected name:weight"),
    ("procedural/chain_sum:x", "default", "weight 'x' is not a number"),
    ("procedural/chain_sum:1:shiny", "default", "expected name:weight"),
    ("procedural/chain_sum:1", "rationale,thoughts", "unknown segment"),
])
def test_parse_mixture_errors_name_the_stage_and_entry(spec, segments, message):
    with pytest.raises(ValueError, match=message):
        parse_mixture(spec, 2, segments)


def test_config_errors_name_the_field(tmp_path):
    config = test_config.get_config()
    config.workdir = str(tmp_path)
    config.stage2.stepz = 3
    with pytest.raises(ValueError, match=r"stage2: unknown key\(s\) \['stepz'\]"):
        curriculum_from_dict(config.to_dict())
    config = test_config.get_config()
    config.stage3.seq_len = 200
    with pytest.raises(ValueError, match="stage3.seq_len=200 exceeds"):
        curriculum_from_dict(config.to_dict())


def test_a_later_stage_needs_the_previous_one_finished(tmp_path):
    cfg = _config(tmp_path)
    with pytest.raises(StageOrderError, match="stage 1 has not finished .no checkpoint"):
        run_stage(cfg, 2)


def test_a_consistency_weight_without_an_ial_or_a_function_is_an_error(tmp_path):
    config = test_config.get_config()
    config.workdir = str(tmp_path)
    config.stage3.consistency_weight = 0.5
    config.stage3.inverse = False
    with pytest.raises(ValueError, match="stage3.loss.lambda_consistency=0.5 but the stage trains no Inverse"):
        run_stage(curriculum_from_dict(config.to_dict()), 3)


def test_resume_is_exact_and_the_next_stage_starts_from_the_final_params(tmp_path):
    """N steps, stop, resume for M more == N + M straight: params, losses and the data position."""
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    cfg_a, cfg_b = _config(straight, steps=5), _config(pieces, steps=5)
    tokenizer = Tokenizer.load(512)
    run_stage(cfg_a, 1, tokenizer=tokenizer)
    first = run_stage(cfg_b, 1, tokenizer=tokenizer, until=2)
    assert int(first.state.step) == 2 and first.resumed_from is None
    second = run_stage(cfg_b, 1, tokenizer=tokenizer)
    assert second.resumed_from == 2 and int(second.state.step) == 5

    a, b = final_state(cfg_a, 1), final_state(cfg_b, 1)
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)
    np.testing.assert_array_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))
    ma, mb = _metrics(straight), _metrics(pieces)
    assert sorted(ma) == sorted(mb) == [0, 1, 2, 3, 4]
    for step in ma:
        assert ma[step]["loss"] == mb[step]["loss"], step

    # The checkpoint holds the data position after its last batch, and that position yields the next batch.
    with Checkpointer(pieces / "stage1" / "ckpt") as ckpt:
        restored = ckpt.restore_latest(abstract_state(cfg_b.stage(1).step_config(cfg_b.model)))
    fresh = iter(stage_pipeline(cfg_b, cfg_b.stage(1), tokenizer))
    batches = [next(fresh) for _ in range(6)]
    assert restored.step == 5 and restored.data_state == fresh_state_after(cfg_b, tokenizer, 5)
    resumed = iter(stage_pipeline(cfg_b, cfg_b.stage(1), tokenizer))
    resumed.set_state(restored.data_state)
    chex.assert_trees_all_equal(next(resumed), batches[5])

    # A finished stage is not run again.
    again = run_stage(cfg_b, 1, tokenizer=tokenizer)
    assert again.resumed_from == 5 and again.eval == {}

    # Stage 2 starts from stage 1's final params, with a fresh optimizer and step 0.
    start = initial_state(cfg_b, 2)
    assert int(start.step) == 0
    chex.assert_trees_all_equal(start.params, b.params)
    fresh_mu = jax.tree_util.tree_leaves(start.opt_state)
    assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in fresh_mu if jnp.issubdtype(leaf.dtype, jnp.floating))


def fresh_state_after(cfg, tokenizer, n):
    """The iterator state of a fresh stage-1 pipeline after `n` batches."""
    iterator = iter(stage_pipeline(cfg, cfg.stage(1), tokenizer))
    for _ in range(n):
        next(iterator)
    return iterator.get_state()


def test_the_consistency_hook_reaches_the_step_and_is_logged(tmp_path):
    config = test_config.get_config()
    config.workdir = str(tmp_path)
    config.stage1.steps = 1
    config.stage1.warmup_steps = 0
    config.stage1.consistency_weight = 0.5
    cfg = curriculum_from_dict(config.to_dict())
    seen = []

    def consistency(params, batch, out, key):
        seen.append(sorted(batch))
        return jnp.float32(0.25)

    run_stage(cfg, 1, consistency=consistency)
    row = _metrics(tmp_path)[0]
    assert row["consistency"] == 0.25
    assert "step_deps" in seen[0] and "loss_mask" in seen[0]
    assert dataclasses.asdict(cfg.stage(1).loss)["lambda_consistency"] == 0.5
