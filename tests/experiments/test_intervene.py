"""`python -m experiments.intervene` end to end on a run directory: the JSON and Markdown it writes, and its
numbers against a direct computation with the run's final parameters (step log-probabilities under each cut,
edge counts, the uncut regenerated chain against `sage_jax.generate`).

The run is the session's trained run (`trained_run_dir` in tests/conftest.py); its trained weights are far enough
from their initialisation that the explained cut costs the steps more than rounding (checked below)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np

import sage_jax as sj
from sage_jax import layout
from sage_jax.interpret.interventions import cut_edges, edges
from sage_jax.interpret.patching import step_log_probs
from sage_jax.layout import SAGE, find_steps
from tests.experiments.test_entry_points import _run

QUESTION, STEPS, ANSWER = "3+1+9=?", ("3+1=4", "4+9=13"), "13"


def test_intervene_writes_what_changed_and_its_numbers_hold(trained_run_dir, trained_run, tmp_path):
    out_dir = tmp_path / "intervene"
    printed = _run("experiments.intervene", f"--workdir={trained_run_dir}", f"--question={QUESTION}",
                   f"--rationale={STEPS[0]}\\n{STEPS[1]}", f"--answer={ANSWER}", "--seed=3", f"--out_dir={out_dir}")
    report = json.loads((out_dir / "intervention.json").read_text())
    markdown = (out_dir / "intervention.md").read_text()
    assert "| cut | edges | regenerated chain |" in markdown and "| explained |" in printed
    assert [c["name"] for c in report["conditions"]] == ["uncut", "explained", "random"]
    assert report["steps"] == list(STEPS) and report["answer"] == ANSWER
    uncut, explained, random = report["conditions"]

    params, cfg, tokenizer = trained_run.params, trained_run.cfg, trained_run.tokenizer
    tokens = SAGE.encode(tokenizer, QUESTION, STEPS, ANSWER).tokens
    steps = find_steps(tokens)
    queries = np.asarray(steps.queries)
    # Edge counts: queries x sources per step; the control cuts as many, from the same queries.
    assert uncut["edges"] == 0
    for condition in (explained, random):
        assert condition["edges"] == sum(int(queries[i].sum()) * len(s) for i, s in enumerate(condition["sources"]))
    assert [len(s) for s in explained["sources"]] == [len(s) for s in random["sources"]]
    assert explained["sources"] != random["sources"] and explained["edges"] > 0

    def log_probs(sources_per_step):
        edge_set = np.zeros((len(tokens), len(tokens)), bool)
        for i, sources in enumerate(sources_per_step):
            chosen = np.zeros(len(tokens), bool)
            chosen[list(sources)] = True
            edge_set |= np.asarray(edges(queries[i], chosen))
        logits = sj.forward(params, jnp.asarray(tokens)[None], cfg,
                            edits=cut_edges(cfg, jnp.asarray(edge_set))).logits[0]
        return np.asarray(step_log_probs(logits, jnp.asarray(tokens), steps.mask).step)

    # Summed log-probabilities of ~40 nats in float32: 1e-4 relative.
    for condition in (uncut, explained, random):
        np.testing.assert_allclose(condition["step_log_probs"], log_probs(condition["sources"]), rtol=1e-4,
                                   atol=1e-4)
    assert min(np.subtract(explained["step_log_probs"], uncut["step_log_probs"])) < -0.1  # the cut matters
    # Uncut, the regenerated chain is the model's greedy chain from the question (same budget).
    prompt = tokens[:int(steps.starts[0])].tolist()
    budget = min(cfg.max_seq_len, len(prompt) + 48) - len(prompt)
    generated = sj.generate(params, cfg, [prompt], max_new_tokens=budget)
    ids = np.asarray(generated.tokens[0, len(prompt):len(prompt) + int(generated.num_generated[0])]).tolist()
    assert uncut["chain"] == tokenizer.render(prompt + ids)
    assert prompt[-1] == layout.STEP and uncut["rank_correlation"] == [1.0, 1.0]
    assert all(len(top) == 3 for c in report["conditions"] for top in c["top_tokens"])
