"""The torch peer mirrors the SAGE model (exact parameter counts where the architectures coincide, the
difference exactly what `differences` lists), and each case's torch side runs on the quick sizes. Needs
requirements-bench.txt (torch, transformers) in .venv."""

import numpy as np
import pytest

import sage_jax as sj
from benchmarks import peer as peer_lib, workloads
from benchmarks.cases import decode, significance, train
from benchmarks.cases.context import Context


@pytest.fixture(scope="module")
def peer():
    found = peer_lib.import_peer()
    assert found is not None, "tests/benchmarks needs torch and transformers: pip install -r requirements-bench.txt"
    return found


@pytest.mark.parametrize("preset", ["test", "tiny"])
def test_mirror_config_has_the_peer_parameter_count(peer, preset):
    cfg = sj.configs.get(preset)
    llama = peer_lib.build_model(peer, cfg)
    assert peer_lib.param_count(llama) == sj.param_count(peer_lib.mirror_config(cfg))


@pytest.mark.parametrize("preset", ["test", "tiny"])
def test_sage_minus_peer_is_exactly_the_listed_differences(peer, preset):
    cfg = sj.configs.get(preset)
    extra = peer_lib.differences(cfg)["extra_params"]
    assert sj.param_count(cfg) - peer_lib.param_count(peer_lib.build_model(peer, cfg)) == sum(extra.values())


def test_tiny_differences_are_the_gate_and_the_meta_head():
    cfg = sj.configs.get("tiny")
    meta_width = cfg.n_meta_heads * cfg.head_dim
    assert peer_lib.differences(cfg)["extra_params"] == {
        "reasoning_gate": cfg.n_layers * (cfg.d_model + 1), "meta_head": meta_width + meta_width + 1}


def test_mirror_config_is_the_homogeneous_ungated_model():
    mirror = peer_lib.mirror_config(sj.configs.get("tiny"))
    assert (mirror.reasoning_gate, mirror.meta_head, mirror.group_spans) == (False, False, (None, None, None))
    assert peer_lib.differences(mirror)["extra_params"] == {}


def test_peer_config_copies_the_shape(peer):
    cfg = sj.configs.get("test")
    config = peer_lib.build_model(peer, cfg, max_positions=64).config
    got = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
           config.intermediate_size, config.vocab_size, config.head_dim, config.tie_word_embeddings,
           config.max_position_embeddings)
    assert got == (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.vocab_size, cfg.head_dim,
                   cfg.tie_embeddings, 64)


def test_peer_seed_fixes_the_weights(peer):
    cfg = sj.configs.get("test")
    a, b = (peer_lib.build_model(peer, cfg, seed=3) for _ in range(2))
    c = peer_lib.build_model(peer, cfg, seed=4)
    wa, wb, wc = (np.concatenate([p.detach().numpy().ravel() for p in m.parameters()]) for m in (a, b, c))
    np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(wa, wc)


def test_import_peer_returns_none_without_torch(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    assert peer_lib.import_peer() is None


@pytest.fixture(scope="module")
def ctx(peer):
    cfg = sj.configs.get("test")
    peer_lib.set_threads(peer, 1)
    return Context(cfg=cfg, sizes=workloads.sizes_for(cfg, quick=True), repeats=1, quick=True, peer=peer, threads=1)


def test_peer_train_step_updates_the_weights(ctx):
    tokens = workloads.random_tokens(ctx.cfg, (ctx.sizes.train_batch, ctx.sizes.train_seq), seed=3)
    llama = peer_lib.build_model(ctx.peer, ctx.cfg)
    before = {k: v.numpy().copy() for k, v in llama.state_dict().items()}
    train._peer_step(ctx, llama, tokens)()
    unchanged = [k for k, v in llama.state_dict().items() if np.array_equal(v.numpy(), before[k])]
    assert not unchanged


def test_peer_generate_makes_exactly_the_new_tokens(ctx):
    llama = peer_lib.build_model(ctx.peer, ctx.cfg)
    llama.eval()
    run = decode.peer_generate(ctx.peer.torch, llama, np.asarray(ctx.prompt(8)), ctx.sizes.new_tokens)
    run()  # raises on any other output shape


def test_peer_significance_loop_is_normalised(ctx):
    cfg = ctx.cfg.replace(max_seq_len=32)
    tokens, steps = workloads.chain(cfg, 32, 8)
    llama = peer_lib.build_model(ctx.peer, cfg, attention="eager")
    llama.requires_grad_(False)
    score = significance.peer_loop(ctx.peer.torch, llama, np.asarray(tokens), steps)().numpy()
    assert score.shape == (8, 32)
    assert score.max() == 1.0 and score.min() == 0.0
    assert not score[~np.asarray(steps.sources)].any()  # only tokens before a step score for it
