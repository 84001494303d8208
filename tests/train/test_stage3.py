"""Stage 3 of the curriculum: the IAL in the state (created at the stage's start, checkpointed, resumed bitwise),
self-analysis explanation targets, and annotated JSONL explanations in the mixture."""

from __future__ import annotations

import json
import shutil

import chex
import jax
import numpy as np
import pytest

from experiments.configs import test as test_config
from sage_jax.data import Tokenizer
from sage_jax.data.annotated import AnnotatedError
from sage_jax.train.curriculum.data import stage_pipeline
from sage_jax.train.curriculum.handoff import final_state, initial_state
from sage_jax.train.curriculum.parse import curriculum_from_dict
from sage_jax.train.curriculum.stages import run_stage

GOOD = {"question": "2+2=?", "steps": ["2+2=4"], "answer": "4", "explanation": "Step 1 adds the two twos."}


def _config(workdir, **stage3):
    """The `test` curriculum (stages 1 and 2 as the session's trained run has them) with a 3-step stage 3."""
    config = test_config.get_config()
    config.workdir = str(workdir)
    config.stage3.update(dict(steps=3, **stage3))
    return curriculum_from_dict(config.to_dict())


def _rows(workdir):
    rows = [json.loads(line) for line in open(workdir / "stage3" / "logs" / "metrics.jsonl")]
    return {row["step"]: row for row in rows if "loss" in row}


def test_stage3_creates_trains_checkpoints_and_resumes_the_ial_exactly(tmp_path, trained_run_dir):
    tokenizer = Tokenizer.load(512)
    for name in ("stage1", "stage2"):  # stage 3 starts from the session's trained stage 2 (same config)
        shutil.copytree(trained_run_dir / name, tmp_path / "base" / name)
    base = _config(tmp_path / "base")
    stage2 = final_state(base, 2)
    assert stage2.inverse is None  # stage 2 trains no IAL: its checkpoints keep the model-only layout
    start = initial_state(base, 3)
    assert start.inverse is not None
    chex.assert_trees_all_equal(start.params, stage2.params)

    for name in ("straight", "pieces"):
        shutil.copytree(tmp_path / "base", tmp_path / name)
    straight, pieces = _config(tmp_path / "straight"), _config(tmp_path / "pieces")
    run_stage(straight, 3, tokenizer=tokenizer)
    assert int(run_stage(pieces, 3, tokenizer=tokenizer, until=1).state.step) == 1
    assert run_stage(pieces, 3, tokenizer=tokenizer).resumed_from == 1

    a, b = final_state(straight, 3), final_state(pieces, 3)
    chex.assert_trees_all_equal(a.inverse, b.inverse)
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)
    moved = jax.tree_util.tree_map(lambda x, y: float(np.abs(x - y).max()), jax.device_get(start.inverse),
                                   jax.device_get(a.inverse))
    assert min(jax.tree_util.tree_leaves(moved)) > 0

    ra, rb = _rows(tmp_path / "straight"), _rows(tmp_path / "pieces")
    assert sorted(ra) == sorted(rb) == [0, 1, 2]
    for step in ra:
        for name in ("loss", "consistency", "consistency_kl", "consistency_map"):
            assert np.isfinite(ra[step][name]) and ra[step][name] == rb[step][name], (step, name)

    # The self-analysis pool was rendered by stage 2's model once, cached, and read back by the resumed run.
    cache = tmp_path / "pieces" / "stage3" / "targets" / "self_chain_sum.jsonl"
    pool = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(pool) == straight.stage(3).targets.self_problems
    assert all(r["explanation"].startswith("Step 1 depends on ") for r in pool)
    assert cache.read_text() == (tmp_path / "straight" / "stage3" / "targets" / "self_chain_sum.jsonl").read_text()


def test_annotated_jsonl_joins_the_stage_mixture(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    cfg = _config(tmp_path, mixture="procedural/chain_sum:1:explain", annotated_path=str(path), annotated_weight=1.0)
    spec = cfg.stage(3).mixture.sources[-1]
    assert (spec.name, spec.weight) == ("annotated/notes.jsonl", 1.0)
    tokenizer = Tokenizer.load(512)
    batch = next(iter(stage_pipeline(cfg, cfg.stage(3), tokenizer)))
    rows = np.flatnonzero(batch["source"] == 1)
    assert rows.size > 0
    text = tokenizer.render(batch["tokens"][rows[0]])
    assert GOOD["explanation"] in text and GOOD["question"] in text


def test_a_bad_annotated_line_stops_the_stage_naming_file_and_line(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"question": "1+1=?", "steps": "1+1=2"}\n')
    cfg = _config(tmp_path, mixture="procedural/chain_sum:1:explain", annotated_path=str(path))
    with pytest.raises(AnnotatedError, match=rf"{path}:2: field 'steps' must be a list, got string"):
        stage_pipeline(cfg, cfg.stage(3), Tokenizer.load(512))
    skipping = _config(tmp_path, mixture="procedural/chain_sum:1:explain", annotated_path=str(path),
                       annotated_on_bad_line="skip")
    assert next(iter(stage_pipeline(skipping, skipping.stage(3), Tokenizer.load(512))))["tokens"].shape == (4, 40)


def test_stage3_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="on_bad_line='maybe'"):
        _config(tmp_path, annotated_on_bad_line="maybe")
    with pytest.raises(ValueError, match="consistency weighting='mean'"):
        _config(tmp_path, consistency_weighting="mean")
    with pytest.raises(ValueError, match="'self/sudoku' must name a procedural task"):
        cfg = _config(tmp_path, mixture="self/sudoku:1")
        stage_pipeline(cfg, cfg.stage(3), Tokenizer.load(512))
