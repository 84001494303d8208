"""Inputs that used to give a plausible but wrong answer (issue 17, failure 4) now fail loudly or give NaN."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj


@pytest.fixture(scope="module")
def prompt(cfg):
    return jnp.array([[5, 9, 40, 7]], jnp.int32)


def test_negative_id_under_jit_embeds_as_nan(cfg, params, tokens):
    """`jnp.take` wraps -1 to the last row, so id -1 used to give the logits of id V - 1, bit for bit."""
    logits = jax.jit(functools.partial(sj.forward, cfg=cfg))(params, tokens.at[1, 4].set(-1)).logits
    assert np.isnan(np.asarray(logits[1, 4:])).all()
    assert np.isfinite(np.asarray(logits[0])).all()


@pytest.mark.parametrize("shape", [(0, 4), (2, 0)])
def test_forward_rejects_empty_tokens(cfg, params, shape):
    with pytest.raises(ValueError, match=rf"at least one row and one position, got shape \({shape[0]}, {shape[1]}\)"):
        sj.forward(params, jnp.zeros(shape, jnp.int32), cfg)


def test_generate_rejects_float_token_ids(cfg, params):
    with pytest.raises(ValueError, match=r"prompt row 0 holds float64 values \[1.7, 40.9\]; token ids must be int"):
        sj.generate(params, cfg, [[1.7, 40.9]], max_new_tokens=2)
    with pytest.raises(ValueError, match="tokens must be integer ids"):
        sj.generate(params, cfg, jnp.array([[1.7, 40.9]]), max_new_tokens=2)


@pytest.mark.parametrize("temperature", [float("nan"), float("inf")])
def test_generate_rejects_non_finite_temperature(cfg, params, prompt, temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        sj.generate(params, cfg, prompt, max_new_tokens=2, temperature=temperature, key=jax.random.key(0))


def test_generate_raises_on_nan_params(cfg, params, prompt):
    bad = jax.tree_util.tree_map(lambda x: x, params)
    bad["final_norm"] = jax.tree_util.tree_map(lambda x: x.at[0].set(jnp.nan), bad["final_norm"])
    with pytest.raises(FloatingPointError, match="generated token 0 .* non-finite logits"):
        sj.generate(bad, cfg, prompt, max_new_tokens=3)
    out = sj.generate(bad, cfg, prompt, max_new_tokens=3, check_finite=False)  # the opt-out still decodes
    assert out.tokens.shape == (1, 7)


def test_generate_raises_on_nan_residual_delta_from_its_step(cfg, params, prompt):
    """The delta poisons only slot 5 (the second generated token's query), so tokens 0 and 1 are fine."""
    total = prompt.shape[1] + 4
    delta = jnp.zeros((cfg.n_layers, 1, total, cfg.d_model)).at[:, :, 5].set(jnp.nan)
    sj.generate(params, cfg, prompt, max_new_tokens=2)  # finite
    with pytest.raises(FloatingPointError, match="generated token 2 "):
        sj.generate(params, cfg, prompt, max_new_tokens=4, edits=sj.Edits(residual_delta=delta))
