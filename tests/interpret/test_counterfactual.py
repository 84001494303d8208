"""Counterfactual ground truth: token kinds and their substitutes, substitution effects against a loop of
direct forward passes, causality, step suppression against a direct edge cut, and resampling importance's
bookkeeping and determinism."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.data import Tokenizer
from sage_jax.interpret import counterfactual as cf
from sage_jax.interpret.interventions import cut_edges, edges
from sage_jax.interpret.patching import step_log_probs
from tests.conftest import perturbed_params

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)
ENCODED = layout.SAGE.encode(TOKENIZER, "7+5+2=?", ["7+5=12", "12+2=14"], "14")
TOKENS = np.asarray(ENCODED.tokens)
MASK = np.asarray(sj.layout.from_spans(ENCODED.step_spans, len(TOKENS)).mask)


@pytest.fixture(scope="module")
def params():
    return perturbed_params(MODEL, seed=5, scale=0.3)


@pytest.fixture(scope="module")
def table():
    return cf.substitution_table(TOKENIZER)


def test_token_kinds():
    assert cf.token_kind("7") == ("number", ("", 1))
    assert cf.token_kind(" 14") == ("number", (" ", 2))
    assert cf.token_kind("+") == ("operator", ("",))
    assert cf.token_kind("x") == ("word", ("", 1, False, False))
    assert cf.token_kind(" Ab") == ("word", (" ", 2, False, True))
    for text in ("=?", "=", " ", "", "1a", "é"):
        assert cf.token_kind(text)[0] == "none", text


def test_table_substitutes_digits_by_digits_and_never_special_or_format(table):
    digits = [TOKENIZER.encode(str(d))[0] for d in range(10)]
    seven = digits[7]
    assert set(table.alternatives[seven][table.valid[seven]].tolist()) == set(digits) - {seven}
    plus = TOKENIZER.encode("+")[0]
    others = table.alternatives[plus][table.valid[plus]]
    assert plus not in others and all(cf.token_kind(TOKENIZER.decode([t]))[0] == "operator" for t in others)
    for token in list(layout.NAMES) + TOKENIZER.encode("=?"):
        assert not table.valid[token].any() and cf.KINDS[table.kind[token]] == "none"
    again = cf.substitution_table(TOKENIZER)
    np.testing.assert_array_equal(again.alternatives, table.alternatives)


def test_draw_substitutes_are_distinct_alternatives(table):
    subs, ok = cf.draw_substitutes(jax.random.key(0), jnp.asarray(TOKENS), table.alternatives, table.valid, 4)
    subs, ok = np.asarray(subs), np.asarray(ok)
    for j, token in enumerate(TOKENS):
        real = subs[j][ok[j]]
        assert len(set(real.tolist())) == len(real) == min(4, table.valid[token].sum())
        assert token not in real and set(real.tolist()) <= set(table.alternatives[token][table.valid[token]].tolist())
    again = cf.draw_substitutes(jax.random.key(0), jnp.asarray(TOKENS), table.alternatives, table.valid, 4)
    np.testing.assert_array_equal(np.asarray(again[0]), subs)


def test_ids_past_the_table_have_no_substitutes(table):
    """A model's vocabulary may be padded past its tokenizer's (a random chat model generated id 355 of a 326-id
    table): such an id has no kind, rather than the alternatives of the id an array index would clamp it to."""
    vocab = table.valid.shape[0]
    tokens = TOKENS.copy()
    digit = 2  # the question's first digit
    assert table.valid[tokens[digit]].any()
    tokens[digit] = vocab + 3
    _, ok = cf.draw_substitutes(jax.random.key(0), jnp.asarray(tokens), table.alternatives, table.valid, 4)
    assert not np.asarray(ok)[digit].any() and np.asarray(ok).any()
    assert cf.runs_needed(table, tokens, MASK, 4, multiple=1) == cf.runs_needed(table, TOKENS, MASK, 4, multiple=1) - 4


def test_substitution_effects_equal_direct_forward_passes(params, table):
    subs, ok = cf.draw_substitutes(jax.random.key(1), jnp.asarray(TOKENS), table.alternatives, table.valid, 3)
    effects = cf.substitution_effects(params, MODEL, TOKENS, MASK, subs, ok, batch_size=8)
    base_logits = sj.forward(params, TOKENS[None], MODEL).logits[0]
    base = step_log_probs(base_logits, TOKENS, MASK).step
    queries = np.asarray(sj.interpret.faithfulness.step_queries(MASK))
    subs, ok = np.asarray(subs), np.asarray(ok)
    cases = [(j, m) for j in range(len(TOKENS)) for m in range(subs.shape[1]) if ok[j, m]]
    changed = np.repeat(TOKENS[None], len(cases), axis=0)
    for row, (j, m) in enumerate(cases):
        changed[row, j] = subs[j, m]
    all_logits = jax.jit(sj.forward, static_argnums=2)(params, changed, MODEL).logits  # one direct pass per row
    for row, (j, m) in enumerate(cases):
        logits = all_logits[row]
        chex.assert_trees_all_close(effects.delta[j, m], step_log_probs(logits, changed[row], MASK).step - base,
                                    atol=1e-4)
        flipped = ((np.argmax(logits, -1) != np.argmax(base_logits, -1))[None] & queries).any(-1)
        np.testing.assert_array_equal(np.asarray(effects.flipped[j, m]), flipped)
    untested = ~ok
    assert not np.asarray(effects.flipped)[untested].any() and not np.asarray(effects.delta)[untested].any()
    context = np.asarray(sj.interpret.faithfulness.context_candidates(MASK))
    np.testing.assert_array_equal(np.asarray(effects.tested), context & ok.any(-1)[None])
    count = np.maximum(ok.sum(-1), 1)[None]
    expected = np.abs(np.asarray(effects.delta)).sum(1).T / count
    chex.assert_trees_all_close(effects.effect, np.where(effects.tested, expected, 0.0), rtol=1e-6)
    rate = np.asarray(effects.flip_rate)
    np.testing.assert_array_equal(np.asarray(effects.dependencies(0.5)), np.asarray(effects.tested) & (rate >= 0.5))


def test_running_only_the_needed_substitutes_gives_the_same_effects(params, table):
    """`runs_needed` passes (the valid substitutes before some step's first query) give every effect, flip rate
    and tested pair of all `T * M` passes, to float32 rounding (the passes are batched differently); fewer runs
    drop the last needed substitutes, which come back invalid and untested rather than as effects of 0."""
    subs, ok = cf.draw_substitutes(jax.random.key(1), jnp.asarray(TOKENS), table.alternatives, table.valid, 3)
    full = cf.substitution_effects(params, MODEL, TOKENS, MASK, subs, ok)
    context = np.asarray(sj.interpret.faithfulness.context_candidates(MASK)).any(0)
    needed = int((np.asarray(ok) & context[:, None]).sum())
    runs = cf.runs_needed(table, TOKENS, MASK, 3, multiple=4)
    assert runs == -(-needed // 4) * 4 < len(TOKENS) * 3  # the format tokens and the last step's are skipped
    assert cf.runs_needed(table, np.stack([TOKENS, TOKENS]), np.stack([MASK, MASK]), 3, multiple=4) == runs
    fewer = cf.substitution_effects(params, MODEL, TOKENS, MASK, subs, ok, runs=runs, batch_size=8)
    for name in ("effect", "flip_rate"):
        chex.assert_trees_all_close(getattr(fewer, name), getattr(full, name), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fewer.tested), np.asarray(full.tested))
    short = cf.substitution_effects(params, MODEL, TOKENS, MASK, subs, ok, runs=needed - 3)
    assert int(np.asarray(short.valid).sum()) == needed - 3
    last = int(np.nonzero(np.asarray(ok) & context[:, None])[0][-1])  # the last needed position lost its runs
    assert not np.asarray(short.tested)[:, last].any() and np.asarray(full.tested)[:, last].any()


def test_later_tokens_never_move_an_earlier_step(params, table):
    """Causality: a substitution after step 0's last token leaves step 0's log-probability unchanged.

    Unchanged up to float32 rounding, not bitwise: the substituted runs are one batch of `T * M` rows and the
    reference a batch of one, and XLA:CPU may block the two matmuls differently (seen once: 7.6e-6). A token that
    leaked backwards would move the step by far more: the earlier tokens' substitutions move it by 1e-2 and more."""
    subs, ok = cf.draw_substitutes(jax.random.key(2), jnp.asarray(TOKENS), table.alternatives, table.valid, 2)
    effects = cf.substitution_effects(params, MODEL, TOKENS, MASK, subs, ok)
    last = int(np.nonzero(MASK[0])[0][-1])
    delta = np.abs(np.asarray(effects.delta)[:, :, 0])
    assert delta[last + 1:].max() <= 1e-5 and not np.asarray(effects.flipped)[last + 1:, :, 0].any()
    assert delta[:last + 1].max() >= 1e-2
    first_query = int(  # step 1's own tokens (and its marker, its first query) are its targets, never tested
np.nonzero(np.asarray(sj.interpret.faithfulness.step_queries(MASK))[1])[0][0])
    assert not np.asarray(effects.tested)[1, first_query:].any()


def test_step_suppression_equals_a_direct_cut(params):
    answer = layout.answer_mask(TOKENS)
    result = cf.step_suppression(params, MODEL, TOKENS, MASK, answer)
    base_logits = sj.forward(params, TOKENS[None], MODEL).logits[0]
    base = step_log_probs(base_logits, TOKENS, MASK, answer)
    last = int(np.nonzero(MASK[0])[0][-1])
    later = np.arange(len(TOKENS)) > last
    out = sj.forward(params, TOKENS[None], MODEL, edits=cut_edges(MODEL, edges(later, MASK[0]))).logits[0]
    cut = step_log_probs(out, TOKENS, MASK, answer)
    chex.assert_trees_all_close(result.step[0, 1], base.step[1] - cut.step[1], atol=1e-4)
    chex.assert_trees_all_close(result.answer[0], base.answer - cut.answer, atol=1e-4)
    assert float(result.step[0, 0]) == 0.0 and float(result.step[1, 0]) == 0.0 and float(result.step[1, 1]) == 0.0


def test_smoothed_kl():
    assert cf._smoothed_kl(["1", "2"], ["2", "1"]) == 0.0
    p, q = (2 + 1) / (2 + 2), (0 + 1) / (1 + 2)  # p = {a: 2}, q = {b: 1}, support {a, b}
    expected = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert cf._smoothed_kl(["a", "a"], ["b"]) == pytest.approx(expected)


def test_resampling_importance_bookkeeping_and_determinism(params):
    spans = ENCODED.step_spans
    run = lambda: cf.resampling_importance(params, MODEL, TOKENIZER, TOKENS, spans, key=jax.random.key(3), n=6)
    result = run()
    assert result.kl.shape == result.accuracy_kept.shape == result.n_replaced.shape == (len(spans),)
    for k, (start, _) in enumerate(spans):
        assert result.n_replaced[k] == 6  # a random model gives no step probability one
        assert len(result.answers_kept[k]) == 6 and len(result.answers_replaced[k]) == 6
        assert result.kl[k] >= 0.0
        assert result.accuracy_replaced[k] == np.mean([a == "14" for a in result.answers_replaced[k]])
        assert result.accuracy_kept[k] == np.mean([a == "14" for a in result.answers_kept[k]])
        for rewrite in result.rewrites[k]:  # the step's own tokens, then a different one
            own = [int(t) for t in TOKENS[start:start + len(rewrite)]]
            assert list(rewrite[:-1]) == own[:-1] and rewrite[-1] != own[-1]
    again = run()
    np.testing.assert_array_equal(again.n_replaced, result.n_replaced)
    assert again.answers_kept == result.answers_kept and again.answers_replaced == result.answers_replaced
    assert again.rewrites == result.rewrites


def test_resampling_importance_adds_rounds_only_while_the_anchor_is_uncertain(params):
    """Round 0 is the one-round draw itself; a confidence no bootstrap can reach draws every round, one that
    any reaches stops after the first; each later round has its own key."""
    spans = ENCODED.step_spans
    run = functools.partial(cf.resampling_importance, params, MODEL, TOKENIZER, TOKENS, spans,
                            key=jax.random.key(3), n=4)
    one, settled, every = run(), run(max_n=12, confidence=0.0), run(max_n=12, confidence=1.01)
    assert settled.answers_kept == one.answers_kept and settled.answers_replaced == one.answers_replaced
    np.testing.assert_array_equal(settled.kl, one.kl)
    for k in range(len(spans)):
        assert len(every.answers_kept[k]) == 12 and every.n_replaced[k] == 12
        assert every.answers_kept[k][:4] == one.answers_kept[k] and every.rewrites[k][:4] == one.rewrites[k]
        assert every.kl[k] == pytest.approx(cf._smoothed_kl(every.answers_kept[k], every.answers_replaced[k]))
    assert any(every.rewrites[k][4:8] != every.rewrites[k][:4] for k in range(len(spans)))
    assert run(max_n=10, confidence=1.01).n_replaced.tolist() == [12] * len(spans)  # whole rounds only
    with pytest.raises(ValueError, match="max_n=2"):
        run(max_n=2)


def test_settled_is_trivial_below_two_rewritable_steps_and_reads_the_posterior():
    rng = np.random.default_rng(0)
    assert cf._settled([["1"] * 4, ["1"] * 4], [["2"] * 4, []], rng, 1.0)
    clear = ([["1"] * 16, ["1"] * 16], [["1"] * 15 + ["2"], ["2"] * 16])  # step 1's rewrites always change it
    assert cf._settled(*clear, rng, 0.95)
    tied = ([["1"] * 8, ["1"] * 8], [["1"] * 4 + ["2"] * 4, ["2"] * 4 + ["1"] * 4])
    assert not cf._settled(*tied, rng, 0.9)
    # One right answer in 16 separates the steps' point estimates, but a step whose 16 rollouts never reached the
    # right answer may still reach it a tenth of the time: a bootstrap, which never draws an unseen answer,
    # would call this settled (step 1's resamples lack the "1" in a third of draws and then tie with step 0).
    close = ([["1"] * 16, ["1"] * 16], [["2"] * 16, ["2"] * 15 + ["1"]])
    assert not cf._settled(*close, rng, 0.9)


def test_sample_rewrites_draws_the_model_conditioned_on_the_span_differing():
    """Tokens [0, 1, 2]; the span is positions 1-2. First divergences and their probabilities under the
    model: (1, 0) 0.7, (1, 2) 0.1, (2, 0) 0.2 * 0.5, (2, 1) 0.2 * 0.1; normalised by their sum 0.92."""
    with np.errstate(divide="ignore"):
        log_probs = jnp.log(jnp.asarray([[1 / 3] * 3, [0.7, 0.2, 0.1], [0.5, 0.1, 0.4]]))
        certain = jnp.log(jnp.asarray([[1 / 3] * 3, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    tokens, span = jnp.asarray([0, 1, 2]), jnp.asarray([[False, True, True]])
    position, token = cf.sample_rewrites(jax.random.key(0), log_probs, tokens, span, 40_000)
    assert position.shape == token.shape == (1, 40_000)
    pairs = Counter(zip(position[0].tolist(), token[0].tolist()))
    expected = {(1, 0): 0.7, (1, 2): 0.1, (2, 0): 0.1, (2, 1): 0.02}
    assert set(pairs) == set(expected)
    for pair, p in expected.items():
        assert pairs[pair] / 40_000 == pytest.approx(p / 0.92, abs=0.01)
    position, _ = cf.sample_rewrites(jax.random.key(0), certain, tokens, span, 4)
    np.testing.assert_array_equal(position, -1)  # a span of probability one has no rewrite
