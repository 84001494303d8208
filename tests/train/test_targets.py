"""Stage-3 targets from the model's own exact analysis: the rendered text names exactly the tokens its
significance map ranks highest, and the rendered pool is computed once and cached."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import layout
from sage_jax.data import Tokenizer
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource
from sage_jax.data.schema import encode_example
from sage_jax.interpret import counterfactual as cf
from sage_jax.interpret.significance import significance
from sage_jax.layout import find_steps
from sage_jax.train.targets import SelfExplainedSource, self_explanations
from tests.train.conftest import STEP_CFG

MODEL = dataclasses.replace(STEP_CFG.model, vocab_size=512, max_seq_len=64)
PROBLEMS = ProceduralSource(ChainSumKnobs(n_terms=(2, 4), max_value=(9, 9)), size=50, seed=1)


@pytest.mark.parametrize("weighting", ["substitution", "attention"])
def test_rendered_explanations_name_the_top_tokens_of_the_models_significance_map(weighting):
    """By default the map is explain's (substitution w_ij, 2 substitutes, seed 0); the paper's Eq. 7 by name."""
    params = sj.init_params(MODEL, jax.random.key(2))
    tokenizer = Tokenizer.load(512)
    table = cf.substitution_table(tokenizer)
    examples = [PROBLEMS[i] for i in (0, 5, 8, 11)]
    assert {len(e.steps) for e in examples} == {1, 2, 3}  # different lengths: padding and step padding in play
    options = {} if weighting == "substitution" else {"weighting": weighting}
    analyses = self_explanations(params, MODEL, tokenizer, examples, top_k=2, chunk=3, **options)  # 2 chunks
    for example, analysis in zip(examples, analyses):
        np.testing.assert_array_equal(analysis.tokens, encode_example(example, tokenizer).tokens)
        steps = find_steps(analysis.tokens)
        tokens = jnp.asarray(analysis.tokens)
        weight = None
        if weighting == "substitution":
            subs, ok = cf.draw_substitutes(jax.random.key(0), tokens, table.alternatives, table.valid, 2)
            weight = cf.substitution_effects(params, MODEL, tokens, steps.mask, subs, ok).effect
        exact = np.asarray(significance(params, MODEL, tokens, steps, weighting="attention", weight=weight).score)
        # Batched and padded == one problem alone; a substitution weight is a difference of two whole-sequence
        # log-probabilities, whose float32 rounding moves with the padded length (about 1e-4 here).
        np.testing.assert_allclose(analysis.score, exact, atol=1e-5 if weighting == "attention" else 5e-4)
        step_index = encode_example(example, tokenizer).step_index
        sentences = []
        for i in range(steps.n_steps):
            candidates = [j for j in range(int(steps.starts[i])) if analysis.tokens[j] >= layout.NUM_SPECIAL]
            top = sorted(candidates, key=lambda j: (-exact[i, j], j))[:2]
            assert analysis.named[i] == tuple(top)
            assert all(exact[i, j] > 0 for j in top)
            parts = [f"'{tokenizer.decode([int(analysis.tokens[j])])}' from "
                     + ("the question" if step_index[j] < 0 else f"step {step_index[j] + 1}") for j in top]
            sentences.append(f"Step {i + 1} depends on {', '.join(parts)}.")
        assert analysis.example.explanation == " ".join(sentences)
        assert analysis.example.dependencies is None and analysis.example.steps == example.steps


def test_the_pool_is_analysed_once_and_read_back_from_its_cache(tmp_path):
    calls = []

    def analyse(examples):
        calls.append(len(examples))
        return [dataclasses.replace(e, explanation=f"Step 1 depends on {e.question}.", dependencies=None)
                for e in examples]

    cache = str(tmp_path / "targets" / "pool.jsonl")
    first = SelfExplainedSource(PROBLEMS, 6, analyse, cache=cache)
    assert calls == [] and len(first) == 6  # lazy: nothing analysed before an item is read
    items = [first[i] for i in range(6)]
    assert calls == [6]
    again = SelfExplainedSource(PROBLEMS, 6, analyse, cache=cache)
    assert [again[i] for i in range(6)] == items and calls == [6]
    resized = SelfExplainedSource(PROBLEMS, 4, analyse, cache=cache)
    assert resized[3] == items[3] and calls == [6, 4]
