"""SageConfig validation, presets and parameter counts."""

from __future__ import annotations

import dataclasses

import pytest

import sage_jax as sj
from sage_jax.config import ConfigError, RopeScaling, SageConfig


def test_presets_build_and_are_hashable():
    for name in sj.configs.names():
        cfg = sj.configs.get(name)
        assert cfg.name == name
        hash(cfg)
        assert cfg.n_reasoning_heads + cfg.n_memory_heads + cfg.n_meta_heads == cfg.n_heads


def test_config_is_frozen():
    cfg = sj.configs.get("test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 64


def test_nano_4b_matches_the_paper():
    cfg = sj.configs.get("nano_4b")
    assert (cfg.n_layers, cfg.n_heads) == (24, 32)
    assert (cfg.n_reasoning_heads, cfg.n_memory_heads, cfg.n_meta_heads) == (16, 8, 8)
    assert cfg.n_inverse_layers == 6
    count = sj.param_count(cfg)  # eval_shape: nothing is allocated
    assert abs(count - 4.0e9) / 4.0e9 < 0.03, count


def test_tiny_has_a_few_million_parameters():
    assert 1e6 < sj.param_count(sj.configs.get("tiny")) < 10e6


@pytest.mark.parametrize("changes, field", [
    (dict(d_model=100, n_heads=8), "n_heads"),
    (dict(n_reasoning_heads=5), "n_reasoning_heads"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(reasoning_span=0), "reasoning_span"),
    (dict(memory_span=-2), "memory_span"),
    (dict(eos_id=512), "eos_id"),
    (dict(boundary_token_ids=(999,)), "boundary_token_ids"),
    (dict(dtype="float8"), "dtype"),
    (dict(n_layers=0), "n_layers"),
    (dict(n_reasoning_heads=6, n_meta_heads=0), "meta_head"),
])
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"SageConfig\.{field}"):
        SageConfig(**changes)


def test_replace_validates_and_rejects_unknown_fields():
    cfg = sj.configs.get("tiny")
    assert cfg.replace(d_model=128).head_dim == 16
    with pytest.raises(ConfigError, match="n_kv_heads"):
        cfg.replace(n_kv_heads=3)
    with pytest.raises(ConfigError, match="no field"):
        cfg.replace(width=3)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        sj.configs.get("huge")


def test_rope_scaling_accepts_a_mapping_and_names_the_field_when_wrong():
    cfg = SageConfig(rope_scaling={"kind": "llama3", "factor": 8.0, "original_max_len": 64})
    assert cfg.rope_scaling == RopeScaling(kind="llama3", factor=8.0, original_max_len=64)
    assert hash(cfg) == hash(SageConfig(rope_scaling=RopeScaling(factor=8.0, original_max_len=64)))
    with pytest.raises(ConfigError, match="rope_scaling"):
        SageConfig(rope_scaling={"kind": "yarn"})
    with pytest.raises(ConfigError, match="rope_scaling"):
        SageConfig(rope_scaling={"kind": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 1.0})
    with pytest.raises(ConfigError, match="rope_scaling"):
        SageConfig(rope_scaling={"factor": 2.0, "beta": 1.0})


@pytest.mark.parametrize("field", ["qkv_bias", "qk_norm"])
def test_family_switches_must_be_bools(field):
    with pytest.raises(ConfigError, match=field):
        SageConfig(**{field: 1})
