"""An Inverse Analysis Layer trained alone for a frozen chat model (`sage_jax.train.inverse_only`), on a random
`test`-sized model with a ChatML tokenizer: the loss falls, the model is untouched, teachers and training resume
to the same result, the trained IAL loads back for `analyse`, and bad inputs are refused by name."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.chat import ChatLayout, TextCodec
from sage_jax.data.procedural import SpokenSumKnobs
from sage_jax.evaluate.explanations import encode_true_chains
from sage_jax.evaluate.heldout import procedural_by_difficulty
from sage_jax.interpret.amortised import analyse
from sage_jax.train.inverse_only import (InverseOnlyConfig, Teachers, batch_indices, compute_teachers,
                                         load_inverse, train_inverse_only)
from tests.test_chat import CHATML, chatml_tokenizer

CONFIG = InverseOnlyConfig(steps=24, batch_size=4, peak_lr=3e-3, warmup_steps=2, teacher_batch=4, save_every=12,
                           progress_every=100)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    chat = ChatLayout.for_codec(TextCodec(chatml_tokenizer()), CHATML)
    cfg = sj.configs.get("test", vocab_size=chat.codec.vocab_size, max_seq_len=160)
    params = sj.init_params(cfg, jax.random.key(0))
    examples = procedural_by_difficulty(SpokenSumKnobs(), (1, 2), 5, seed=3).examples
    encoded = encode_true_chains(chat.codec, examples, chat)
    before = jax.tree_util.tree_map(np.array, params)
    root = tmp_path_factory.mktemp("inverse_only")
    teachers = compute_teachers(params, cfg, encoded.tokens, encoded.steps, root / "teachers", CONFIG)
    state = train_inverse_only(teachers, cfg, root / "run", jax.random.key(1), CONFIG)
    return dict(cfg=cfg, params=params, before=before, encoded=encoded, teachers=teachers, state=state, root=root)


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def test_teachers_have_the_documented_shapes(setup):
    teachers, encoded = setup["teachers"], setup["encoded"]
    n, s, t = encoded.steps.mask.shape
    assert teachers.exact.shape == teachers.map_where.shape == (n, s, t) and teachers.n_problems == 10
    assert teachers.forward_logits.shape[::2] == (n, setup["cfg"].vocab_size)
    assert np.all((teachers.exact >= 0) & (teachers.exact <= 1))
    assert not np.any(teachers.exact[~teachers.map_where])  # the exact map scores only each step's sources
    # every position that predicts a step token is among the logits kept, in order
    for i in range(n):
        queried = np.flatnonzero(np.asarray(encoded.steps.queries[i]).any(0))
        assert teachers.query_index[i][teachers.query_valid[i]].tolist() == queried.tolist()


def test_the_loss_falls_and_the_model_is_untouched(setup):
    losses = _losses(setup["root"] / "run")
    assert sorted(losses) == list(range(CONFIG.steps))
    first, last = np.mean([losses[s] for s in range(3)]), np.mean([losses[s] for s in range(21, 24)])
    assert last < 0.7 * first, (first, last)
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(np.asarray(a), b), setup["params"], setup["before"])
    assert all(jax.tree_util.tree_leaves(same))


def test_teachers_and_training_resume_to_the_same_result(setup, tmp_path):
    cfg, params, encoded, root = setup["cfg"], setup["params"], setup["encoded"], setup["root"]
    shutil.copytree(root / "teachers", tmp_path / "teachers")
    (tmp_path / "teachers" / "chunk_00001.npz").unlink()  # a run killed before its second chunk was written
    again = compute_teachers(params, cfg, encoded.tokens, encoded.steps, tmp_path / "teachers", CONFIG)
    for a, b in zip(again, setup["teachers"]):
        np.testing.assert_array_equal(a, b)

    shutil.copytree(root / "run", tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(tmp_path / "run" / "ckpt" / str(CONFIG.steps))  # killed after the checkpoint of step 12
    resumed = train_inverse_only(again, cfg, tmp_path / "run", jax.random.key(1), CONFIG)
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), resumed.params,
                                  setup["state"].params)
    assert all(jax.tree_util.tree_leaves(same))


def test_batches_are_a_function_of_the_key_and_the_step():
    key = jax.random.key(5)
    epoch = np.concatenate([batch_indices(key, s, 10, 4) for s in range(2)])
    assert len(set(epoch.tolist())) == 8  # no problem twice in an epoch
    np.testing.assert_array_equal(batch_indices(key, 3, 10, 4), batch_indices(key, 3, 10, 4))
    assert not np.array_equal(batch_indices(key, 0, 10, 4), batch_indices(key, 2, 10, 4))  # a new epoch's order


def test_the_trained_ial_loads_back_for_analyse(setup):
    cfg, params, encoded = setup["cfg"], setup["params"], setup["encoded"]
    inverse, icfg = load_inverse(setup["root"] / "run", cfg)
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), inverse,
                                  setup["state"].params)
    assert all(jax.tree_util.tree_leaves(same))
    out = analyse(params, inverse, cfg, encoded.tokens[0], encoded.steps.mask[0], icfg=icfg)
    assert out.significance.shape == encoded.steps.mask[0].shape


def test_bad_inputs_are_refused_by_name(setup, tmp_path):
    cfg, params, encoded, teachers = setup["cfg"], setup["params"], setup["encoded"], setup["teachers"]
    with pytest.raises(ValueError, match="other problems"):  # a cache is never mixed with other problems
        compute_teachers(params, cfg, encoded.tokens[::-1], encoded.steps, setup["root"] / "teachers", CONFIG)
    with pytest.raises(ValueError, match=r"expected \[N, S, T\]"):
        compute_teachers(params, cfg, encoded.tokens[:, :-1], encoded.steps, tmp_path / "t", CONFIG)
    few = Teachers(*(field[:3] for field in teachers))
    with pytest.raises(ValueError, match="cannot fill a batch of 4"):
        train_inverse_only(few, cfg, tmp_path / "run", jax.random.key(1), CONFIG)
    with pytest.raises(ValueError, match="trained for model"):
        load_inverse(setup["root"] / "run", cfg.replace(d_model=64))
    with pytest.raises(FileNotFoundError, match="inverse.json"):
        load_inverse(tmp_path)
    with pytest.raises(ValueError, match="warmup_steps"):
        InverseOnlyConfig(steps=10, warmup_steps=10)
