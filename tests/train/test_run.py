"""A run directory describes itself: `load_run` needs only the directory (moved or not), returns each stage's
final parameters and the IAL of the stage that trained one, and every way a directory can fall short is an
error that says what is wrong and how to fix it."""

from __future__ import annotations

import json
import shutil

import chex
import pytest

import sage_jax as sj
from experiments.configs import test as test_config
from sage_jax.train.curriculum.handoff import HANDOFF_FILE, StageOrderError, check_handoff, final_state
from sage_jax.train.run import CONFIG_FILE, load_config, load_run, save_config


def test_load_run_returns_the_last_stage_with_its_inverse_layer(trained_run, trained_run_dir):
    run = trained_run
    assert run.run_dir == trained_run_dir and run.stage == 3 and run.cfg == run.curriculum.model
    assert run.curriculum.workdir == str(trained_run_dir) and run.config["eval"]["steps"] == [1, 2]
    assert run.tokenizer.vocab_size == run.cfg.vocab_size == 512
    state = final_state(run.curriculum, 3)
    chex.assert_trees_all_equal(run.params, state.params)
    chex.assert_trees_all_equal(run.inverse, state.inverse)
    assert sj.load_run is load_run and isinstance(run, sj.Run)


def test_each_later_stage_records_the_checkpoint_it_started_from(trained_run, trained_run_dir):
    for number, previous in ((2, 1), (3, 2)):
        record = json.loads((trained_run_dir / f"stage{number}" / HANDOFF_FILE).read_text())
        assert record["stage"] == previous and record["step"] == trained_run.curriculum.stage(previous).steps
        assert len(record["fingerprint"]) == 64
        check_handoff(trained_run.curriculum, number)  # still its predecessor's final checkpoint: no error
    assert not (trained_run_dir / "stage1" / HANDOFF_FILE).exists()


def test_an_earlier_stage_has_its_own_params_and_no_inverse_layer(trained_run, trained_run_dir):
    stage2 = load_run(trained_run_dir, stage=2)
    assert stage2.stage == 2 and stage2.inverse is None  # stage 2 trains no IAL
    chex.assert_trees_all_equal(stage2.params, final_state(trained_run.curriculum, 2).params)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(stage2.params, trained_run.params)
    with pytest.raises(ValueError, match="has no stage 4"):
        load_run(trained_run_dir, stage=4)


def test_a_moved_run_loads_from_where_it_is(trained_run, trained_run_dir, tmp_path):
    moved = shutil.copytree(trained_run_dir, tmp_path / "moved")
    run = load_run(moved)
    assert run.run_dir == moved and run.curriculum.workdir == str(moved)
    assert run.config["workdir"] == str(trained_run_dir)  # config.json as saved
    chex.assert_trees_all_equal(run.params, trained_run.params)


def test_a_run_without_config_json_says_how_to_write_one(trained_run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for stage in ("stage1", "stage2", "stage3"):
        (bare / stage).symlink_to(trained_run_dir / stage)
    with pytest.raises(FileNotFoundError, match=rf"{bare} has no config.json.*python -m experiments.train "
                                                rf"--config=<the config file it was trained with> "
                                                rf"--config.workdir={bare}"):
        load_run(bare)
    with pytest.raises(FileNotFoundError, match=rf"no run in {tmp_path / 'absent'}: it is not a directory"):
        load_run(tmp_path / "absent")


def test_a_broken_config_json_names_its_line(tmp_path):
    (tmp_path / CONFIG_FILE).write_text('{\n  "model": "test",\n  oops\n}')
    with pytest.raises(ValueError, match=rf"{tmp_path / CONFIG_FILE}:3: not valid JSON"):
        load_config(tmp_path)


def test_an_unfinished_stage_is_an_error_naming_its_checkpoints(tmp_path):
    config = test_config.get_config()
    config.workdir = str(tmp_path)
    save_config(config.to_dict())
    with pytest.raises(StageOrderError, match=rf"stage 3 has not finished \(no checkpoint of 3 in {tmp_path}"):
        load_run(tmp_path)


def test_save_config_writes_what_load_config_reads_and_refuses_an_invalid_config(tmp_path):
    config = test_config.get_config()
    config.workdir = str(tmp_path / "run")
    path = save_config(config.to_dict())
    assert path == tmp_path / "run" / CONFIG_FILE
    assert load_config(tmp_path / "run") == json.loads(json.dumps(config.to_dict()))
    config.workdir = str(tmp_path / "bad")
    config.stage2.seq_len = 1000
    with pytest.raises(ValueError, match="stage2.seq_len=1000 exceeds the model's max_seq_len=64"):
        save_config(config.to_dict())
    assert not (tmp_path / "bad").exists()
