"""Shared fixtures: the `test` preset with perturbed parameters, so that no weight sits at its init value
(an all-zero gate vector or all-one norm scales would hide bugs in those paths)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import sage_jax as sj


def perturbed_params(cfg, seed: int = 0, scale: float = 0.05):
    params = sj.init_params(cfg, jax.random.key(seed))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


@pytest.fixture(scope="session")
def cfg():
    return sj.configs.get("test")


@pytest.fixture(scope="session")
def params(cfg):
    return perturbed_params(cfg)


@pytest.fixture(scope="session")
def tokens(cfg):
    """[2, 12] ids with step-boundary tokens (id 3) at known places."""
    toks = jax.random.randint(jax.random.key(7), (2, 12), 4, cfg.vocab_size)
    return toks.at[0, 2].set(3).at[1, 5].set(3)


def make_tokens(cfg, shape, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 4, cfg.vocab_size, dtype=jnp.int32)
