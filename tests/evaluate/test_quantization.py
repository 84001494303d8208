"""`explanation_shift`: a model against itself moves nothing; against its int4 copy every figure equals a direct
computation from the two maps (scipy's Spearman over each step's context candidates, the top-k sets, the decision
point sets, the branching positions from the two forwards)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import scipy.stats

import sage_jax as sj
from sage_jax import quant
from sage_jax.data import ChainSumKnobs, Tokenizer
from sage_jax.evaluate import procedural_by_difficulty, truth as tr
from sage_jax.evaluate.quantization import explanation_shift, format_shift
from sage_jax.interpret import counterfactual as cf, faithfulness as fa, ranking
from sage_jax.interpret.steps import token_entropy
from tests.conftest import perturbed_params

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)
EXAMPLES = procedural_by_difficulty(ChainSumKnobs(max_value=(9, 9)), (1, 2), 2, seed=7).examples


@pytest.fixture(scope="module")
def params():
    return perturbed_params(MODEL, seed=3, scale=0.3)


def test_a_model_against_itself_moves_nothing(params):
    shift = explanation_shift(params, params, MODEL, TOKENIZER, EXAMPLES)
    assert shift["branch_moved"] == 0.0 and shift["steps"] == 6 and shift["chains"] == 4
    for row in shift["maps"].values():
        assert row["rank_correlation"] == pytest.approx(1.0) and row["top_k_overlap"] == 1.0
        assert row["decision_points_changed"] == 0.0


def test_the_int4_shift_equals_a_direct_computation(params):
    quantized = quant.quantize(params, MODEL, bits=4, group_size=8)
    shift = explanation_shift(params, quantized, MODEL, TOKENIZER, EXAMPLES, k=3, threshold=0.3)
    chains = tr.encode_chains(TOKENIZER, EXAMPLES)
    table = cf.substitution_table(TOKENIZER)
    steps = chains.encoded.steps
    s = steps.mask.shape[1]
    full = tr.attribution_maps(params, MODEL, chains, ("sage",), table=table)
    reduced = tr.attribution_maps(quantized, MODEL, chains, ("sage",), table=table)
    for name in (tr.EXPLAIN_DEFAULT, "sage"):
        a, b = np.asarray(full[name])[:, :s], np.asarray(reduced[name])[:, :s]
        rho, overlap, before, after = [], [], set(), set()
        for i in range(a.shape[0]):
            candidates = np.asarray(fa.context_candidates(steps.mask[i]))
            for j in range(s):
                if not np.asarray(steps.mask[i, j]).any():
                    continue
                where = candidates[j]
                rho.append(scipy.stats.spearmanr(a[i, j][where], b[i, j][where]).statistic)
                top = [set(ranking.top_k_positions(m[i, j], where, 3)) for m in (a, b)]
                overlap.append(len(top[0] & top[1]) / len(top[0]))
                sources = np.asarray(steps.sources[i, j])
                before |= {(i, j, t) for t in np.flatnonzero((a[i, j] > 0.3) & sources)}
                after |= {(i, j, t) for t in np.flatnonzero((b[i, j] > 0.3) & sources)}
        row = shift["maps"][name]
        assert row["rank_correlation"] == pytest.approx(np.nanmean(rho), abs=1e-5)
        assert row["top_k_overlap"] == pytest.approx(np.mean(overlap), abs=1e-6)
        assert row["decision_points"] == len(before)
        assert row["decision_points_changed"] == pytest.approx(len(before ^ after) / max(len(before | after), 1))
    moved = []
    for i in range(steps.mask.shape[0]):
        tokens = chains.encoded.tokens[i:i + 1]
        ent = [np.asarray(token_entropy(sj.forward(p, tokens, MODEL).logits[0])) for p in (params, quantized)]
        for j in range(s):
            mask = np.asarray(steps.mask[i, j])
            if mask.any():
                moved.append(np.argmax(np.where(mask, ent[0], -np.inf)) != np.argmax(np.where(mask, ent[1], -np.inf)))
    assert shift["branch_moved"] == pytest.approx(np.mean(moved))
    assert "Spearman" in format_shift(shift) and jax.tree.leaves(shift)
