"""The Inverse Analysis Layer's module (`sage_jax.nn.inverse`): its config derives from the forward model's, its
parameter count by hand (and the 4B budget with it), and the per-token and per-pair features it reads."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.nn import inverse
from tests.conftest import make_tokens

T = 12
STEP_MASK = jnp.zeros((3, T), bool).at[0, 3:6].set(True).at[1, 6:9].set(True).at[2, 9:11].set(True)


def expected_count(icfg: inverse.InverseConfig) -> int:
    """Parameters of the IAL by hand: Dense kernels and biases, LayerNorm scales and biases."""
    w, f, v = icfg.d_model, icfg.n_token_features, icfg.vocab_size
    layer = 2 * 2 * w + 4 * (w * w + w) + (w * icfg.d_ff + icfg.d_ff) + (icfg.d_ff * w + w)
    return (2 * f + f * w + w + icfg.n_layers * layer + 2 * w + (w * v + v) + 2 * (w * w + w)
            + icfg.n_pair_features + 1)


def test_config_is_derived_from_the_forward_model(cfg):
    icfg = inverse.InverseConfig.from_sage(cfg)
    assert icfg.n_layers == cfg.n_inverse_layers
    assert icfg.n_token_features == cfg.d_model + 3 * cfg.n_layers * cfg.n_heads
    assert icfg.n_pair_features == 2 * cfg.n_layers * cfg.n_heads
    assert inverse.InverseConfig.from_sage(cfg, d_model=64).d_model == 64
    with pytest.raises(ValueError, match="no field"):
        inverse.InverseConfig.from_sage(cfg, width=3)
    with pytest.raises(ValueError, match="n_heads=3 must divide"):
        inverse.InverseConfig.from_sage(cfg, n_heads=3)


def test_parameter_count_and_the_4b_budget(cfg):
    assert inverse.inverse_param_count(cfg) == expected_count(inverse.InverseConfig.from_sage(cfg))
    big = sj.configs.get("nano_4b")
    icfg = inverse.InverseConfig.from_sage(big)
    assert icfg.n_layers == 6
    count = inverse.inverse_param_count(big)
    assert count == expected_count(icfg)
    total = sj.param_count(big) + count
    assert abs(total - 4.0e9) <= 0.03 * 4.0e9, total


def test_features_are_the_documented_reductions(cfg, params):
    tokens = make_tokens(cfg, (1, T), seed=1)
    out = sj.forward(params, tokens, cfg, record=("attn", "value_norms"))
    feats = inverse.inverse_features(out.hidden, out.trace, STEP_MASK[None])
    lh = cfg.n_layers * cfg.n_heads
    attn = np.asarray(out.trace.attn[:, 0])  # [L, H, T, S]
    chex.assert_trees_all_close(feats.tokens[0, :, : cfg.d_model], out.hidden[0])
    received = attn.sum(axis=2) / (T - np.arange(T))  # [L, H, S]
    chex.assert_trees_all_close(feats.tokens[0, :, cfg.d_model: cfg.d_model + lh],
                                received.transpose(2, 0, 1).reshape(T, lh), atol=1e-6)
    step_attn = attn[:, :, 6:9].mean(axis=2)  # step 1 -> every token, [L, H, S]
    chex.assert_trees_all_close(feats.pairs[0, 1].reshape(T, cfg.n_layers, cfg.n_heads, 2)[..., 0],
                                step_attn.transpose(2, 0, 1), atol=1e-6)
