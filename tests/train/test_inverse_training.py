"""The Inverse Analysis Layer trained jointly: `TrainState.inverse`, its own AdamW group, `L_consistency` (KL to the
held-fixed forward distribution + the amortised map against the exact one) and the lambda2 = 0 ablation."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.data import PipelineConfig, Tokenizer, make_pipeline
from sage_jax.data.explanations import with_explanation
from sage_jax.data.mixture import Mixture, SourceSpec
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource
from sage_jax.data.sources import MappedSource
from sage_jax.layout import Segment, find_steps, steps_from_index
from sage_jax.train.consistency import ConsistencyConfig, IALConsistency, bernoulli_kl
from sage_jax.train.losses import LossConfig
from sage_jax.train.optim import weight_decay_mask
from sage_jax.train.state import init_train_state
from sage_jax.train.step import compile_train_step
from tests.train.conftest import STEP_CFG

MODEL = dataclasses.replace(STEP_CFG.model, vocab_size=512, max_seq_len=64)
PLAIN = dataclasses.replace(STEP_CFG, model=MODEL, loss=LossConfig(lambda_consistency=0.0))
KEY = jax.random.key(11)


@pytest.fixture(scope="module")
def batches():
    """Three stage-3 batches of 2-3 term chained sums with explanations (`step_index` included)."""
    source = MappedSource(ProceduralSource(ChainSumKnobs(n_terms=(2, 3), max_value=(9, 9)), size=64, seed=5),
                          lambda ex, _: with_explanation(ex))
    mixture = Mixture((SourceSpec("procedural/chain_sum", 1.0, explain=True),),
                      (Segment.RATIONALE, Segment.ANSWER, Segment.EXPLANATION))
    pipe = make_pipeline(mixture, Tokenizer.load(512), PipelineConfig(seq_len=56, batch_size=4, max_steps=4,
                                                                      source_size=64), sources=(source,))
    iterator = iter(pipe)
    return [next(iterator) for _ in range(3)]


def _train(cfg, batches, consistency=None):
    step = compile_train_step(cfg, consistency=consistency)
    state = init_train_state(cfg, KEY)
    start = jax.device_get(state)
    rows = []
    for batch in batches:
        state, metrics = step(state, batch)
        rows.append(jax.device_get(metrics))
    return start, jax.device_get(state), rows


def test_ial_trains_beside_the_model_without_touching_its_update(batches):
    """The consistency loss reaches only the IAL: its gradient with respect to the model is exactly zero, and
    training with lambda2 = 0 or 1 moves the model as the model-only (stage-2 style) training does, the IAL having
    its own optimizer group (its gradients never rescale the model's through clipping).

    The two trainings are different programs (the second holds the consistency loss's held-fixed forward too),
    which XLA may fuse differently, so they agree to float32 rounding (1e-8 here,
    where a shared clipping or a leaked gradient moves the model by the learning rate's order), not bit for bit;
    the exact promise is the zero gradient."""
    _, plain, plain_rows = _train(PLAIN, batches)
    assert plain.inverse is None
    consistency = IALConsistency(MODEL)
    state = init_train_state(dataclasses.replace(PLAIN, loss=LossConfig(lambda_consistency=1.0),
                                                 inverse_optim=PLAIN.optim), KEY)
    batch = jax.tree_util.tree_map(jnp.asarray, batches[0])
    leaked = jax.grad(lambda p: consistency(p, batch, None, KEY, inverse=state.inverse)[0])(state.params)
    chex.assert_trees_all_equal(leaked, jax.tree_util.tree_map(jnp.zeros_like, state.params))
    for lambda2 in (0.0, 1.0):
        cfg = dataclasses.replace(PLAIN, loss=LossConfig(lambda_consistency=lambda2), inverse_optim=PLAIN.optim)
        start, trained, rows = _train(cfg, batches, consistency)
        chex.assert_trees_all_close(trained.params, plain.params, rtol=0, atol=1e-7)
        chex.assert_trees_all_close(trained.opt_state["model"], plain.opt_state, rtol=1e-5, atol=1e-9)
        for row, plain_row in zip(rows, plain_rows):
            np.testing.assert_allclose([row["reasoning"], row["explanation"]],
                                       [plain_row["reasoning"], plain_row["explanation"]], rtol=1e-6)
            for name in ("consistency", "consistency_kl", "consistency_map"):
                assert np.isfinite(row[name]) and row[name] > 0, (name, row[name])
            np.testing.assert_allclose(row["consistency"], row["consistency_kl"] + row["consistency_map"], rtol=1e-5)
            total = row["reasoning"] + row["explanation"] + 0.1 * row["meta"] + lambda2 * row["consistency"]
            np.testing.assert_allclose(row["loss"], total, rtol=1e-5)
        moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), start.inverse, trained.inverse)
        if lambda2:
            assert min(jax.tree_util.tree_leaves(moved)) > 0  # every IAL parameter learned
            assert rows[-1]["consistency"] < rows[0]["consistency"], [r["consistency"] for r in rows]
        else:  # no gradient: only AdamW's decoupled weight decay moves the IAL, and only its matrices
            decayed = weight_decay_mask(start.inverse)
            for d, m in zip(jax.tree_util.tree_leaves(decayed), jax.tree_util.tree_leaves(moved)):
                assert (m > 0) == d


def test_the_hook_reads_the_train_steps_forward_instead_of_running_its_own(batches):
    """The train step's forward records `IALConsistency.record`, so the hook needs no second forward: given that
    `out` it returns what it computes from its own forward (the same program up to XLA's fusion: 1e-6), and an
    `out` without the recorded fields is refused rather than read as zeros."""
    state = init_train_state(dataclasses.replace(PLAIN, inverse_optim=PLAIN.optim), KEY)
    batch = jax.tree_util.tree_map(jnp.asarray, batches[0])
    hook = IALConsistency(MODEL)
    mask = batch["segments"] != Segment.PAD
    out = sj.forward(state.params, batch["tokens"], MODEL, mask=mask, record=hook.record)
    own = hook(state.params, batch, None, KEY, inverse=state.inverse)
    chex.assert_trees_all_close(hook(state.params, batch, out, KEY, inverse=state.inverse), own, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"needs out.trace to hold \('attn', 'value_norms'\)"):
        hook(state.params, batch, sj.forward(state.params, batch["tokens"], MODEL, mask=mask), KEY,
             inverse=state.inverse)


def test_pipeline_step_index_gives_the_marker_steps(batches):
    """Steps built from the pipeline's step_index equal `find_steps` of each row (markers excluded)."""
    batch = batches[0]
    steps = steps_from_index(jnp.asarray(batch["tokens"]), jnp.asarray(batch["step_index"]), 4)
    for row in range(batch["tokens"].shape[0]):
        length = int((batch["segments"][row] != 0).sum())
        expected = find_steps(batch["tokens"][row, :length])
        n = expected.n_steps
        np.testing.assert_array_equal(np.asarray(steps.mask[row, :n, :length]), np.asarray(expected.mask))
        np.testing.assert_array_equal(np.asarray(steps.starts[row, :n]), np.asarray(expected.starts))
        np.testing.assert_array_equal(np.asarray(steps.ends[row, :n]), np.asarray(expected.ends))
        assert not np.asarray(steps.mask[row, n:]).any() and not np.asarray(steps.sources[row, n:]).any()


def test_bernoulli_kl_is_zero_at_agreement_and_positive_elsewhere():
    t = jnp.array([0.0, 0.3, 1.0, 0.5])
    np.testing.assert_allclose(bernoulli_kl(t, t), 0.0, atol=2e-5)
    p = jnp.array([0.5, 0.9, 0.2, 0.5])
    expected = [np.log(2), 0.3 * np.log(0.3 / 0.9) + 0.7 * np.log(0.7 / 0.1), np.log(1 / 0.2), 0.0]
    np.testing.assert_allclose(bernoulli_kl(t, p), expected, rtol=1e-5, atol=1e-6)


def test_the_hook_needs_the_ial_parameters(batches):
    params = init_train_state(PLAIN, KEY).params
    with pytest.raises(ValueError, match="needs the Inverse Analysis Layer's parameters"):
        IALConsistency(MODEL)(params, batches[0], None, KEY)
    with pytest.raises(ValueError, match="layer=5 is outside"):
        IALConsistency(MODEL, ConsistencyConfig(layer=5))
    with pytest.raises(ValueError, match="teacher_rows must be a positive integer"):
        ConsistencyConfig(teacher_rows=0)
