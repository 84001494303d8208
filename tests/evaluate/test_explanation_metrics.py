"""Explanation metrics on held-out chained sums: shapes and bounds, the true dependencies are what precision
is scored against, padding changes nothing, one drop and one AOPC equal a direct computation; the content-only
variant drops exactly the format tokens; exact-path consistency and the amortised-vs-exact agreement equal
direct computations."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.data import ChainSumKnobs, Tokenizer
from sage_jax.data.schema import encode_example
from sage_jax.evaluate import procedural_by_difficulty
from sage_jax.evaluate.consistency import amortised_agreement, exact_consistency, summarise_amortised
from sage_jax.evaluate.explanations import (FORMAT_CHARACTERS, content_candidates, encode_true_chains,
                                            explanation_metrics, format_summary, format_vocabulary, map_metrics,
                                            summarise)
from sage_jax.interpret import faithfulness as fa
from sage_jax.interpret.amortised import analyse_batch
from sage_jax.interpret.interventions import cut_edges, edges
from sage_jax.interpret.patching import step_log_probs
from sage_jax.interpret.significance import significance
from sage_jax.layout import find_steps
from sage_jax.nn.inverse import init_inverse_params
from tests.conftest import perturbed_params

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)
EXAMPLES = procedural_by_difficulty(ChainSumKnobs(max_value=(9, 9)), (1, 3), 2, seed=7).examples
K = 3


@pytest.fixture(scope="module")
def params():
    return perturbed_params(MODEL, seed=3, scale=0.3)  # random weights with effects well above rounding


@pytest.fixture(scope="module")
def metrics(params):
    return explanation_metrics(params, MODEL, TOKENIZER, EXAMPLES, k=K, key=jax.random.key(1), n_random=2)


def test_shapes_bounds_and_padding_rows(metrics):
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    n, s, t = encoded.deps.shape
    assert (n, s) == (4, 3) and t == max(len(encode_example(ex, TOKENIZER).tokens) for ex in EXAMPLES)
    np.testing.assert_array_equal(metrics.n_steps, [1, 1, 3, 3])
    np.testing.assert_array_equal(metrics.valid, np.arange(3)[None, :] < np.array([1, 1, 3, 3])[:, None])
    assert metrics.drop_random.shape == (4, 3, 2) and metrics.attribution.shape == (4, 3, t)
    valid = np.asarray(metrics.valid)
    for name in ("precision", "recall", "chance_precision"):
        values = np.asarray(getattr(metrics, name))[valid]
        assert np.all((values >= 0) & (values <= 1)), name
    # Padding rows own no token: nothing is deleted from them and they have no log-probability to lose.
    np.testing.assert_array_equal(np.asarray(metrics.drop_top)[~valid], 0.0)
    np.testing.assert_array_equal(np.asarray(metrics.base)[~valid], 0.0)


def test_a_map_equal_to_the_true_dependencies_scores_precision_one(params):
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    deps = encoded.deps
    exact = map_metrics(params, MODEL, encoded, deps.astype(np.float32), k=K, key=jax.random.key(1), n_random=1)
    valid = np.asarray(exact.valid)
    np.testing.assert_array_equal(np.asarray(exact.precision)[valid], 1.0)  # every step has >= 3 dependencies
    np.testing.assert_allclose(np.asarray(exact.recall)[valid], K / deps.sum(-1)[valid], rtol=1e-6)
    anti = map_metrics(params, MODEL, encoded, -deps.astype(np.float32), k=K, key=jax.random.key(1), n_random=1)
    np.testing.assert_array_equal(np.asarray(anti.precision)[valid], 0.0)
    candidates = np.asarray(jax.vmap(fa.context_candidates)(encoded.steps.mask))
    chance = (deps & candidates).sum(-1) / np.maximum(candidates.sum(-1), 1)
    np.testing.assert_allclose(np.asarray(exact.chance_precision)[valid], chance[valid], rtol=1e-6)
    table = summarise(exact, K)
    assert table["all"]["precision_at_k"] == 1.0 and table[1]["problems"] == 2 and table[3]["steps"] == 6
    assert "1.00 (" in format_summary(table)


def test_one_problem_equals_a_direct_unpadded_computation(params, metrics):
    i, step = 2, 1  # the second step of a 3-step chain
    item = encode_example(EXAMPLES[i], TOKENIZER)
    tokens, steps = jnp.asarray(item.tokens), find_steps(item.tokens)
    length = len(item.tokens)
    score = significance(params, MODEL, tokens, steps).score
    chex.assert_trees_all_close(metrics.attribution[i, :, :length], score, atol=1e-6)
    candidates = np.asarray(fa.context_candidates(steps.mask))[step]
    ranked = np.argsort(-np.where(candidates, np.asarray(score[step]), -np.inf), kind="stable")[:K]
    sources = np.zeros(length, bool)
    sources[ranked] = True
    queries = np.asarray(fa.step_queries(steps.mask))[step]
    lp = lambda edits: step_log_probs(sj.forward(params, tokens[None], MODEL, edits=edits).logits[0],  # noqa: E731
                                      tokens, steps.mask).step[step]
    expected = lp(None) - lp(cut_edges(MODEL, edges(jnp.asarray(queries), jnp.asarray(sources))))
    # A difference of ~50-nat log-probabilities in float32: 1e-3 absolute.
    np.testing.assert_allclose(metrics.drop_top[i, step], expected, rtol=1e-4, atol=1e-3)
    direct = fa.faithfulness(params, MODEL, tokens, steps.mask, score)
    np.testing.assert_allclose(metrics.aopc_comprehensiveness[i], direct.aopc_comprehensiveness, rtol=1e-4,
                               atol=1e-3)


def test_examples_without_dependencies_are_rejected(params):
    bare = dataclasses.replace(EXAMPLES[0], dependencies=None)
    with pytest.raises(ValueError, match=r"examples\[1\].*no step dependencies"):
        explanation_metrics(params, MODEL, TOKENIZER, [EXAMPLES[0], bare], k=K, key=jax.random.key(0))


def test_format_vocabulary_marks_exactly_special_and_layout_punctuation_tokens():
    is_format = format_vocabulary(TOKENIZER)
    assert is_format.shape == (512,) and is_format[:layout.NUM_SPECIAL].all()
    for text in ("=?", "=", ",", ".", " "):
        ids = TOKENIZER.encode(text)
        assert len(ids) == 1 and is_format[ids[0]], text
    for text in ("+", "7", "-", "x", "(", "Step"):
        assert not is_format[TOKENIZER.encode(text)].any(), text
    expected = {i for i in range(layout.NUM_SPECIAL, 512) if set(TOKENIZER.decode([i])) <= FORMAT_CHARACTERS}
    assert set(np.flatnonzero(is_format[layout.NUM_SPECIAL:]) + layout.NUM_SPECIAL) == expected


def test_content_candidates_drop_exactly_the_format_tokens_of_a_chain():
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    i = 2  # a 3-step chain
    tokens = encoded.tokens[i]
    texts = [TOKENIZER.render([t]) for t in tokens]
    all_candidates = np.asarray(fa.context_candidates(encoded.steps.mask[i]))
    content = np.asarray(content_candidates(encoded.steps.mask[i], encoded.content[i]))
    dropped = {texts[j] for j in np.flatnonzero(all_candidates.any(0) & ~content.any(0))}
    assert dropped == {"<bos>", "<question>", "=?", "<step>", "="}
    kept = {texts[j] for j in np.flatnonzero(content.any(0))}
    assert kept <= set("0123456789+")
    np.testing.assert_array_equal(content, all_candidates & encoded.content[i][None])
    # Every true dependency is a content token, so the variant never hides one.
    assert not (encoded.deps & ~encoded.content[:, None, :]).any()


def test_content_only_recovery_is_reported_beside_the_unrestricted_one(params):
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    # A map that ranks format tokens first, then the true dependencies: the unrestricted top-3 holds no true
    # dependency (every step has >= 3 format candidates), the content-only top-3 only true dependencies.
    anchored = np.where(encoded.content, 0.0, 1.0)[:, None, :] + 0.5 * encoded.deps
    m = map_metrics(params, MODEL, encoded, anchored.astype(np.float32), k=K, key=jax.random.key(1), n_random=1)
    valid = np.asarray(m.valid)
    np.testing.assert_array_equal(np.asarray(m.precision)[valid], 0.0)
    np.testing.assert_array_equal(np.asarray(m.content_precision)[valid], 1.0)
    content = np.asarray(jax.vmap(content_candidates)(encoded.steps.mask, encoded.content))
    chance = (encoded.deps & content).sum(-1) / np.maximum(content.sum(-1), 1)
    np.testing.assert_allclose(np.asarray(m.content_chance_precision)[valid], chance[valid], rtol=1e-6)
    row = summarise(m, K)["all"]
    assert row["precision_at_k"] == 0.0 and row["content_precision_at_k"] == 1.0
    assert row["content_chance_precision_at_k"] == pytest.approx(chance[valid].mean(), rel=1e-6)
    header = format_summary(summarise(m, K)).splitlines()[0]
    assert "P@3 (chance)" in header and "content P@3 (chance)" in header


def test_exact_consistency_equals_attention_vs_rollout_agreement_of_one_problem(params):
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    scores = np.asarray(exact_consistency(params, MODEL, encoded))
    assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 1))
    item = encode_example(EXAMPLES[2], TOKENIZER)
    tokens, steps = jnp.asarray(item.tokens), find_steps(item.tokens)
    attention = significance(params, MODEL, tokens, steps).score
    rolled = significance(params, MODEL, tokens, steps, weighting="rollout").score
    sources = np.asarray(steps.sources)
    expected = 1.0 - np.abs(np.asarray(attention) - np.asarray(rolled))[sources].mean()
    np.testing.assert_allclose(scores[2], expected, rtol=1e-5)


def test_amortised_agreement_with_an_initialised_inverse_layer(params, metrics):
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    inverse = init_inverse_params(MODEL, jax.random.key(5))
    result = amortised_agreement(params, inverse, MODEL, encoded, metrics.attribution, k=K)
    own = analyse_batch(params, inverse, MODEL, jnp.asarray(encoded.tokens), encoded.steps.mask)
    amortised = np.asarray(own.significance) * np.asarray(encoded.steps.sources)
    where = np.asarray(encoded.steps.sources) & np.asarray(metrics.valid)[:, :, None]
    gap = np.abs(amortised - np.clip(np.asarray(metrics.attribution), 0, 1))
    expected = [1.0 - gap[i][where[i]].mean() for i in range(4)]
    np.testing.assert_allclose(result.agreement, expected, rtol=1e-5)
    assert np.all((np.asarray(result.score) >= 0) & (np.asarray(result.score) <= 1))
    assert set(np.round(np.asarray(result.top_k_overlap)[np.asarray(result.valid)] * 3).tolist()) <= {0, 1, 2, 3}
    # Against itself the amortised map agrees fully.
    same = amortised_agreement(params, inverse, MODEL, encoded, jnp.asarray(amortised), k=K)
    np.testing.assert_allclose(same.agreement, 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(same.top_k_overlap)[np.asarray(same.valid)], 1.0)
    np.testing.assert_allclose(np.asarray(same.rank_correlation)[np.asarray(same.valid)], 1.0, rtol=1e-5)
    summary = summarise_amortised(result)
    assert sorted(summary) == ["consistency", "fidelity", "map_agreement", "rank_correlation", "top_k_overlap"]
