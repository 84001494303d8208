"""The step analysis from the model's own alternatives: which rewrites it follows, how it continues them and
the steps as written, and how it combines what the continuations reach."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
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
    return alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, key=jax.random.key(0), alternatives=3,
                                  samples=2)


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


def test_bookkeeping_weights_shares_and_determinism(params, analysed):
    """Three alternatives per step, two continuations each, and three (`3 * 2 // 2`) after each step as written;
    the degrees are the shares that reach the answer, the alternatives' weighted by their probability."""
    log_probs = np.asarray(cf.shifted_log_probs(params, MODEL, jnp.asarray(TOKENS), 1.0))
    for k, span in enumerate(SPANS):
        want = np.exp([w for w, _, _ in most_probable_rewrites(log_probs, TOKENS, span, 3)])
        np.testing.assert_allclose(analysed.weights[k], want, rtol=1e-5)
        assert len(analysed.kept_answers[k]) == 3 and [len(a) for a in analysed.answers[k]] == [2, 2, 2]
        assert analysed.kept[k] == np.mean([a == "14" for a in analysed.kept_answers[k]])
        reach = [np.mean([a == "14" for a in each]) for each in analysed.answers[k]]
        assert analysed.replaced[k] == pytest.approx(np.sum(want * reach) / np.sum(want), rel=1e-5)
    np.testing.assert_array_equal(analysed.importance, analysed.kept - analysed.replaced)
    again = alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, key=jax.random.key(0), alternatives=3,
                                   samples=2)
    assert again.answers == analysed.answers and again.kept_answers == analysed.kept_answers  # one key, one draw


class _Decoded(NamedTuple):
    tokens: np.ndarray


def test_the_continuations_decide_the_degrees(params, monkeypatch):
    """With the decoder replaced by one that answers 14 after every step as written and after each step's most
    probable alternative, 13 after the others: each step keeps the answer fully and loses it under the
    alternatives in the share of their weight that is not the first's. The decode samples (temperature 1)."""
    n_kept, samples = 2 * 3, 2  # two steps, 3 continuations as written each; 2 per alternative

    def tail(prompt, answer):  # the answer, after its marker unless the prompt ends with it (the last step)
        marked = prompt[-1] == layout.ANSWER
        return ([] if marked else [layout.ANSWER]) + TOKENIZER.encode(answer) + [layout.EOS] * (2 if marked else 1)

    def fake(params, cfg, prompt, *, max_new_tokens, temperature, key, **kwargs):
        assert temperature == 1.0 and key is not None
        alternative = (np.arange(prompt.shape[0]) - n_kept) // samples % 3
        tails = [tail(row, "14" if r < n_kept or a == 0 else "13")
                 for r, (row, a) in enumerate(zip(np.asarray(prompt), alternative))]
        return _Decoded(np.concatenate([np.asarray(prompt), np.asarray(tails, np.int32)], 1))

    monkeypatch.setattr(alternatives, "generate", fake)
    got = alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, key=jax.random.key(1), alternatives=3,
                                 samples=samples)
    np.testing.assert_array_equal(got.kept, [1.0, 1.0])
    np.testing.assert_allclose(got.replaced, got.weights[:, 0] / got.weights.sum(1), rtol=1e-6)
    np.testing.assert_allclose(got.importance, 1.0 - got.replaced, rtol=1e-6)
    assert got.answers[1] == (("14", "14"), ("13", "13"), ("13", "13"))


def test_a_chain_without_alternatives_has_no_importance(params, monkeypatch):
    monkeypatch.setattr(alternatives, "most_probable_rewrites", lambda *args: [])  # every step has probability one
    got = alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, key=jax.random.key(0), samples=1)
    assert np.isnan(got.importance).all() and np.isnan(got.replaced).all() and got.answers == ((), ())
    assert [len(a) for a in got.kept_answers] == [8, 8] and not got.weights.any()  # 16 * 1 // 2 as written


def test_bad_input_is_named(params):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="at least one step"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, [], key=key)
    with pytest.raises(ValueError, match="alternatives=0"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, key=key, alternatives=0)
    with pytest.raises(ValueError, match="samples=0"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, key=key, samples=0)
    with pytest.raises(ValueError, match="kept_samples must be >= 1"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, key=key, kept_samples=0)
    with pytest.raises(ValueError, match="through its answer"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS[:SPANS[-1][1] + 1], SPANS, key=key)
    with pytest.raises(ValueError, match="width=3"):
        alternative_importance(params, MODEL, TOKENIZER, TOKENS, SPANS, key=key, width=3)
