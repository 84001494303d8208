"""`python -m experiments.intervene` end to end on a run directory: the JSON and Markdown it writes, and its
numbers against a direct computation with the run's final parameters (step log-probabilities under each cut,
edge counts, the uncut regenerated chain against `sage_jax.generate`).

The run directory holds one stage-3 final checkpoint written with the library's own `Checkpointer` (random
weights perturbed well above rounding, so cuts have visible effects); training it (the `trained` fixture of
`test_entry_points`, module-scoped, so it would train again here) costs minutes on the shared CPU and adds
nothing `intervene` reads."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from experiments.configs import test as test_config
from sage_jax import layout
from sage_jax.data import Tokenizer
from sage_jax.interpret.interventions import cut_edges, edges
from sage_jax.interpret.patching import step_log_probs
from sage_jax.layout import SAGE, find_steps
from sage_jax.train import Checkpointer, curriculum_from_dict, final_state, init_train_state
from tests.experiments.test_entry_points import _run

QUESTION, STEPS, ANSWER = "3+1+9=?", ("3+1=4", "4+9=13"), "13"


@jax.jit
def _perturbed(params, key):
    """`params` plus N(0, 0.3^2) noise per entry (one compile, unlike `tests.conftest.perturbed_params`)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory whose stage 3 has finished, and its curriculum."""
    config = test_config.get_config()
    config.workdir = str(tmp_path_factory.mktemp("run"))
    cfg = curriculum_from_dict(config.to_dict())
    stage = cfg.stage(3)
    state = init_train_state(stage.step_config(cfg.model), jax.random.key(0))
    state = dataclasses.replace(state, step=jnp.asarray(stage.steps, jnp.int32),
                                params=_perturbed(state.params, jax.random.key(4)))
    with Checkpointer(cfg.stage_dir(3) / "ckpt", async_save=False) as checkpointer:
        checkpointer.save(state)
    return pathlib.Path(config.workdir), cfg


def test_intervene_writes_what_changed_and_its_numbers_hold(run):
    workdir, cfg = run
    out_dir = workdir / "intervene"
    printed = _run("experiments.intervene", "--config=experiments/configs/test.py", f"--config.workdir={workdir}",
                   f"--question={QUESTION}", f"--rationale={STEPS[0]}\\n{STEPS[1]}", f"--answer={ANSWER}",
                   "--seed=3", f"--out_dir={out_dir}")
    report = json.loads((out_dir / "intervention.json").read_text())
    markdown = (out_dir / "intervention.md").read_text()
    assert "| cut | edges | regenerated chain |" in markdown and "| explained |" in printed
    assert [c["name"] for c in report["conditions"]] == ["uncut", "explained", "random"]
    assert report["steps"] == list(STEPS) and report["answer"] == ANSWER
    uncut, explained, random = report["conditions"]

    params = final_state(cfg, 3).params
    tokenizer = Tokenizer.load(cfg.model.vocab_size)
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
        logits = sj.forward(params, jnp.asarray(tokens)[None], cfg.model,
                            edits=cut_edges(cfg.model, jnp.asarray(edge_set))).logits[0]
        return np.asarray(step_log_probs(logits, jnp.asarray(tokens), steps.mask).step)

    # Summed log-probabilities of ~40 nats in float32: 1e-4 relative.
    for condition in (uncut, explained, random):
        np.testing.assert_allclose(condition["step_log_probs"], log_probs(condition["sources"]), rtol=1e-4,
                                   atol=1e-4)
    assert min(np.subtract(explained["step_log_probs"], uncut["step_log_probs"])) < -0.1  # the cut matters
    # Uncut, the regenerated chain is the model's greedy chain from the question (same budget).
    prompt = tokens[:int(steps.starts[0])].tolist()
    budget = min(cfg.model.max_seq_len, len(prompt) + 48) - len(prompt)
    generated = sj.generate(params, cfg.model, [prompt], max_new_tokens=budget)
    ids = np.asarray(generated.tokens[0, len(prompt):len(prompt) + int(generated.num_generated[0])]).tolist()
    assert uncut["chain"] == tokenizer.render(prompt + ids)
    assert prompt[-1] == layout.STEP and uncut["rank_correlation"] == [1.0, 1.0]
    assert all(len(top) == 3 for c in report["conditions"] for top in c["top_tokens"])
