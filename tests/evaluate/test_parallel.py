"""Corpus analysis across devices (`sage_jax.evaluate.parallel`): the truth table's maps, their scores and the
counterfactual substitution effects, and the explanation metrics, computed with the chains split over 8
simulated CPU devices (a fresh process: tests/evaluate/parallel_check.py) equal the same on this process's one
device; `over_chains` itself keeps chain order and removes its padding."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import sage_jax as sj
from sage_jax.data import ChainSumKnobs, Tokenizer
from sage_jax.evaluate import explanation_metrics, procedural_by_difficulty, truth as tr
from sage_jax.evaluate.parallel import over_chains
from tests.conftest import perturbed_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)
EXAMPLES = procedural_by_difficulty(ChainSumKnobs(max_value=(9, 9)), (1, 2, 3), 2, seed=11).examples[:5]


def measure_everything() -> dict[str, np.ndarray]:
    """The per-chain results of the corpus measures on `EXAMPLES` (5 chains), on this process's devices.

    One registered map ("sage"): every method is mapped over the chains by the same `over_chains` call with the
    parameters shared; explain's default map is the other way, the parameters closed over. No rollouts: resampling
    importance runs chain by chain on the host, never through `over_chains`, and nothing here reads it."""
    params = perturbed_params(MODEL, seed=3, scale=0.3)
    measured = tr.measure(params, MODEL, TOKENIZER, EXAMPLES, key=jax.random.key(0), methods=("sage",),
                          n_substitutes=4, n_rollouts=0)
    scores = tr.score_map(params, MODEL, measured.chains, measured.truth, measured.maps["sage"], k=3,
                          key=jax.random.key(1))
    metrics = explanation_metrics(params, MODEL, TOKENIZER, EXAMPLES, k=3, key=jax.random.key(2))
    return {"effect": measured.truth.substitution.effect, "suppression": measured.truth.suppression.step,
            **{f"map {name}": m for name, m in measured.maps.items()},
            "drop_top": scores.drop_top, "spearman": scores.spearman, "faithful drop": metrics.drop_top,
            "precision": metrics.precision}


def test_eight_devices_compute_what_one_does(tmp_path):
    out = tmp_path / "parallel.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "tests.evaluate.parallel_check", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    many = json.loads(out.read_text())
    assert many["devices"] == 8
    one = measure_everything()
    assert set(one) == set(many["values"])
    for name, value in one.items():
        # The same per-chain programs; only the batch each device vmaps over differs (1 chain, not 5).
        np.testing.assert_allclose(np.asarray(many["values"][name], np.float64), np.asarray(value, np.float64),
                                   rtol=1e-4, atol=1e-5, err_msg=name)


def test_over_chains_keeps_order_and_drops_padding():
    xs = {"a": jnp.arange(5.0), "b": jnp.arange(10.0).reshape(5, 2)}
    got = over_chains(lambda w, x: x["a"] * w + x["b"].sum(), xs, shared=jnp.float32(2.0),
                      devices=jax.devices()[:1])
    np.testing.assert_array_equal(np.asarray(got), 2 * np.arange(5.0) + np.arange(10.0).reshape(5, 2).sum(1))
    one_at_a_time = over_chains(lambda x: x["a"] + 1, xs, batch_size=1)
    np.testing.assert_array_equal(np.asarray(one_at_a_time), np.arange(5.0) + 1)
