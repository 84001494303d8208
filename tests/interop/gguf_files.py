"""Small GGUF files written with `gguf.GGUFWriter`, from sage params, for the loader's tests.

`llama_cpp_permute` re-implements llama.cpp's `convert_hf_to_gguf.py` q/k row permutation here, independently of
the loader's inverse, so that a loaded file proves the inverse right."""

from __future__ import annotations

import pathlib

import gguf
import jax
import numpy as np

import sage_jax as sj
from sage_jax.interop.llama import family_config, hf_from_params

HF_TO_GGUF = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
              "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
              "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
              "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
              "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
              "self_attn.k_norm.weight": "attn_k_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
              "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}


def tiny_config(arch: str = "llama", tied: bool = True):
    return family_config(name=f"tiny-{arch}", vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         head_dim=None, d_ff=96, max_seq_len=64, rope_base=10_000.0, rope_scaling=None,
                         norm_eps=1e-5, tie_embeddings=tied, qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3",
                         bos_id=1, eos_id=2, pad_id=0)


def random_params(cfg, seed: int = 0):
    """Every leaf random (no leaf at an init value such as norms at 1), drawn with numpy: no compilation."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (0.15 * rng.standard_normal(s.shape)).astype(np.float32),
                                  sj.param_shapes(cfg))


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(cfg, params, arch: str) -> dict[str, np.ndarray]:
    """The params under llama.cpp names and in its layout (q/k rows permuted for `llama`)."""
    out = {}
    for name, value in hf_from_params(cfg, params).items():
        if name in GLOBAL:
            out[GLOBAL[name]] = value
            continue
        _, _, layer, rest = name.split(".", 3)
        if arch == "llama" and rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
            value = llama_cpp_permute(value, cfg.n_heads if "q_proj" in rest else cfg.n_kv_heads)
        out[f"blk.{layer}.{HF_TO_GGUF[rest]}"] = value
    return out


def write_gguf(path: pathlib.Path, cfg, tensors: dict[str, np.ndarray], arch: str = "llama",
               types: dict[str, gguf.GGMLQuantizationType] | None = None) -> pathlib.Path:
    """Writes `tensors` (float32, by llama.cpp name) as a GGUF file of `arch` with `cfg`'s metadata; tensors
    named in `types` are stored quantised to that type, the others as F32."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_base)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_bos_token_id(cfg.bos_id)
    writer.add_eos_token_id(cfg.eos_id)
    writer.add_pad_token_id(cfg.pad_id)
    for name, value in tensors.items():
        qtype = (types or {}).get(name)
        if qtype is None:
            writer.add_tensor(name, np.ascontiguousarray(value))
        elif value.dtype == np.float64:
            writer.add_tensor(name, value, raw_dtype=gguf.GGMLQuantizationType.F64)
        else:
            writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
