"""`explain` end to end on the `test` preset with a byte codec: layout, maps equal to the exact path,
generation, the refinement loop, the amortised path, continuations, and bad input."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.interpret import ExplainConfig, explain
from sage_jax.interpret.amortised import analyse
from sage_jax.interpret.consistency import consistency
from sage_jax.interpret.significance import significance, significance_from_gradients, step_gradients
from sage_jax.layout import SAGE, ByteCodec, find_steps
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
                   config=ExplainConfig(heads="meta", consistency_threshold=0.0))


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


def test_refinement_widens_the_aggregation_and_stops(model):
    cfg, params = model
    kwargs = dict(tokenizer=CODEC, answer="9")
    full = explain(params, cfg, QUESTION, RATIONALE, config=ExplainConfig(heads="meta", consistency_threshold=1.0),
                   **kwargs)
    assert [(a.path, a.weighting, a.heads) for a in full.attempts] == [
        ("exact", "attention", "meta"), ("exact", "attention", "all"), ("exact", "rollout", "all")]
    bounded = explain(params, cfg, QUESTION, RATIONALE,
                      config=ExplainConfig(heads="meta", consistency_threshold=1.0, max_refinements=1), **kwargs)
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
    (dict(config=dict(layer=5)), "layer=5 is outside"),
    (dict(config=dict(heads="memoryless")), "heads='memoryless'"),
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
