"""`load_gguf(..., quantized=True)`: Q4_0, Q4_1 and Q8_0 matrices load as the `QTensor`s their blocks are, read
back to exactly the float loader's tensors (measured: max abs difference 0), with logits equal to the float
load's on tiny files (atol 1e-5; measured: 0), layers stored in mixed types or heads narrower than a group fall
back to floats, and a short tensor raises `LoadError` naming the file and the tensor. SmolLM2-135M's Q4_1 file
loads into at least 4x fewer weight bytes than its float32 load (measured: 5.57x), every tensor reading back to
the float load's.

The tiny files take about 4 s together; SmolLM2 about 12 s (a float and a quantized load). Its tensors are
compared rather than its logits (a forward of each load took 7 s more): a quantized forward equals the forward of
its dequantised weights, shown for every block type and the tied embedding in tests/test_quant.py and for GGUF
loads by the tiny files here."""

from __future__ import annotations

import gguf
import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import interop, quant
from sage_jax.interop.llama import family_config
from tests.interop.gguf_files import gguf_tensors, random_params, tiny_config, write_gguf

Q = gguf.GGMLQuantizationType
# One type per weight, the same in every layer, so that each stacks into one QTensor; all three block types.
TYPES = {"attn_q.weight": Q.Q4_0, "attn_k.weight": Q.Q4_1, "attn_v.weight": Q.Q8_0, "attn_output.weight": Q.Q4_1,
         "ffn_gate.weight": Q.Q8_0, "ffn_up.weight": Q.Q4_0, "ffn_down.weight": Q.Q4_1,
         "token_embd.weight": Q.Q8_0, "output.weight": Q.Q4_0}
LAYOUT = {Q.Q4_0: (4, True, np.uint8), Q.Q4_1: (4, False, np.uint8), Q.Q8_0: (8, True, np.int8)}
TOKENS = np.array([[5, 17, 99, 3, 42, 7, 64, 1, 120, 33, 8, 77]], np.int32)


def wide_head_config(tied: bool):
    """Two layers with heads 32 wide, so that `o_proj`'s groups stay within a head and it loads quantized."""
    return family_config(name="tiny-llama", vocab_size=128, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                         head_dim=32, d_ff=96, max_seq_len=64, rope_base=10_000.0, rope_scaling=None,
                         norm_eps=1e-5, tie_embeddings=tied, bos_id=1, eos_id=2, pad_id=0)


def _write(path, cfg, types_of):
    tensors = gguf_tensors(cfg, random_params(cfg), "llama")
    types = {name: qtype for name in tensors if (qtype := types_of(name)) is not None}
    return write_gguf(path, cfg, tensors, types=types)


def _leaves(params):
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, quant.QTensor))[0]
    return {tuple(k.key for k in path): leaf for path, leaf in flat}


def _logits(loaded):
    return np.asarray(jax.jit(sj.forward, static_argnames="cfg")(loaded.params, TOKENS, cfg=loaded.cfg).logits)


def _assert_reads_back_to_float_load(q_leaves, f_leaves):
    for path, leaf in q_leaves.items():
        want = np.asarray(f_leaves[path])
        got = np.asarray(leaf.dequantize() if isinstance(leaf, quant.QTensor) else leaf)
        assert got.dtype == want.dtype == np.float32, path
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=str(path))


@pytest.mark.parametrize("tied", [True, False])
def test_blocks_load_as_qtensors_that_read_back_to_the_float_load(tmp_path, tied):
    cfg = wide_head_config(tied)
    path = _write(tmp_path / "q.gguf", cfg, lambda name: TYPES.get(name.split(".", 2)[-1] if "blk" in name else name))
    floats, quantized = interop.load_gguf(path), interop.load_gguf(path, quantized=True)
    assert quantized.cfg == floats.cfg
    q_leaves, f_leaves = _leaves(quantized.params), _leaves(floats.params)
    assert set(q_leaves) == set(f_leaves)
    gguf_name = {("embed",): "token_embd.weight", ("unembed", "kernel"): "output.weight",
                 ("layers", "attn", "q", "kernel"): "attn_q.weight",
                 ("layers", "attn", "k", "kernel"): "attn_k.weight",
                 ("layers", "attn", "v", "kernel"): "attn_v.weight", ("layers", "attn", "o"): "attn_output.weight",
                 ("layers", "ffn", "wi_gate", "kernel"): "ffn_gate.weight",
                 ("layers", "ffn", "wi_up", "kernel"): "ffn_up.weight",
                 ("layers", "ffn", "wo", "kernel"): "ffn_down.weight"}
    for key, leaf in q_leaves.items():
        if key not in quant.QUANTIZED_AXES:
            assert isinstance(leaf, jax.Array) and leaf.dtype == np.float32, key  # norms stay float32
            continue
        bits, symmetric, codes_dtype = LAYOUT[TYPES[gguf_name[key]]]
        assert isinstance(leaf, quant.QTensor), key
        assert (leaf.bits, leaf.symmetric, leaf.group_size, leaf.axis) == (bits, symmetric, 32,
                                                                          quant.QUANTIZED_AXES[key]), key
        assert leaf.shape == f_leaves[key].shape, key
        assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(leaf)), key
        assert leaf.codes.dtype == codes_dtype and leaf.scale.dtype == np.float16, key
        assert symmetric or leaf.minimum.dtype == np.float16, key
    _assert_reads_back_to_float_load(q_leaves, f_leaves)

    # The embedding is neither permuted nor transposed: its scales are the file's float16s, byte for byte.
    stored = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    blocks = np.asarray(stored.data).reshape(cfg.vocab_size, -1, 34)
    np.testing.assert_array_equal(np.asarray(quantized.params["embed"].scale), blocks[..., :2].view(np.float16)[..., 0])
    np.testing.assert_array_equal(np.asarray(quantized.params["embed"].codes), blocks[..., 2:].view(np.int8).reshape(
        cfg.vocab_size, -1))

    np.testing.assert_allclose(_logits(quantized), _logits(floats), rtol=0, atol=1e-5)
    assert quant.weight_bytes(floats.params) >= 4 * quant.weight_bytes(quantized.params)  # measured: 5.2x, 5.3x


def test_mixed_layer_types_and_narrow_heads_load_as_floats(tmp_path):
    # tiny_config's heads are 16 wide: a group of `o_proj` spans two heads, which `[H, d, D]` cannot hold.
    cfg = tiny_config()
    mixed = {"blk.0.ffn_up.weight": Q.Q4_0, "blk.1.ffn_up.weight": Q.Q8_0}
    path = _write(tmp_path / "m.gguf", cfg, lambda name: mixed.get(name, Q.Q4_1 if name.endswith(
        ("attn_output.weight", "ffn_gate.weight")) else None))
    floats, quantized = interop.load_gguf(path), interop.load_gguf(path, quantized=True)
    q_leaves, f_leaves = _leaves(quantized.params), _leaves(floats.params)
    quantized_paths = {key for key, leaf in q_leaves.items() if isinstance(leaf, quant.QTensor)}
    assert quantized_paths == {("layers", "ffn", "wi_gate", "kernel")}
    _assert_reads_back_to_float_load(q_leaves, f_leaves)
    np.testing.assert_allclose(_logits(quantized), _logits(floats), rtol=0, atol=1e-5)


def test_short_quantized_tensor_names_file_and_tensor(tmp_path, monkeypatch):
    cfg = wide_head_config(tied=True)
    path = _write(tmp_path / "q.gguf", cfg, lambda name: Q.Q4_1 if name.endswith("attn_v.weight") else None)
    data = path.read_bytes()
    # gguf's reader itself refuses a file cut inside its tensor data (before the loader sees a tensor)...
    path.write_bytes(data[:-100])
    with pytest.raises(interop.LoadError, match="not a readable GGUF file") as err:
        interop.load_gguf(path, quantized=True)
    assert str(path) in str(err.value)
    # ...so a tensor handed over a row short, as a reader that does not check sizes would, is made here.
    path.write_bytes(data)
    reader_class = gguf.GGUFReader

    def short_reader(*args, **kwargs):
        reader = reader_class(*args, **kwargs)
        reader.tensors = [t._replace(data=t.data[:-1]) if t.name == "blk.1.attn_v.weight" else t
                          for t in reader.tensors]
        return reader

    monkeypatch.setattr(gguf, "GGUFReader", short_reader)
    with pytest.raises(interop.LoadError, match=r"tensor 'blk\.1\.attn_v\.weight' \(Q4_1\) holds 1240 bytes.*"
                                                r"truncated or corrupt") as err:
        interop.load_gguf(path, quantized=True)
    assert str(path) in str(err.value)


@pytest.mark.slow
def test_smollm2_quantized_load_matches_float_load():
    try:
        path = interop.model_path("smollm2-135m-instruct")
    except interop.MissingModelError as err:
        pytest.skip(str(err))
    floats, quantized = interop.load_gguf(path), interop.load_gguf(path, quantized=True)
    leaves = _leaves(quantized.params)
    assert {key for key, leaf in leaves.items() if isinstance(leaf, quant.QTensor)} == set(quant.QUANTIZED_AXES) - {
        ("unembed", "kernel")}  # tied
    assert (leaves[("embed",)].bits, leaves[("layers", "ffn", "wo", "kernel")].symmetric) == (8, False)  # Q8_0, Q4_1
    ratio = quant.weight_bytes(floats.params) / quant.weight_bytes(quantized.params)
    print(f"SmolLM2 quantized vs float load: {ratio:.2f}x fewer weight bytes")
    assert ratio >= 4
    read_back, float_leaves = _leaves(jax.jit(quant.dequantize)(quantized.params)), _leaves(floats.params)
    assert quantized.cfg == floats.cfg and set(read_back) == set(float_leaves)
    _assert_reads_back_to_float_load(read_back, float_leaves)  # dequantised in one program, not op by op


def test_load_keeps_a_gguf_files_blocks_and_refuses_a_float_directory(tmp_path):
    from tests.test_chat import save_random_chat_model

    path = tmp_path / "m.gguf"
    _write(path, wide_head_config(tied=True), lambda name: Q.Q4_0 if name.endswith("attn_v.weight") else None)
    assert quant.is_quantized(interop.load(str(path), quantized=True).params)
    assert not quant.is_quantized(interop.load(str(path)).params)
    with pytest.raises(interop.LoadError, match="a Hugging Face directory holds floats"):
        interop.load(str(save_random_chat_model(tmp_path / "hf")), quantized=True)
