"""The step analysis from the model's own alternatives: which rewrites it follows, what it measures after the
step and after each rewrite, and how it combines them."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.data import Tokenizer
from sage_jax.interpret import alternatives, counterfactual as cf
from sage_jax.interpret.alternatives import alternative_importance, most_probable_rewrites
from tests.conftest import perturbed_params

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)
ENCODED = layout.SAGE.encode(TOKENIZER, "7+5+2=?", ["7+5=12", "12+2=14"], "14")
TOKENS = [int(t) for t in ENCODED.tokens]
SPANS = ENCODED.step_spans


@pytest.fixture(scope="module")
def params():
    return perturbed_params(MODEL, seed=5, scale=0.3)


@pytest.fixture(scope="module")
def analysed(params):
    return alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, alternatives=3)


def test_the_most_probable_first_departures_in_order():
    """Tokens [0, 1, 2]; the span is positions 1-2. First departures and their probabilities under the model:
    (1, 0) 0.7, (2, 0) 0.2 * 0.6, (1, 2) 0.1, (2, 1) 0.2 * 0.1 (what `sample_rewrites` draws, normalised)."""
    with np.errstate(divide="ignore"):
        log_probs = np.log(np.asarray([[1 / 3] * 3, [0.7, 0.2, 0.1], [0.6, 0.1, 0.3]]))
        certain = np.log(np.asarray([[1 / 3] * 3, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    got = most_probable_rewrites(log_probs, [0, 1, 2], (1, 2), 3)
    assert [(d, t) for _, d, t in got] == [(1, 0), (2, 0), (1, 2)]
    np.testing.assert_allclose(np.exp([w for w, _, _ in got]), [0.7, 0.12, 0.1], rtol=1e-6)
    assert len(most_probable_rewrites(log_probs, [0, 1, 2], (1, 2), 10)) == 4  # all there are
    assert most_probable_rewrites(certain, [0, 1, 2], (1, 2), 3) == []  # a span of probability one


def _rest_probability(params, row, start):
    """The probability of `row[start:]` given `row[:start]`, computed directly."""
    scored = np.asarray(cf.shifted_log_probs(params, MODEL, jnp.asarray(row), 1.0))
    return np.exp(sum(scored[i, row[i]] for i in range(start, len(row))))


def test_the_steps_own_degree_and_the_alternatives_weights(params, analysed):
    """The random model's greedy continuation writes neither the chain's rest nor its answer: the degree of
    each step as written is the probability of the rest after it."""
    assert "14" not in analysed.kept_answers
    log_probs = np.asarray(cf.shifted_log_probs(params, MODEL, jnp.asarray(TOKENS), 1.0))
    np.testing.assert_allclose(analysed.kept, [_rest_probability(params, TOKENS, end + 1) for _, end in SPANS],
                               rtol=1e-4)
    for k, span in enumerate(SPANS):  # the weights are those of the step's most probable departures
        want = np.exp([w for w, _, _ in most_probable_rewrites(log_probs, TOKENS, span, 3)])
        np.testing.assert_allclose(analysed.weights[k], want, rtol=1e-5)


def test_importance_is_kept_minus_the_alternatives_degree_of_reaching_the_answer(params, analysed):
    np.testing.assert_array_equal(analysed.importance, analysed.kept - analysed.replaced)
    assert np.all((analysed.replaced >= 0) & (analysed.replaced <= 1))
    again = alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, alternatives=3)
    assert again.answers == analysed.answers  # the decodes are greedy: no key, nothing random
    np.testing.assert_array_equal(again.replaced, analysed.replaced)


class _Decoded(NamedTuple):
    tokens: np.ndarray


def _decode_with(params, monkeypatch, continuation, alternatives_per_step=1):
    """The analysis with the decoder replaced by one that writes `continuation` after every prompt."""
    def fake(params, cfg, prompt, *, max_new_tokens, **kwargs):
        tail = np.resize(np.asarray(continuation, np.int32), (prompt.shape[0], len(continuation)))
        return _Decoded(np.concatenate([np.asarray(prompt), tail], 1))
    monkeypatch.setattr(alternatives, "generate", fake)
    return alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, alternatives=alternatives_per_step)


def test_a_continuation_counts_fully_only_on_another_path_to_the_answer(params, monkeypatch):
    """With the decoder replaced by a fixed continuation, the degree of step 1's one alternative: a
    continuation that finishes the rewritten step and then reaches another answer, or writes the chain's rest
    as written, scores the probability of that rest (computed here directly); one that reaches the chain's
    answer by another path counts fully. The steps as written follow the same rule."""
    k, (start, end) = 1, SPANS[1]
    log_probs = np.asarray(cf.shifted_log_probs(params, MODEL, jnp.asarray(TOKENS), 1.0))
    (_, d, t), = most_probable_rewrites(log_probs, TOKENS, (start, end), 1)
    digit, end_token, rest = TOKENIZER.encode("3")[0], TOKENS[end], TOKENS[end + 1:]
    finished = TOKENS[:d] + [t, digit, end_token]
    after_rewrite = _rest_probability(params, finished + rest, len(finished))

    stray = _decode_with(params, monkeypatch, [digit, end_token, digit, digit])
    assert stray.answers[k] != ("14",)
    np.testing.assert_allclose(stray.replaced[k], after_rewrite, rtol=1e-4)
    same_path = _decode_with(params, monkeypatch, [digit, end_token] + rest)
    assert same_path.answers[k] == ("14",)
    np.testing.assert_allclose(same_path.replaced[k], after_rewrite, rtol=1e-4)
    other_path = _decode_with(params, monkeypatch, [digit, end_token] + rest[:-1] + [layout.STEP])  # not <eos>
    assert other_path.answers[k] == ("14",) and other_path.replaced[k] == 1.0
    assert other_path.importance[k] == other_path.kept[k] - 1.0

    after = [_rest_probability(params, TOKENS, e + 1) for _, e in SPANS]
    follows = _decode_with(params, monkeypatch, TOKENS[SPANS[0][1] + 1:])  # step 0's rest as written
    assert follows.kept_answers[0] == "14"
    np.testing.assert_allclose(follows.kept[0], after[0], rtol=1e-4)
    other = _decode_with(params, monkeypatch, TOKENS[SPANS[0][1] + 1:-1] + [layout.STEP])
    assert other.kept_answers[0] == "14" and other.kept[0] == 1.0
    assert other.kept_answers[1] != "14"  # after step 1 the same tokens reach another answer
    np.testing.assert_allclose(other.kept[1], after[1], rtol=1e-4)


def test_a_chain_without_alternatives_has_no_importance(params, monkeypatch):
    monkeypatch.setattr(alternatives, "most_probable_rewrites", lambda *args: [])  # every step has probability one
    got = alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS)
    assert np.isnan(got.importance).all() and np.isnan(got.replaced).all() and got.answers == ((), ())
    assert np.all(got.kept > 0) and len(got.kept_answers) == 2 and not got.weights.any()


def test_bad_input_is_named(params):
    with pytest.raises(ValueError, match="at least one step"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, [])
    with pytest.raises(ValueError, match="alternatives must be >= 1"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, alternatives=0)
    with pytest.raises(ValueError, match="through its answer"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS[:SPANS[-1][1] + 1], SPANS)
    with pytest.raises(ValueError, match="width=3"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, width=3)
