"""The learning-rate schedule, the weight-decay mask by path, clipping, config validation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.train.optim import OptimConfig, learning_rate_schedule, make_optimizer, weight_decay_mask


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    cfg = OptimConfig(peak_lr=1.0, warmup_steps=10, total_steps=110, end_lr_ratio=0.1)
    lr = learning_rate_schedule(cfg)
    chex.assert_trees_all_close([lr(0), lr(5), lr(10), lr(60), lr(110), lr(500)],
                                [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1, 0.1], atol=1e-6)


def test_weight_decay_applies_to_matrices_only():
    params = sj.param_shapes(sj.configs.get("test"))
    mask = weight_decay_mask(params)
    assert mask["embed"] and mask["unembed"]["kernel"] and mask["layers"]["attn"]["o"]
    assert mask["layers"]["ffn"]["wo"]["kernel"] and mask["meta_head"]["proj"]["kernel"]
    # [L, D]-shaped norm scales and gate vectors are rank 2 but are not matrices.
    assert not mask["layers"]["attn_norm"]["scale"] and not mask["layers"]["ffn"]["gate_w"]
    assert not mask["final_norm"]["scale"] and not mask["meta_head"]["proj"]["bias"]


def test_clipping_bounds_the_update_direction_of_a_huge_gradient():
    """With clipping, scaling the gradient by 1e6 changes nothing (clip, then Adam); without, Adam's epsilon
    makes the tiny gradient's update differ, so the comparison can fail."""
    params = {"w": jnp.ones((3, 3))}
    grad = {"w": jnp.full((3, 3), 1e-9)}
    for clip, same in ((1e-12, True), (0.0, False)):
        tx = make_optimizer(OptimConfig(warmup_steps=0, max_grad_norm=clip, weight_decay=0.0))
        small, _ = tx.update(grad, tx.init(params), params)
        huge, _ = tx.update(jax.tree_util.tree_map(lambda g: g * 1e6, grad), tx.init(params), params)
        assert np.allclose(small["w"], huge["w"], rtol=1e-5) == same


@pytest.mark.parametrize("field,value", [("peak_lr", 0.0), ("warmup_steps", 2000), ("b2", 1.0),
                                         ("end_lr_ratio", 1.5)])
def test_optim_config_rejects_out_of_range_fields(field, value):
    with pytest.raises(ValueError, match=f"OptimConfig.{field}="):
        OptimConfig(**{field: value})
