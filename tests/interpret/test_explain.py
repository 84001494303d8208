"""`explain` end to end on the `test` preset with a byte codec: layout, maps equal to the exact path,
generation, the refinement loop, the amortised path, continuations, anchors, and bad input."""

from __future__ import annotations

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.interpret import ExplainConfig, counterfactual as cf, explain
from sage_jax.interpret.alternatives import alternative_importance
from sage_jax.interpret.amortised import analyse
from sage_jax.interpret.consistency import consistency
from sage_jax.interpret.counterfactual import resampling_importance
from sage_jax.interpret.explanation import Anchors, Explanation
from sage_jax.interpret.significance import (significance, significance_from_gradients, step_gradients,
                                             step_importance)
from sage_jax.layout import SAGE, ByteCodec, find_steps, from_spans
from sage_jax.nn.inverse import init_inverse_params
from tests.conftest import perturbed_params

CODEC = ByteCodec()
QUESTION = "2+3+4?"
RATIONALE = "2+3=5\n5+4=9\n"


def laid_out(question, steps, answer):
    return SAGE.encode(CODEC, question, steps, answer, strict=True).tokens


@pytest.fixture(scope="module")
def model():
    cfg = sj.configs.get("test").replace(vocab_size=CODEC.vocab_size, max_seq_len=64)
    return cfg, perturbed_params(cfg, seed=5)


@pytest.fixture(scope="module")
def explained(model):
    cfg, params = model
    return explain(params, cfg, QUESTION, RATIONALE, tokenizer=CODEC, answer="9",
                   config=ExplainConfig(weighting="attention", heads="meta", consistency_threshold=0.0))


@pytest.fixture(scope="module")
def anchored(model):
    """The `explained` analysis with anchors measured (one round of 4 rollouts per prefix, seed 3), the analysis's
    step read from its map (`step_alternatives=0`)."""
    cfg, params = model
    return explain(params, cfg, QUESTION, RATIONALE, tokenizer=CODEC, answer="9",
                   config=ExplainConfig(weighting="attention", heads="meta", consistency_threshold=0.0, anchors=True,
                                        anchor_rollouts=4, anchor_max_rollouts=4, anchor_seed=3, step_alternatives=0))


def targets_with_answer(ids):
    """The step spans, and `Steps` over the steps plus the answer as a last row."""
    spans = SAGE.step_spans(ids)
    return spans, from_spans(spans + [SAGE.answer_span(ids)], len(ids))


def test_codec_and_layout():
    assert CODEC.decode(CODEC.encode("é+1")) == "é+1" and min(CODEC.encode("\x00")) == layout.NUM_SPECIAL
    ids = laid_out("q", ["ab", "c"], "7")
    b = layout.NUM_SPECIAL
    np.testing.assert_array_equal(ids, [layout.BOS, layout.QUESTION, ord("q") + b, layout.STEP, ord("a") + b,
                                        ord("b") + b, layout.STEP, ord("c") + b, layout.ANSWER, ord("7") + b,
                                        layout.EOS])


def test_explanation_carries_the_exact_analysis(model, explained):
    cfg, params = model
    ids = laid_out(QUESTION, ["2+3=5", "5+4=9"], "9")
    assert explained.tokens == tuple(ids.tolist())
    assert [s.text for s in explained.steps] == ["2+3=5", "5+4=9"]
    assert explained.answer == "9" and explained.method == "exact" and len(explained.attempts) == 1
    steps = find_steps(ids)
    sig = significance(params, cfg, jnp.asarray(ids), steps, heads="meta")
    chex.assert_trees_all_close(np.array([s.significance for s in explained.steps]), sig.score, atol=1e-6)
    for s, loss, entropy in zip(explained.steps, sig.loss, sig.entropy):
        assert np.isclose(s.loss, loss, atol=1e-5) and np.isclose(s.entropy, entropy, atol=1e-6)
        assert all(d.score > 0.3 for d in s.token_dependencies)
        assert {d.position for d in s.token_dependencies} == set(np.flatnonzero(np.array(s.significance) > 0.3))
        assert len(s.alternatives) == 5 and s.alternatives[0].prob >= s.alternatives[-1].prob
    assert explained.attempts[0].heads == "meta"
    assert "2+3=5" in explained.to_markdown()


def test_generates_the_rationale_when_none_is_given(model):
    cfg, params = model
    prompt = [layout.BOS, layout.QUESTION] + CODEC.encode(QUESTION) + [layout.STEP]
    out = sj.generate(params, cfg, [prompt], max_new_tokens=12)
    want = list(prompt) + np.asarray(out.tokens[0, len(prompt):len(prompt) + int(out.num_generated[0])]).tolist()
    got = explain(params, cfg, QUESTION, tokenizer=CODEC, config=ExplainConfig(max_rationale_tokens=12))
    assert list(got.tokens) == want and len(got.steps) >= 1


def test_a_generated_chain_without_steps_is_reported(model):
    cfg, params = model
    silent = {**params, "unembed": {"kernel": jnp.zeros_like(params["unembed"]["kernel"])}}  # always emits <pad>
    with pytest.raises(ValueError, match="the model generated no non-empty step"):
        explain(silent, cfg, QUESTION, tokenizer=CODEC, config=ExplainConfig(max_rationale_tokens=4))


def test_the_default_weights_eq7_by_counterfactual_substitution(model):
    """`w_ij` is the mean |log-probability change| of step i over 2 substitutes of token j (seed 0); its score is
    the agreement of the two single-substitute maps; tokens without a kind (special, '=') get no significance."""
    cfg, params = model
    got = explain(params, cfg, QUESTION, RATIONALE, tokenizer=CODEC, answer="9")
    assert [(a.path, a.weighting) for a in got.attempts] == [("exact", "substitution")]
    ids = laid_out(QUESTION, ["2+3=5", "5+4=9"], "9")
    steps = find_steps(ids)
    table = cf.substitution_table(CODEC)
    subs, valid = cf.draw_substitutes(jax.random.key(0), jnp.asarray(ids), table.alternatives, table.valid, 2)
    effects = cf.substitution_effects(params, cfg, jnp.asarray(ids), steps.mask, subs, valid)
    gradients = jax.jit(lambda t, s: step_gradients(params, cfg, t, s))(jnp.asarray(ids), steps)
    here, first, second = (significance_from_gradients(gradients, steps, cfg, weight=w).score
                           for w in (effects.effect, *effects.halves()))
    chex.assert_trees_all_close(np.array([s.significance for s in got.steps]), here, atol=1e-6)
    sources = np.asarray(steps.sources)
    assert np.isclose(got.consistency, 1 - np.abs(np.asarray(first - second))[sources].mean(), atol=1e-5)
    no_kind = ~table.has_kind(ids)
    assert no_kind[[0, 1]].all() and not np.array([s.significance for s in got.steps])[:, no_kind].any()
    assert "counterfactual substitution weights" in got.to_markdown()


def test_refinement_widens_the_aggregation_and_stops(model):
    cfg, params = model
    kwargs = dict(tokenizer=CODEC, answer="9")
    full = explain(params, cfg, QUESTION, RATIONALE,
                   config=ExplainConfig(weighting="attention", heads="meta", consistency_threshold=1.0), **kwargs)
    assert [(a.path, a.weighting, a.heads) for a in full.attempts] == [
        ("exact", "attention", "meta"), ("exact", "attention", "all"), ("exact", "rollout", "all")]
    bounded = explain(params, cfg, QUESTION, RATIONALE,
                      config=ExplainConfig(weighting="attention", heads="meta", consistency_threshold=1.0,
                                           max_refinements=1), **kwargs)
    assert len(bounded.attempts) == 2 and bounded.consistency == bounded.attempts[-1].score
    ids = jnp.asarray(full.tokens)
    steps = find_steps(np.asarray(full.tokens))
    gradients = jax.jit(lambda t, s: step_gradients(params, cfg, t, s))(ids, steps)  # one vjp for all three maps
    maps = [significance_from_gradients(gradients, steps, cfg, weighting=w, heads=h).score
            for w, h in [("attention", "meta"), ("attention", None), ("rollout", None)]]
    sources = np.asarray(steps.sources)
    want = [1 - np.abs(np.asarray(a - b))[sources].mean() for a, b in [maps[:2], maps[1:], maps[1:]]]
    chex.assert_trees_all_close(np.array([a.score for a in full.attempts]), np.array(want), atol=1e-5)
    chex.assert_trees_all_close(np.array([s.significance for s in full.steps]), maps[2], atol=1e-6)


def test_amortised_method_and_its_fallback_to_the_exact_path(model):
    cfg, params = model
    inverse = init_inverse_params(cfg, jax.random.key(9))
    kwargs = dict(tokenizer=CODEC, answer="9", inverse_params=inverse)
    accepted = explain(params, cfg, QUESTION, RATIONALE,
                       config=ExplainConfig(method="amortised", consistency_threshold=0.0), **kwargs)
    assert accepted.method == "amortised" and [a.path for a in accepted.attempts] == ["amortised"]
    # Its score is the fidelity of the IAL's reconstruction over the positions that predict step tokens.
    ids = laid_out(QUESTION, ["2+3=5", "5+4=9"], "9")
    steps = find_steps(ids)
    out = analyse(params, inverse, cfg, jnp.asarray(ids), steps.mask)
    want = consistency(out.forward_logits, out.logits, where=jnp.any(steps.queries, axis=0)).score
    assert np.isclose(accepted.consistency, float(want), atol=1e-6) and 0.0 <= accepted.consistency <= 1.0
    chex.assert_trees_all_close(np.array([s.significance for s in accepted.steps]),
                                out.significance * steps.sources, atol=1e-6)
    refined = explain(params, cfg, QUESTION, RATIONALE, config=ExplainConfig(
        method="amortised", consistency_threshold=1.0, max_refinements=1), **kwargs)
    assert [a.path for a in refined.attempts] == ["amortised", "exact"] and refined.method == "exact"
    assert refined.attempts[0].score == accepted.consistency


def test_continuations_are_reported(model):
    cfg, params = model
    got = explain(params, cfg, QUESTION, RATIONALE, tokenizer=CODEC, answer="9",
                  config=ExplainConfig(top_k=2, continuations=True, max_new_tokens=4))
    for s in got.steps:
        assert all(a.continuation is not None and a.answer_changed is not None for a in s.alternatives)
    assert "answer changes" in got.to_markdown() or "same answer" in got.to_markdown()


def test_anchors_off_leave_the_explanation_as_it_was(explained, anchored):
    # Measuring anchors recomputes the analysis over the steps plus the answer apart from the explanation's maps,
    # so everything else is bit for bit what an explanation without anchors holds, and its JSON has no new key.
    assert explained.anchors is None and "anchors" not in json.loads(explained.to_json())
    plain = dataclasses.replace(anchored, anchors=None)
    assert plain == explained
    assert (plain.to_json(), plain.to_markdown(), plain.to_html()) == (
        explained.to_json(), explained.to_markdown(), explained.to_html())
    assert "anchor" not in explained.to_markdown().lower() and "anchor" not in explained.to_html().lower()


def test_anchors_equal_the_direct_measurements(model, anchored):
    cfg, params = model
    ids = laid_out(QUESTION, ["2+3=5", "5+4=9"], "9")
    spans, targets = targets_with_answer(ids)
    truth = resampling_importance(params, cfg, CODEC, ids, spans, key=jax.random.key(3), n=4)
    got = anchored.anchors
    # The same key draws the same rollouts, so the host-side KL and counts are identical.
    assert got.replaced == tuple(truth.n_replaced.tolist()) and got.rollouts == 4
    assert got.resampling_importance == tuple(None if np.isnan(k) else float(k) for k in truth.kl)
    # The analysis side: Eq. 7 of the final attempt (attention over the meta heads, layer 0) over steps + answer.
    gradients = jax.jit(lambda t, s: step_gradients(params, cfg, t, s))(jnp.asarray(ids), targets)
    score = significance_from_gradients(gradients, targets, cfg, heads="meta").score
    want = np.asarray(step_importance(score, targets.mask, len(spans)))
    np.testing.assert_allclose(got.analysis_importance, want, atol=1e-6)
    assert want[-1] > 0  # the answer row reads the last step
    assert got.analysis_step == int(np.argmax(want))
    measured = ~np.isnan(truth.kl)
    assert got.anchor_step == (int(np.nanargmax(truth.kl)) if measured.any() else None)
    assert got.found == (None if got.anchor_step is None else got.anchor_step == got.analysis_step)


def _anchors_with(model, **config):
    """The anchors of the attention analysis of the 2-step chain (seed 3), with `config` on top; its ids and spans."""
    cfg, params = model
    config = ExplainConfig(weighting="attention", heads="meta", consistency_threshold=0.0, anchors=True,
                           anchor_seed=3, **config)
    got = explain(params, cfg, QUESTION, RATIONALE, tokenizer=CODEC, answer="9", config=config).anchors
    ids = laid_out(QUESTION, ["2+3=5", "5+4=9"], "9")
    return got, ids, targets_with_answer(ids)[0]


def test_anchors_rank_steps_by_their_alternatives_by_default(model, anchored):
    cfg, params = model
    got, ids, spans = _anchors_with(model, anchor_rollouts=4, anchor_max_rollouts=4, step_alternatives=4)
    want = alternative_importance(params, cfg, CODEC, ids, spans, key=jax.random.fold_in(jax.random.key(3), 1),
                                  alternatives=4).importance  # anchor_seed's second stream, 4 samples each
    np.testing.assert_allclose(got.analysis_importance, want, atol=1e-6)
    assert got.analysis_step == int(np.argmax(want))
    # The anchor side does not depend on how the analysis ranks the steps.
    assert got.resampling_importance == anchored.anchors.resampling_importance
    assert got.found == (got.anchor_step == got.analysis_step)


def test_anchors_draw_further_rounds_up_to_anchor_max_rollouts(model):
    cfg, params = model
    got, ids, spans = _anchors_with(model, anchor_rollouts=2, anchor_max_rollouts=12, step_alternatives=0)
    truth = resampling_importance(params, cfg, CODEC, ids, spans, key=jax.random.key(3), n=2, max_n=12)
    assert got.rollouts == len(truth.answers_kept[0]) and got.replaced == tuple(truth.n_replaced.tolist())
    assert got.resampling_importance == tuple(None if np.isnan(k) else float(k) for k in truth.kl)


def test_anchors_follow_the_amortised_path(model):
    cfg, params = model
    inverse = init_inverse_params(cfg, jax.random.key(9))
    got = explain(params, cfg, QUESTION, RATIONALE, tokenizer=CODEC, answer="9", inverse_params=inverse,
                  config=ExplainConfig(method="amortised", consistency_threshold=0.0, anchors=True,
                                       anchor_rollouts=2, step_alternatives=0))
    ids = laid_out(QUESTION, ["2+3=5", "5+4=9"], "9")
    spans, targets = targets_with_answer(ids)
    score = analyse(params, inverse, cfg, jnp.asarray(ids), targets.mask).significance * targets.sources
    np.testing.assert_allclose(got.anchors.analysis_importance,
                               np.asarray(step_importance(score, targets.mask, len(spans))), atol=1e-6)


def test_anchors_round_trip_and_are_shown(anchored):
    assert Explanation.from_json(anchored.to_json()) == anchored
    a = anchored.anchors
    lines = anchored.to_markdown().splitlines()
    if a.anchor_step is not None:
        decision = [i for i, line in enumerate(lines) if line.startswith("   - decision at")][a.anchor_step]
        assert lines[decision + 1].startswith("   - **anchor step**: resampling importance")
        heading = '<h3 class="anchor" style="border-left: 6px solid #1f6fd0; padding-left: 0.4em">Anchor step'
        assert anchored.to_html().count(heading) == 1
    assert f"**Anchor:** {a.summary()}" in lines
    # The three verdicts, on hand-set anchors; an unmeasured step (NaN) is None and survives JSON as null.
    hand = Anchors(resampling_importance=(None, 0.7), replaced=(0, 3), analysis_importance=(1.2, 0.4),
                   anchor_step=1, analysis_step=0, found=False, rollouts=3)
    missed = dataclasses.replace(anchored, anchors=hand)
    assert Explanation.from_json(missed.to_json()) == missed
    assert "Step 2 is the anchor (resampling importance 0.70, 3 rollouts per prefix); the analysis missed it: it " \
           "ranks step 1 first." in missed.to_markdown()
    assert "resampling importance not measured" in missed.to_markdown()
    assert "the analysis found it" in dataclasses.replace(hand, analysis_step=1, found=True).summary()
    assert "No anchor" in Anchors((None,), (0,), (0.5,), None, 0, None, 3).summary()
    tiny = dataclasses.replace(anchored, anchors=dataclasses.replace(hand, analysis_importance=(2.04e-9, 0.0)))
    assert "analysis importance 2.0e-09" in tiny.to_markdown()  # not 0.00: the magnitude ranks the steps
    assert "analysis importance 0.00" in tiny.to_markdown()


def test_a_chain_without_an_answer_has_no_anchors(model):
    cfg, params = model
    got = explain(params, cfg, QUESTION, RATIONALE, tokenizer=CODEC,
                  config=ExplainConfig(anchors=True, anchor_rollouts=1))
    assert got.answer is None and got.anchors is None and "anchors" not in json.loads(got.to_json())


@pytest.mark.parametrize("kwargs, message", [
    (dict(rationale=""), "rationale is empty"),
    (dict(rationale=" \n\n "), "rationale is empty"),
    (dict(tokens=np.array([1, 6, 60, 3, 61, 2])), "does not tokenize into the given tokens: first difference at "
                                                  "position 2"),
    (dict(tokens=laid_out(QUESTION, ["2+3=5", "5+4=9"], "9")[:-1]), "does not tokenize into the given "
                                                                          r"tokens: lengths differ \(23 vs 22\)"),
    (dict(splitter=lambda tokens: [(4, 99)]), r"step 0 span \[4, 99\) lies outside the sequence \[0, 23\)"),
    (dict(config=dict(threshold=1.2)), "threshold must lie in"),
    (dict(config=dict(method="oracle")), "ExplainConfig.method='oracle'"),
    (dict(config=dict(weighting="mean")), "ExplainConfig.weighting='mean'"),
    (dict(config=dict(consistency_threshold=2.0)), "ExplainConfig.consistency_threshold must lie in"),
    (dict(config=dict(max_refinements=-1)), "ExplainConfig.max_refinements must be >= 0"),
    (dict(config=dict(anchor_rollouts=0)), "ExplainConfig.anchor_rollouts must be >= 1, got 0"),
    (dict(config=dict(step_samples=0)), "ExplainConfig.step_samples must be >= 1, got 0"),
    (dict(config=dict(anchor_temperature=0.0)), "ExplainConfig.anchor_temperature must be a finite number > 0"),
    (dict(config=dict(layer=5)), "layer=5 is outside"),
    (dict(config=dict(weighting="attention", heads="memoryless")), "heads='memoryless'"),
    (dict(config=dict(heads="meta")), "the 'substitution' weighting has none"),
    (dict(config=dict(substitutes=1)), "substitutes must be >= 2"),
    (dict(config=dict(method="amortised")), "needs inverse_params"),
])
def test_bad_input_is_rejected(model, kwargs, message):
    cfg, params = model
    kwargs = {"rationale": RATIONALE, "config": {}, **kwargs}
    with pytest.raises(ValueError, match=message):
        config = ExplainConfig(**kwargs.pop("config"))
        explain(params, cfg, QUESTION, tokenizer=CODEC, answer="9", config=config, **kwargs)


def test_a_vocabulary_too_small_for_the_tokenizer_is_rejected():
    cfg = sj.configs.get("test")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        explain(perturbed_params(cfg), cfg, QUESTION, RATIONALE, tokenizer=CODEC)
