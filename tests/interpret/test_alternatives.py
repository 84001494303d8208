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


def test_kept_is_the_probability_of_the_chain_after_the_step(params, analysed):
    log_probs = np.asarray(cf.shifted_log_probs(params, MODEL, jnp.asarray(TOKENS), 1.0))
    own = log_probs[np.arange(len(TOKENS)), TOKENS]
    np.testing.assert_allclose(analysed.kept, [np.exp(own[end + 1:].sum()) for _, end in SPANS], rtol=1e-5)
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


def test_an_alternatives_degree_of_reaching_the_answer(params, monkeypatch):
    """With the decoder replaced by a fixed continuation: one that finishes the rewritten step and then reaches
    another answer scores the probability of the chain's rest after that step (computed here directly); one that
    goes on to write the chain's answer counts fully."""
    k, (start, end) = 1, SPANS[1]
    log_probs = np.asarray(cf.shifted_log_probs(params, MODEL, jnp.asarray(TOKENS), 1.0))
    (_, d, t), = most_probable_rewrites(log_probs, TOKENS, (start, end), 1)
    digit, end_token = TOKENIZER.encode("3")[0], TOKENS[end]

    def decode_with(continuation):
        def fake(params, cfg, prompt, *, max_new_tokens, **kwargs):
            tail = np.resize(np.asarray(continuation, np.int32), (prompt.shape[0], len(continuation)))
            return _Decoded(np.concatenate([np.asarray(prompt), tail], 1))
        monkeypatch.setattr(alternatives, "generate", fake)
        return alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, alternatives=1)

    stray = decode_with([digit, end_token, digit, digit])
    finished = TOKENS[:d] + [t, digit, end_token]
    row = finished + TOKENS[end + 1:]
    scored = np.asarray(cf.shifted_log_probs(params, MODEL, jnp.asarray(row), 1.0))
    want = np.exp(sum(scored[i, row[i]] for i in range(len(finished), len(row))))
    assert stray.answers[k] != ("14",)
    np.testing.assert_allclose(stray.replaced[k], want, rtol=1e-4)
    reaching = decode_with([digit, end_token] + TOKENS[end + 1:])
    assert reaching.answers[k] == ("14",)
    assert reaching.replaced[k] == 1.0 and reaching.importance[k] == reaching.kept[k] - 1.0


def test_a_chain_without_alternatives_has_no_importance(params, monkeypatch):
    monkeypatch.setattr(alternatives, "most_probable_rewrites", lambda *args: [])  # every step has probability one
    got = alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS)
    assert np.isnan(got.importance).all() and np.isnan(got.replaced).all() and got.answers == ((), ())
    assert np.all(got.kept > 0) and not got.weights.any()


def test_bad_input_is_named(params):
    with pytest.raises(ValueError, match="at least one step"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, [])
    with pytest.raises(ValueError, match="alternatives must be >= 1"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, alternatives=0)
    with pytest.raises(ValueError, match="through its answer"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS[:SPANS[-1][1] + 1], SPANS)
    with pytest.raises(ValueError, match="width=3"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, width=3)
