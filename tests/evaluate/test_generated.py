"""The model's own explanations: the template parser on hand-written text, claims to tokens through the same
span-to-token map as the true dependencies, the comparison rates on hand-built maps, and generation's room
check."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.data import ChainSumKnobs, Tokenizer, explain_dependencies
from sage_jax.data.schema import encode_example
from sage_jax.evaluate import procedural_by_difficulty
from sage_jax.evaluate.explanations import encode_true_chains
from sage_jax.evaluate.generated import (claim_occurrences, claim_verdict, claimed_dependencies, compare,
                                        explanation_prompt, generate_explanations)
from sage_jax.layout import QUESTION_PART, Claim, parse_explanation

TOKENIZER = Tokenizer.load(512)
EXAMPLES = procedural_by_difficulty(ChainSumKnobs(max_value=(9, 9)), (1, 3), 2, seed=7).examples
THREE = EXAMPLES[2]  # '2+5+7+1=?' -> '2+5=7', '7+7=14', '14+1=15'


def test_parse_reads_the_training_template():
    assert THREE.question == "2+5+7+1=?"
    claims = parse_explanation(explain_dependencies(THREE))
    assert claims == {0: (Claim("2", QUESTION_PART), Claim("+5", QUESTION_PART)),
                      1: (Claim("7", 0), Claim("+7", QUESTION_PART)),
                      2: (Claim("14", 1), Claim("+1", QUESTION_PART))}


def test_parse_tolerates_noise_merges_repeated_steps_and_ignores_broken_claims():
    text = ("junk Step 2 depends on '7' from step 1 and then Step 2 depends on '+7' from the question. "
            "Step 1 depends on '2 from the question. Step 0 depends on '9' from the question. Step 3 depends on")
    assert parse_explanation(text) == {1: (Claim("7", 0), Claim("+7", QUESTION_PART)),
                                       -1: (Claim("9", QUESTION_PART),)}
    assert parse_explanation("") == {} and parse_explanation("Step one depends on '2' from the question.") == {}


def test_claims_of_the_true_explanation_name_exactly_the_true_dependencies():
    mask, founded, unfounded = claimed_dependencies(TOKENIZER, THREE, parse_explanation(explain_dependencies(THREE)))
    np.testing.assert_array_equal(mask, encode_example(THREE, TOKENIZER).step_deps)
    assert (founded, unfounded) == (6, 0)


def test_unfounded_and_ambiguous_claims():
    claims = {0: (Claim("+9", QUESTION_PART), Claim("7", 0)),  # text absent; not an earlier part
              1: (Claim("7", QUESTION_PART),),                  # '7' once in the question
              2: (Claim("+", QUESTION_PART),),                  # three '+' in the question: all of them
              5: (Claim("2", QUESTION_PART),)}                  # no step 6
    mask, founded, unfounded = claimed_dependencies(TOKENIZER, THREE, claims)
    assert (founded, unfounded) == (2, 3)
    texts = [TOKENIZER.render([t]) for t in encode_example(THREE, TOKENIZER).tokens]
    assert not mask[0].any()
    assert [texts[j] for j in np.flatnonzero(mask[1])] == ["7"] and np.flatnonzero(mask[1]).tolist() == [6]
    assert np.flatnonzero(mask[2]).tolist() == [3, 5, 7]


def test_a_claim_is_judged_by_its_content_tokens_at_one_of_its_occurrences():
    content = encode_true_chains(TOKENIZER, [THREE]).content[0]
    texts = [TOKENIZER.render([t]) for t in encode_example(THREE, TOKENIZER).tokens]
    question_7, = claim_occurrences(TOKENIZER, THREE, 1, Claim("7", QUESTION_PART))
    step_7, = claim_occurrences(TOKENIZER, THREE, 1, Claim("7", 0))
    pluses = claim_occurrences(TOKENIZER, THREE, 1, Claim("+", QUESTION_PART))
    assert [texts[j] for m in (question_7, step_7, *pluses) for j in np.flatnonzero(m)] == ["7", "7", "+", "+", "+"]
    truth = np.zeros_like(content)
    truth[np.flatnonzero(step_7)] = truth[np.flatnonzero(question_7)] = truth[np.flatnonzero(pluses[2])] = True
    assert claim_verdict([step_7], content, truth) and claim_verdict(pluses, content, truth)  # one '+' of three
    # '+7' names the '+' before the question's '7', which the truth does not hold.
    plus_7, = claim_occurrences(TOKENIZER, THREE, 1, Claim("+7", QUESTION_PART))
    assert claim_verdict([plus_7], content, truth) is False
    # '=' is a format token: the truth never tests it, so the claim is neither confirmed nor refuted.
    equals = claim_occurrences(TOKENIZER, THREE, 1, Claim("=", 0))
    assert len(equals) == 1 and claim_verdict(equals, content, truth) is None
    assert claim_occurrences(TOKENIZER, THREE, 1, Claim("9", QUESTION_PART)) == []


def test_compare_rates_on_hand_built_maps():
    encoded = encode_true_chains(TOKENIZER, EXAMPLES)
    assert EXAMPLES[3].question == "1+0+0+0=?" and EXAMPLES[3].steps == ("1+0=1",) * 3
    # The "exact" map ranks <bos>, <question>, then the true dependencies (earlier first): its top-3 over all
    # candidates is <bos>, <question> and the first dependency; over content candidates, dependencies only.
    exact = np.zeros(encoded.deps.shape, np.float32)
    exact[:, :, 0], exact[:, :, 1] = 1.0, 0.9
    exact += 0.5 * encoded.deps
    texts = [explain_dependencies(ex) for ex in EXAMPLES]
    texts[1] = None  # not generated
    # Step 1: '1' (token 2, one of its dependencies 2, 3, 4); step 2: nothing; step 3: '+0' occurs three times
    # (tokens 3-8; its dependencies are 7, 8 and 21) and '9' is not in step 2 (unfounded).
    texts[3] = "Step 1 depends on '1' from the question. Step 3 depends on '+0' from the question, '9' from step 2."
    rates = compare(TOKENIZER, EXAMPLES, texts, encoded, exact, k=3)
    assert (rates["problems"], rates["not_generated"], rates["steps"], rates["k"]) == (4, 1, 7, 3)
    assert (rates["founded_claims"], rates["unfounded_claims"]) == (2 + 6 + 2, 1)
    # Per step (problem 0; problem 2 x3; problem 3 x3):
    assert rates["named_exact_top_k"] == pytest.approx(np.mean([1 / 3] * 4 + [1 / 3, 0, 1 / 3]))
    assert rates["named_exact_top_k_content"] == pytest.approx(np.mean([1] * 4 + [1 / 3, 0, 2 / 3]))
    assert rates["steps_with_claims"] == pytest.approx(6 / 7)
    assert rates["true_dependency_recall"] == pytest.approx(np.mean([1] * 4 + [1 / 3, 0, 2 / 3]))
    assert rates["true_dependency_precision"] == pytest.approx(np.mean([1] * 5 + [2 / 6]))
    assert "counterfactual_confirmed" not in rates
    # Against a counterfactual truth equal to the data's dependencies: problems 0 and 2 name exactly theirs;
    # problem 3 names 1 token (confirmed) in step 1 and 6 in step 3 (2 confirmed).
    confirmed = compare(TOKENIZER, EXAMPLES, texts, encoded, exact, k=3, truth=encoded.deps)
    true_named = int(encoded.deps[0].sum() + encoded.deps[2].sum())
    assert confirmed["claimed_tokens"] == true_named + 1 + 6
    assert confirmed["counterfactual_confirmed"] == pytest.approx((true_named + 1 + 2) / (true_named + 7))
    assert (confirmed["claims_confirmed"], confirmed["tested_claims"], confirmed["untestable_claims"]) == (1.0, 10, 0)
    assert confirmed["claimed_content_tokens"] == confirmed["claimed_tokens"]  # '+' is an operator: content
    # Without token 8 ('0' of the third '+0') the '+0' claim holds at none of its occurrences.
    truth = encoded.deps.copy()
    truth[3, 2, 8] = False
    assert compare(TOKENIZER, EXAMPLES, texts, encoded, exact, k=3, truth=truth)["claims_confirmed"] == 0.9
    none = compare(TOKENIZER, EXAMPLES, [None] * 4, encoded, exact, k=3)
    assert none["steps"] == 0 and none["named_exact_top_k"] is None and none["true_dependency_precision"] is None


def test_generation_prompts_with_the_true_chain_and_skips_what_does_not_fit():
    model = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=32)
    prompt = explanation_prompt(TOKENIZER, THREE)
    assert prompt[-2:] == [layout.EOS, layout.EXPLAIN]
    assert len(prompt) == len(encode_example(THREE, TOKENIZER).tokens) + 1
    params = sj.init_params(model, jax.random.key(0))
    long = dataclasses.replace(THREE, question="2+5+7+1=?" + " " * 40)
    texts = generate_explanations(params, model, TOKENIZER, [EXAMPLES[0], long], max_new_tokens=4, batch_size=2)
    assert texts[1] is None and isinstance(texts[0], str)
