"""The meta-cognitive head: a finite confidence per position, read from the meta-cognitive heads (an ablation
of them reaches it), and none when the config turns the head off."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

import sage_jax as sj


def test_meta_head_output(cfg, params, tokens):
    out = sj.forward(params, tokens, cfg)
    chex.assert_shape(out.meta, tokens.shape)
    chex.assert_tree_all_finite(out.meta)
    # It reads the meta-cognitive heads: ablating them changes it, ablating a reasoning head elsewhere too.
    mask = jnp.ones((cfg.n_layers, 1, cfg.n_heads)).at[:, :, list(cfg.meta_heads)].set(0.0)
    ablated = sj.forward(params, tokens, cfg, edits=sj.Edits(head_mask=mask)).meta
    assert not np.allclose(np.asarray(ablated), np.asarray(out.meta))
    off = sj.configs.get("test", meta_head=False)
    assert sj.forward(sj.init_params(off, jax.random.key(0)), tokens, off).meta is None
