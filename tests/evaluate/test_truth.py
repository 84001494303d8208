"""Maps scored against the counterfactual truth: the answer row, the truth equal to a direct per-problem
computation, an oracle map scoring what it must, one deletion drop against a direct edge cut, the step
importance of a hand-built map, and the summary's argmax agreement."""

from __future__ import annotations

import dataclasses
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.data import ChainSumKnobs, Tokenizer
from sage_jax.evaluate import procedural_by_difficulty, truth as tr
from sage_jax.interpret import counterfactual as cf, faithfulness as fa, ranking
from sage_jax.interpret.alternatives import alternative_importance
from sage_jax.interpret.interventions import cut_edges, edges
from sage_jax.interpret.patching import step_log_probs
from sage_jax.interpret.significance import step_importance
from tests.conftest import perturbed_params

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)
EXAMPLES = procedural_by_difficulty(ChainSumKnobs(max_value=(9, 9)), (1, 2), 2, seed=7).examples
K = 3


@pytest.fixture(scope="module")
def params():
    return perturbed_params(MODEL, seed=3, scale=0.3)


@pytest.fixture(scope="module")
def chains():
    return tr.encode_chains(TOKENIZER, EXAMPLES)


@pytest.fixture(scope="module")
def truth(params, chains):
    return tr.counterfactual_truth(params, MODEL, TOKENIZER, chains, key=jax.random.key(0), n_substitutes=4,
                                   n_rollouts=4)


def test_chains_add_the_answer_as_the_last_target_row(chains):
    n, s, t = chains.encoded.steps.mask.shape
    assert chains.targets.mask.shape == (n, s + 1, t)
    np.testing.assert_array_equal(np.asarray(chains.targets.mask[:, :s]), np.asarray(chains.encoded.steps.mask))
    for i, row in enumerate(chains.encoded.tokens):
        np.testing.assert_array_equal(np.asarray(chains.targets.mask[i, s]), layout.answer_mask(row))
        start, end = layout.SAGE.answer_span(row)
        assert (int(chains.targets.starts[i, s]), int(chains.targets.ends[i, s])) == (start, end)
        assert chains.spans[i] == tuple(layout.SAGE.step_spans(row[:int(chains.answer[i].nonzero()[0][-1]) + 2]))


def test_truth_equals_a_direct_computation_per_problem(params, chains, truth):
    sub_key, _ = jax.random.split(jax.random.key(0))
    table = cf.substitution_table(TOKENIZER)
    i = 2
    subs, ok = cf.draw_substitutes(jax.random.split(sub_key, len(EXAMPLES))[i], jnp.asarray(chains.encoded.tokens[i]),
                                   table.alternatives, table.valid, 4)
    runs = cf.runs_needed(table, chains.encoded.tokens, chains.targets.mask, 4)  # every chain's tested pairs
    direct = cf.substitution_effects(params, MODEL, chains.encoded.tokens[i], chains.targets.mask[i], subs, ok,
                                     runs=runs)
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[i], truth.substitution), direct, atol=1e-5)
    suppression = cf.step_suppression(params, MODEL, chains.encoded.tokens[i], chains.encoded.steps.mask[i],
                                      chains.answer[i])
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[i], truth.suppression), suppression, atol=1e-5)
    assert (truth.resampling.shape == truth.resampling_replaced.shape == truth.resampling_accuracy_drop.shape
            == chains.encoded.steps.mask.shape[:2])
    np.testing.assert_array_equal(np.isnan(truth.resampling_accuracy_drop), np.isnan(truth.resampling))
    one_step = chains.encoded.n_steps == 1
    assert np.isnan(truth.resampling[one_step, 1]).all() and (truth.resampling_replaced[one_step, 1] == 0).all()


def test_an_oracle_map_scores_what_it_must(params, chains, truth):
    s = chains.encoded.steps.mask.shape[1]
    deps = np.asarray(truth.substitution.dependencies())
    scores = tr.score_map(params, MODEL, chains, truth, deps.astype(np.float32), k=K, key=jax.random.key(1))
    valid = np.asarray(chains.encoded.steps.mask).any(-1)
    tested = np.asarray(truth.substitution.tested)[:, :s]
    n_deps, n_content = deps[:, :s].sum(-1), tested.sum(-1)
    expected = np.minimum(n_deps, K) / np.maximum(np.minimum(n_content, K), 1)
    np.testing.assert_allclose(np.asarray(scores.precision)[valid], expected[valid], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(scores.chance)[valid], (n_deps / np.maximum(n_content, 1))[valid],
                               rtol=1e-6)
    oracle = tr.score_map(params, MODEL, chains, truth, truth.substitution.effect, k=K, key=jax.random.key(1))
    effect = np.asarray(truth.substitution.effect)[:, :s]
    varies = valid & (np.where(tested, effect, -1).max(-1) > np.where(tested, effect, np.inf).min(-1))
    np.testing.assert_allclose(np.asarray(oracle.spearman)[varies], 1.0, rtol=1e-5)
    i, step = 3, 1  # a two-step problem's second step: its top-3 content tokens cut, directly
    tokens, mask = chains.encoded.tokens[i], np.asarray(chains.encoded.steps.mask[i])
    top = np.asarray(ranking.top_k(jnp.asarray(effect[i, step]), jnp.asarray(tested[i, step]), K))
    queries = np.asarray(fa.step_queries(mask))[step]
    base = step_log_probs(sj.forward(params, tokens[None], MODEL).logits[0], tokens, mask).step[step]
    cut = sj.forward(params, tokens[None], MODEL, edits=cut_edges(MODEL, edges(queries, top))).logits[0]
    chex.assert_trees_all_close(oracle.drop_top[i, step], base - step_log_probs(cut, tokens, mask).step[step],
                                atol=1e-4)


def test_step_importance_of_a_hand_built_map(chains):
    s = chains.encoded.steps.mask.shape[1]
    i = 3  # two steps and the answer
    targets = np.asarray(chains.targets.mask[i])
    first_step = targets[0].astype(np.float32)
    score = np.tile(first_step, (s + 1, 1))  # every row puts all its mass on step 0's tokens
    importance = np.asarray(step_importance(jnp.asarray(score), jnp.asarray(targets), s))
    context = np.asarray(fa.context_candidates(jnp.asarray(targets)))
    readers = [r for r in range(1, s + 1) if (context[r] & targets[0]).any()]  # rows that can see step 0
    np.testing.assert_allclose(importance, [len(readers), 0.0], rtol=1e-6)


def test_summary_rows_and_step_agreement(params, chains, truth):
    s = chains.encoded.steps.mask.shape[1]
    targets = np.asarray(chains.targets.mask)
    last = np.stack([targets[i, max(n - 1, 0)] for i, n in enumerate(chains.encoded.n_steps)]).astype(np.float32)
    favour_last = np.tile(last[:, None], (1, s + 1, 1))  # the last rationale step gets all later mass
    scores = {"last": tr.score_map(params, MODEL, chains, truth, favour_last, k=K, key=jax.random.key(1))}
    last_step = np.arange(s)[None] == chains.encoded.n_steps[:, None] - 1
    # accuracy: the first two-step chain ties its steps (no accuracy anchor), the second's first step drops most
    two = np.flatnonzero(chains.encoded.n_steps == 2)
    assert len(two) == 2
    drop = np.where(np.arange(s)[None] == 0, 1.0, np.full((len(chains.encoded.n_steps), s), 0.5))
    drop[two[0]] = 1.0
    forced = truth._replace(resampling=np.where(last_step, 5.0, 0.1), resampling_accuracy_drop=drop,
                            suppression=truth.suppression._replace(
                                answer=jnp.where(jnp.arange(s)[None] == 0, 9.0, 0.0)))
    row = tr.summarise_scores(chains, forced, scores, K)["last"]
    assert row["chains_multi_step"] == row["chains_resampling"] == int((chains.encoded.n_steps >= 2).sum())
    assert row["chains_resampling_accuracy"] == 1
    assert row["step_agreement_resampling"] == 1.0 and row["step_agreement_suppression"] == 0.0
    assert row["step_agreement_resampling_accuracy"] == 0.0
    assert "last" in tr.format_scores({"last": row}, K) and "step_agreement_resampling_map" not in row
    # Another analysis's step ranking replaces the map's in the step columns; the map's stays beside it.
    first = np.where(np.arange(s)[None] == 0, 1.0, np.where(np.asarray(chains.encoded.steps.mask).any(-1), 0.0,
                                                            np.nan))
    ranked = tr.summarise_scores(chains, forced, scores, K, steps={"last": first})["last"]
    assert ranked["step_agreement_resampling"] == 0.0 and ranked["step_agreement_suppression"] == 1.0
    assert ranked["step_agreement_resampling_map"] == 1.0
    assert {k: v for k, v in ranked.items() if not k.startswith("step_agreement")} == {
        k: v for k, v in row.items() if not k.startswith("step_agreement")}
    summary = tr.truth_summary(chains, forced)
    assert summary["last_step_is_resampling_anchor"] == 1.0 and summary["last_step_is_suppression_anchor"] == 0.0
    assert summary["last_step_is_resampling_accuracy_anchor"] == 0.0
    assert 0.0 <= summary["data_dependencies_confirmed"] <= 1.0
    assert summary["steps"] == int(chains.encoded.n_steps.sum())


def test_no_step_with_a_choice_leaves_the_content_deletion_ratio_unmeasured(chains, truth):
    """Where every step has `k` or fewer content candidates (one-step sums) the content ratio is None, with no
    mean of an empty selection, and the unrestricted ratio is still reported."""
    n, s = chains.encoded.steps.mask.shape[:2]
    few = truth._replace(substitution=truth.substitution._replace(
        tested=jnp.zeros_like(truth.substitution.tested)))
    ones = np.ones((n, s), np.float32)
    scores = {"flat": tr.MapScores(*([ones] * 4 + [2 * ones, ones, 3 * ones, ones, ones, ones]))}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        row = tr.summarise_scores(chains, few, scores, K)["flat"]
    assert row["deletion_ratio_content"] is None
    assert row["drop_top_k_content"] is None and row["drop_random_k_content"] is None
    assert row["deletion_ratio_content_every_step"] == 2.0 and row["deletion_ratio_all"] == 3.0
    assert "n/a" in tr.format_scores({"flat": row}, K)


def test_alternative_steps_rank_each_multi_step_chain(params, chains):
    ranked = tr.alternative_steps(params, MODEL, TOKENIZER, chains, key=jax.random.key(4), alternatives=2, samples=2)
    width = max(spans[-1][1] for spans in chains.spans) + 1  # every chain decodes in one shape
    rollout = min(chains.encoded.tokens.shape[1] - min(spans[0][0] for spans in chains.spans) + 8,
                  MODEL.max_seq_len - width)
    for i, spans in enumerate(chains.spans):
        if len(spans) < 2:
            assert np.isnan(ranked[i]).all()
            continue
        length = int(chains.answer[i].nonzero()[0][-1]) + 2
        want = alternative_importance(params, MODEL, TOKENIZER, chains.encoded.tokens[i][:length], spans,
                                      key=jax.random.fold_in(jax.random.key(4), i), alternatives=2, samples=2,
                                      width=width, max_new_tokens=rollout).importance
        np.testing.assert_allclose(ranked[i, :len(spans)], want, atol=1e-6)
        assert np.isnan(ranked[i, len(spans):]).all()


def test_chunked_truth_maps_and_scores_equal_all_at_once(params, chains, truth):
    """`batch_size` bounds memory (chains one at a time, forward passes in chunks) and changes no number."""
    chunked = tr.counterfactual_truth(params, MODEL, TOKENIZER, chains, key=jax.random.key(0), n_substitutes=4,
                                      n_rollouts=0, batch_size=3)
    chex.assert_trees_all_close(chunked.substitution, truth.substitution, atol=1e-4)  # float32 sums of ~1 nats
    chex.assert_trees_all_close(chunked.suppression, truth.suppression, atol=1e-4)
    table = cf.substitution_table(TOKENIZER)
    whole = tr.attribution_maps(params, MODEL, chains, ("sage",), table=table)
    parts = tr.attribution_maps(params, MODEL, chains, ("sage",), table=table, batch_size=3)
    chex.assert_trees_all_close(parts, whole, atol=1e-5, rtol=1e-4)
    scores = [tr.score_map(params, MODEL, chains, truth, whole["sage"], k=K, key=jax.random.key(1), batch_size=b)
              for b in (None, 3)]
    chex.assert_trees_all_close(scores[1], scores[0], atol=1e-4)
