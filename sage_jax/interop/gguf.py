"""GGUF files in: llama.cpp's `llama`, `qwen2` and `qwen3` architectures, every tensor type `gguf.quants` can
dequantise, and the tokenizer rebuilt from the metadata.

The file is read with the `gguf` package's `GGUFReader` (a memory map). Names and shapes of every tensor are
checked against the config the metadata describes before anything is dequantised; each tensor is then
dequantised to float32 (a 4-bit checkpoint becomes its float32 reading: what llama.cpp computes with, up to its
own rounding), renamed to its Hugging Face name and converted by `sage_jax.interop.llama`, so a bad file raises
`LoadError` naming the file and the tensor and never returns a partial model.

With `quantized=True` the Q4_0, Q4_1 and Q8_0 matrices skip the float32 reading: their blocks are a
`sage_jax.quant.QTensor` byte for byte (groups of 32 along the input axis, float16 scales and minimums, codes
packed as GGUF packs them), so they are split into codes and scales by numpy views and keep their size in
memory. The renaming, the row un-permutation and `params_from_hf`'s transposes, reshapes and layer stacking are
the same calls on a `QTensor`, which moves its groups along.

Rotary layout. llama.cpp rotates adjacent pairs `(x0, x1), (x2, x3), ...` while Hugging Face and sage_jax
rotate halves `(x_i, x_{i+d/2})`; its converter therefore permutes the rows of `attn_q` and `attn_k` of the
`llama` architecture within each head, from `[2, d/2]` to `[d/2, 2]` (`convert_hf_to_gguf.py`, `permute`).
`unpermute_rows` undoes that (`[d/2, 2]` back to `[2, d/2]`, the inverse transformers applies in
`modeling_gguf_pytorch_utils.py`). Qwen2 and Qwen3 are stored in the half layout and are left alone.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Optional, Union

import numpy as np

from sage_jax.config import ConfigError, RopeScaling, SageConfig
from sage_jax.interop.errors import LoadError, Pretrained
from sage_jax.interop.gguf_tokenizer import tokenizer_from_gguf
from sage_jax.interop.llama import family_config, hf_shapes, params_from_hf
from sage_jax.quant import QTensor

PathLike = Union[str, pathlib.Path]
ARCHITECTURES = ("llama", "qwen2", "qwen3")

_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
          "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
          "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
          "attn_v.bias": "self_attn.v_proj.bias", "attn_q_norm.weight": "self_attn.q_norm.weight",
          "attn_k_norm.weight": "self_attn.k_norm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
          "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}
_HF_TO_GGUF = {**{hf: g for g, hf in _GLOBAL.items()}, **{hf: g for g, hf in _LAYER.items()}}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_BLOCKS = {"Q4_0": (4, False), "Q4_1": (4, True), "Q8_0": (8, False)}
"""GGUF block type -> (bits, with minimums) of the `QTensor` it is."""


def load_gguf(path: PathLike, *, dtype: str = "float32", quantized: bool = False) -> Pretrained:
    """Loads a GGUF file.

    Args:
      path: the `.gguf` file.
      dtype: parameter and compute dtype of the returned config (tensors are dequantised to float32 first).
      quantized: keep every Q4_0, Q4_1 and Q8_0 matrix as the `QTensor` its blocks are: 0.56, 0.63 and 1.06
        bytes a weight instead of float32's 4 (SmolLM2-135M's Q4_1 file: 97 MB of params instead of 538 MB), and
        the forward dequantises them inside the jitted step to the values `False` loads. Tensors of other types
        load as with `False`, and so do the few weights `sage_jax.interop.llama.params_from_hf` cannot keep
        quantized.

    Returns:
      `Pretrained` with the config, params, the rebuilt `tokenizers.Tokenizer` and the chat template.

    Raises:
      LoadError: the file is missing, truncated or not GGUF; its architecture, a metadata field or a tensor
        type is not supported; a tensor is missing, unknown or misshapen. The message names the file and the
        tensor or field.
    """
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(path)
        meta = {name: field.contents() for name, field in reader.fields.items()}
    except Exception as err:  # the reader raises ValueError, IndexError, struct errors... on bad files
        raise LoadError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
    source = str(path)
    infos = {t.name: t for t in reader.tensors}
    cfg = config_from_gguf(meta, source, tied="output.weight" not in infos, dtype=dtype)
    _check_layout(cfg, infos, source)
    tensors = {}
    for name, info in infos.items():
        # Only matrices: norms and biases are vectors, which the model takes in floating point.
        blocks = quantized and len(info.shape) == 2 and info.tensor_type.name in _BLOCKS
        tensors[_to_hf(name)] = _blocks(info, source, gguf) if blocks else _dequantise(info, source, gguf)
    if meta["general.architecture"] == "llama":
        for name, heads in (("self_attn.q_proj.weight", cfg.n_heads), ("self_attn.k_proj.weight", cfg.n_kv_heads)):
            for i in range(cfg.n_layers):
                key = f"model.layers.{i}.{name}"
                tensors[key] = unpermute_rows(tensors[key], heads)
    params = params_from_hf(cfg, tensors, source)
    tokenizer = tokenizer_from_gguf(meta, source) if "tokenizer.ggml.model" in meta else None
    return Pretrained(cfg, params, tokenizer, meta.get("tokenizer.chat_template"), source,
                      meta["general.architecture"])


def config_from_gguf(meta: dict[str, Any], source: str, *, tied: bool, dtype: str = "float32") -> SageConfig:
    """The `SageConfig` a GGUF file's metadata describes (`tied`: the file has no `output.weight`).

    Raises:
      LoadError: naming `source` and the field that is missing or has no SAGE counterpart.
    """
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise LoadError(f"{source}: general.architecture={arch!r} is not supported; known: {ARCHITECTURES}")

    def get(key: str, default: Any = ...) -> Any:
        if f"{arch}.{key}" in meta:
            return meta[f"{arch}.{key}"]
        if default is ...:
            raise LoadError(f"{source}: metadata field {arch}.{key} is missing")
        return default

    if get("attention.sliding_window", None) is not None:
        raise LoadError(f"{source}: metadata field {arch}.attention.sliding_window is not supported for GGUF "
                        "(llama.cpp applies it per architecture); load the Hugging Face directory instead")
    heads, width = get("attention.head_count"), get("embedding_length")
    head_dim = get("attention.key_length", width // heads)
    if get("rope.dimension_count", head_dim) != head_dim:
        raise LoadError(f"{source}: {arch}.rope.dimension_count={get('rope.dimension_count')} rotates part of each "
                        f"head (width {head_dim}); sage_jax rotates whole heads")
    tokens = meta.get("tokenizer.ggml.tokens")
    try:
        return family_config(
            name=str(meta.get("general.name") or arch), vocab_size=get("vocab_size", len(tokens or ()) or None),
            d_model=width, n_layers=get("block_count"), n_heads=heads, n_kv_heads=get("attention.head_count_kv", heads),
            head_dim=head_dim, d_ff=get("feed_forward_length"), max_seq_len=get("context_length"),
            rope_base=float(get("rope.freq_base", 10_000.0)), rope_scaling=_rope_scaling(get, source),
            norm_eps=float(get("attention.layer_norm_rms_epsilon")), tie_embeddings=tied,
            qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3", bos_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_id=meta.get("tokenizer.ggml.eos_token_id"), pad_id=meta.get("tokenizer.ggml.padding_token_id"),
            dtype=dtype)
    except ConfigError as err:
        raise LoadError(f"{source}: {err}") from None


def unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation: `[heads, d/2, 2, ...]` rows back to `[heads, 2, d/2, ...]`.

    Args:
      weight: `[heads * d, ...]` rows in llama.cpp's interleaved rotary order.
      heads: query heads for `attn_q`, key/value heads for `attn_k`.
    """
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _rope_scaling(get, source: str) -> Optional[RopeScaling]:
    kind = get("rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(get("rope.scaling.factor")))
    raise LoadError(f"{source}: rope.scaling.type={kind!r} is not supported (none, linear)")


def _to_hf(name: str) -> Optional[str]:
    """The Hugging Face name of a llama.cpp tensor name, or `None` for a name this loader does not know."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    match = _BLOCK.fullmatch(name)
    if match and match.group(2) in _LAYER:
        return f"model.layers.{match.group(1)}.{_LAYER[match.group(2)]}"
    return None


def _to_gguf(hf_name: str) -> str:
    match = _HF_LAYER.fullmatch(hf_name)
    return f"blk.{match.group(1)}.{_HF_TO_GGUF[match.group(2)]}" if match else _HF_TO_GGUF[hf_name]


def _check_layout(cfg: SageConfig, infos: dict, source: str) -> None:
    """Every tensor known, none missing, every shape right, before anything is dequantised."""
    want = {_to_gguf(name): shape for name, shape in hf_shapes(cfg).items()}
    for name, info in infos.items():
        if name not in want:
            why = "unknown to sage_jax" if _to_hf(name) is None else f"not part of a {cfg.n_layers}-layer " + (
                "tied model" if name == "output.weight" else "model of this architecture")
            raise LoadError(f"{source}: unexpected tensor {name!r} ({why}); nothing was loaded")
        shape = tuple(int(n) for n in reversed(info.shape.tolist()))  # GGUF lists dimensions innermost first
        if shape != want[name]:
            raise LoadError(f"{source}: tensor {name!r} has shape {shape}, the metadata needs {want[name]}")
    missing = [name for name in want if name not in infos]
    if missing:
        raise LoadError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} in all); nothing was loaded")


def _dequantise(info, source: str, gguf) -> np.ndarray:
    """A tensor's values as float32 `[rows, ...]`, in the shape its header states."""
    shape = tuple(int(n) for n in reversed(info.shape.tolist()))
    try:
        values = gguf.quants.dequantize(info.data, info.tensor_type)
    except NotImplementedError:
        raise LoadError(f"{source}: tensor {info.name!r} has type {info.tensor_type.name}, which gguf.quants "
                        "cannot dequantise") from None
    except Exception as err:
        raise LoadError(f"{source}: tensor {info.name!r} ({info.tensor_type.name}) cannot be read, the file may be "
                        f"truncated ({type(err).__name__}: {err})") from None
    if values.size != int(np.prod(shape)):
        raise LoadError(f"{source}: tensor {info.name!r} holds {values.size} values, its header states {shape}; "
                        "the file is truncated or corrupt")
    return np.asarray(values, np.float32).reshape(shape)


def _blocks(info, source: str, gguf) -> QTensor:
    """A Q4_0, Q4_1 or Q8_0 tensor as the `QTensor` `[rows, cols]` its blocks are, grouped along `cols`.

    A row is `cols / 32` blocks: a float16 scale (Q4_1: then a float16 minimum), then 16 bytes of packed 4-bit
    codes (Q8_0: 32 signed bytes). Codes and scales are sliced out of the blocks as they are, no value computed.
    """
    shape = tuple(int(n) for n in reversed(info.shape.tolist()))
    bits, asymmetric = _BLOCKS[info.tensor_type.name]
    group, block_bytes = gguf.GGML_QUANT_SIZES[info.tensor_type]
    data = np.asarray(info.data)
    if data.dtype != np.uint8 or data.size * group != int(np.prod(shape)) * block_bytes:
        raise LoadError(f"{source}: tensor {info.name!r} ({info.tensor_type.name}) holds {data.size} bytes, its "
                        f"header states {shape} ({int(np.prod(shape)) // group * block_bytes} bytes); the file is "
                        "truncated or corrupt")
    blocks = data.reshape(*shape[:-1], shape[-1] // group, block_bytes)
    header = 4 if asymmetric else 2
    codes = blocks[..., header:].reshape(*shape[:-1], -1)
    return QTensor(codes if bits == 4 else codes.view(np.int8), blocks[..., 0:2].view(np.float16)[..., 0],
                   blocks[..., 2:4].view(np.float16)[..., 0] if asymmetric else None, axis=-1, bits=bits,
                   group_size=group)
