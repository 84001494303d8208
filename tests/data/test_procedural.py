"""Procedural generators: dependencies that really determine each step, knobs, determinism, the MC wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from sage_jax.data import procedural
from sage_jax.data.gym import GymSource
from sage_jax.data.multiple_choice import to_multiple_choice
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource, SpokenSumKnobs, VariableChainKnobs
from sage_jax.data.schema import Example, encode_example
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate.heldout import knobs_with_steps
from sage_jax.layout import LETTERS, QUESTION_PART
from tests.data.helpers import dependency_runs, evaluate_chain, step_value, sum_of_terms


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(512)


def test_chain_sum_matches_design_example():
    rng = np.random.default_rng(0)
    example = procedural.chain_sum(rng, 4, 9)
    terms = [int(t) for t in example.question[:-2].split("+")]
    assert example.question.endswith("=?") and len(terms) == 4
    totals = np.cumsum(terms)
    assert example.steps == tuple(f"{totals[k]}+{terms[k + 1]}={totals[k + 1]}" for k in range(3))
    assert example.answer == str(totals[-1])


def test_n_terms_weights_draw_long_chains_as_often_as_asked():
    knobs = ChainSumKnobs(n_terms=(2, 4), n_terms_weights=(0.2, 0.3, 0.5))
    source = ProceduralSource(knobs, size=4000, seed=0)
    counts = np.bincount([len(source[i].steps) for i in range(len(source))], minlength=4)[1:] / len(source)
    np.testing.assert_allclose(counts, [0.2, 0.3, 0.5], atol=0.03)
    uniform = ProceduralSource(ChainSumKnobs(n_terms=(2, 4)), size=50, seed=0)
    for i in range(50):  # without weights, the draw is what it was before the knob: one integer per range
        rng = np.random.default_rng([0, i])
        n_terms, max_value = int(rng.integers(2, 5)), int(rng.integers(9, 10))
        assert uniform[i] == procedural.chain_sum(rng, n_terms, max_value)
    for bad in [(1.0, 2.0), (1.0, -1.0, 1.0), (0.0, 0.0, 0.0)]:
        with pytest.raises(ValueError, match=r"ChainSumKnobs\.n_terms_weights=.*one non-negative weight per value"):
            ProceduralSource(ChainSumKnobs(n_terms=(2, 4), n_terms_weights=bad), size=1)
    assert knobs_with_steps(knobs, 2) == ChainSumKnobs(n_terms=(3, 3), max_value=knobs.max_value)


def test_spoken_sum_asks_chain_sums_problem_in_words_and_rests_each_step_on_two_numbers():
    for seed in range(20):
        terse = procedural.chain_sum(np.random.default_rng(seed), 2 + seed % 4, 99)
        spoken = procedural.spoken_sum(np.random.default_rng(seed), 2 + seed % 4, 99)
        terms = terse.question[:-2].split("+")
        assert spoken.question == "What is " + " + ".join(terms) + "?"
        assert spoken.steps == tuple(step.replace("+", " + ").replace("=", " = ") for step in terse.steps)
        assert spoken.answer == terse.answer and spoken.source == "procedural/spoken_sum"
        def text(span):
            return (spoken.question if span.part == QUESTION_PART else spoken.steps[span.part])[span.start:span.end]

        for k, (running, term) in enumerate(spoken.dependencies):
            lhs = spoken.steps[k].split(" = ")[0]
            assert f"{text(running)} + {text(term)}" == lhs and text(term) == terms[k + 1]
            assert running.part == (QUESTION_PART if k == 0 else k - 1)
    knobs = knobs_with_steps(SpokenSumKnobs(), 3)
    source = ProceduralSource(knobs, size=5, seed=1)
    assert type(knobs) is SpokenSumKnobs and source.name == "spoken_sum"
    assert all(len(source[i].steps) == 3 and source[i].question.startswith("What is ") for i in range(5))


@pytest.mark.parametrize("knobs", [ChainSumKnobs(n_terms=(2, 6), max_value=(9, 999)),
                                   VariableChainKnobs(n_steps=(1, 6), n_distractors=(0, 5), max_value=(9, 99))])
def test_each_step_recomputes_from_its_declared_dependencies_alone(tok, knobs):
    source = ProceduralSource(knobs, size=60, seed=3)
    recompute = sum_of_terms if isinstance(knobs, ChainSumKnobs) else evaluate_chain
    for i in range(len(source)):
        example = source[i]
        encoded = encode_example(example, tok)
        for k, step in enumerate(example.steps):
            assert recompute(dependency_runs(tok, encoded, k)) == step_value(step), (example, k)


def test_every_variable_chain_dependency_is_needed(tok):
    source = ProceduralSource(VariableChainKnobs(n_steps=(2, 4), n_distractors=(1, 3)), size=30, seed=5)
    for i in range(len(source)):
        encoded = encode_example(source[i], tok)
        for k in range(encoded.num_steps):
            runs = dependency_runs(tok, encoded, k)
            assert len(runs) == 3  # the definition and one value per operand; no distractor
            for dropped in range(len(runs)):
                with pytest.raises((KeyError, ValueError)):
                    evaluate_chain(runs[:dropped] + runs[dropped + 1:])


def test_knobs_control_difficulty():
    rng = np.random.default_rng(1)
    example = procedural.variable_chain(rng, n_steps=4, n_distractors=3, max_value=5)
    assert len(example.steps) == 4
    assert example.question.count("=") - 1 == (4 + 1) + 4 + 3  # given + defined + distractor facts, then "t=?"
    assert all(1 <= int(f.split("=")[1]) <= 5 for f in example.question.split(". ")[0].split(", ")
               if f.split("=")[1].isdigit())
    wide = procedural.chain_sum(rng, n_terms=6, max_value=999)
    assert len(wide.steps) == 5 and max(int(t) for t in wide.question[:-2].split("+")) <= 999
    with pytest.raises(ValueError, match="n_terms=1 must be at least 2"):
        procedural.chain_sum(rng, 1, 9)
    with pytest.raises(ValueError, match="exceed the 26 names"):
        procedural.variable_chain(rng, 10, 6, 9)


def test_sources_are_deterministic_in_seed_and_index():
    a = ProceduralSource(VariableChainKnobs(), size=10, seed=7)
    b = ProceduralSource(VariableChainKnobs(), size=10, seed=7)
    assert [a[i] for i in range(10)] == [b[i] for i in range(10)]
    assert a[3] != a[4] and a[3] != ProceduralSource(VariableChainKnobs(), size=10, seed=8)[3]
    with pytest.raises(IndexError, match=r"index 10 outside \[0, 10\)"):
        a[10]
    with pytest.raises(ValueError, match=r"n_steps=\(3, 2\): low exceeds high"):
        ProceduralSource(VariableChainKnobs(n_steps=(3, 2)), size=1)


def test_multiple_choice_wrapper():
    example = procedural.chain_sum(np.random.default_rng(2), 4, 9)
    item = to_multiple_choice(example, np.random.default_rng(0))
    assert len(item.options) == 5 and len(set(item.options)) == 5
    assert item.options[LETTERS.index(item.answer)] == example.answer
    assert item.steps == example.steps and item.dependencies == example.dependencies
    intermediate = example.steps[-2].rsplit("=", 1)[1]
    assert intermediate in item.options  # the most tempting mistake is offered
    assert to_multiple_choice(example, np.random.default_rng(0)) == item
    with pytest.raises(ValueError, match="answer '1.5' .* is not an integer"):
        to_multiple_choice(Example("q", (), "1.5"), np.random.default_rng(0))


def test_gym_chain_sum_dependencies_and_scorer(tok):
    source = GymSource("chain_sum", size=20, seed=0)
    for i in range(len(source)):
        example = source[i]
        assert source.score(example, example.answer) == 1.0
        assert source.score(example, str(int(example.answer) + 1)) == 0.0
        encoded = encode_example(example, tok)
        for k, step in enumerate(example.steps):
            assert sum_of_terms(dependency_runs(tok, encoded, k)) == step_value(step)
        assert step_value(example.steps[-1]) == int(example.answer)


@pytest.mark.parametrize("task", ["gsm_symbolic", "basic_arithmetic", "syllogism"])
def test_gym_tasks_map_to_the_schema_and_score(task):
    source = GymSource(task, size=5, seed=1)
    for i in range(len(source)):
        example = source[i]
        assert example.question and example.answer and example.source == f"gym/{task}"
        assert source.score(example, example.answer) == 1.0
        assert source.score(example, "not an answer") == 0.0
    if task == "gsm_symbolic":
        assert example.steps and not any(s.startswith("####") for s in example.steps)
