"""Hugging Face directories in and out: `config.json` plus safetensors (one file or a sharded index).

Reading uses the `safetensors` package's numpy API, so loading needs no torch. Four architectures map onto the
homogeneous SAGE decoder: `LlamaForCausalLM` (with Llama 3 or linear rope scaling), `MistralForCausalLM` (its
sliding window is every head's span), `Qwen2ForCausalLM` (q/k/v biases: `qkv_bias`) and `Qwen3ForCausalLM`
(per-head q/k RMSNorm: `qk_norm`). Anything a config asks for that the model cannot compute (another activation,
MLP or output-projection biases, per-layer windows) is an error naming the field, never silently dropped.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Optional, Union

import numpy as np

from sage_jax import quant
from sage_jax.config import ConfigError, RopeScaling, SageConfig
from sage_jax.interop.errors import LoadError, Pretrained
from sage_jax.interop.llama import family_config, hf_from_params, params_from_hf, window_of

PathLike = Union[str, pathlib.Path]

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                "Qwen3ForCausalLM": "qwen3"}


def load_hf(directory: PathLike, *, dtype: str = "float32") -> Pretrained:
    """Loads a Hugging Face checkpoint directory.

    Args:
      directory: holds `config.json` and `model.safetensors` or `model.safetensors.index.json` with its shards;
        a `tokenizer.json` there is loaded too.
      dtype: parameter and compute dtype of the returned config.

    Returns:
      `Pretrained` with `tokenizer` (a `tokenizers.Tokenizer`) and `chat_template` when the directory has them.

    Raises:
      LoadError: an unsupported architecture or config field, or a missing, unknown or misshapen tensor; the
        message names the file and the field or tensor.
    """
    directory = pathlib.Path(directory)
    config_path = directory / "config.json"
    hf = _read_json(config_path)
    cfg = config_from_hf(hf, str(config_path), dtype=dtype)
    tensors, source = _read_tensors(directory)
    params = params_from_hf(cfg, tensors, source)
    tokenizer, template = _read_tokenizer(directory)
    return Pretrained(cfg, params, tokenizer, template, str(directory), hf["architectures"][0])


def config_from_hf(hf: Mapping[str, Any], source: str, *, dtype: str = "float32") -> SageConfig:
    """The `SageConfig` of a Hugging Face `config.json` (as a dict) of one of `ARCHITECTURES`.

    Raises:
      LoadError: naming `source` and the field that has no SAGE counterpart.
    """
    archs = hf.get("architectures") or []
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise LoadError(f"{source}: architectures={archs!r} is not supported; known: {ARCHITECTURES}")
    arch = archs[0]

    def need(field: str, allowed) -> None:
        if hf.get(field, allowed[0]) not in allowed:
            raise LoadError(f"{source}: {field}={hf[field]!r} is not supported by {arch} in sage_jax "
                            f"(needs {' or '.join(map(repr, allowed))})")

    need("hidden_act", ("silu",))
    need("mlp_bias", (False,))
    if arch != "Qwen2ForCausalLM":  # Llama and Qwen3 put that bias on o_proj too; Qwen2 has q/k/v biases only
        need("attention_bias", (False,))
    heads = hf["num_attention_heads"]
    try:
        return family_config(
            name=str(hf.get("_name_or_path") or arch), vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"], n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim"), d_ff=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
            rope_base=float(_rope(hf).get("rope_theta", 10_000.0)), rope_scaling=_rope_scaling(hf, source),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            window=_window(hf, arch, source), qkv_bias=arch == "Qwen2ForCausalLM", qk_norm=arch == "Qwen3ForCausalLM",
            bos_id=_first(hf.get("bos_token_id")), eos_id=_first(hf.get("eos_token_id")),
            pad_id=_first(hf.get("pad_token_id")), dtype=dtype)
    except KeyError as err:
        raise LoadError(f"{source}: missing field {err.args[0]!r}") from None
    except ConfigError as err:
        raise LoadError(f"{source}: {err}") from None


def config_to_hf(cfg: SageConfig) -> dict[str, Any]:
    """The Hugging Face `config.json` (as a dict) of a homogeneous config.

    The architecture is the plainest one that computes `cfg`: Qwen3 with `qk_norm`, Qwen2 with `qkv_bias`,
    Mistral with a sliding window, Llama otherwise.

    Raises:
      LoadError: `cfg` has something no such architecture has (see `window_of`), or both `qkv_bias` and
        `qk_norm`.
    """
    window = window_of(cfg)
    if cfg.qk_norm and cfg.qkv_bias:
        raise LoadError("SageConfig.qkv_bias with qk_norm has no Hugging Face counterpart (Qwen3's attention_bias "
                        "also biases o_proj)")
    arch = ("Qwen3ForCausalLM" if cfg.qk_norm else "Qwen2ForCausalLM" if cfg.qkv_bias
            else "MistralForCausalLM" if window is not None else "LlamaForCausalLM")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope.update(rope_type=s.kind, factor=s.factor)
        if s.kind == "llama3":
            rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                        original_max_position_embeddings=s.original_max_len)
    hf = dict(architectures=[arch], model_type=_MODEL_TYPES[arch], vocab_size=cfg.vocab_size,
              hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
              num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
              hidden_act="silu", max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
              rope_parameters=rope, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_id,
              eos_token_id=cfg.eos_id, pad_token_id=cfg.pad_id, dtype=cfg.param_dtype, use_cache=True)
    if arch in ("LlamaForCausalLM", "Qwen3ForCausalLM"):
        hf.update(attention_bias=False)
    if arch == "LlamaForCausalLM":
        hf.update(mlp_bias=False)
    if arch == "MistralForCausalLM":
        hf.update(sliding_window=window)
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        hf.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=0,
                  layer_types=["sliding_attention" if window else "full_attention"] * cfg.n_layers)
    return hf


def save_hf(cfg: SageConfig, params: Mapping, directory: PathLike) -> pathlib.Path:
    """Writes `params` of a homogeneous `cfg` as a Hugging Face directory (`config.json`, `model.safetensors`)
    that `transformers.AutoModelForCausalLM.from_pretrained` loads and `load_hf` reads back bit for bit.

    Raises:
      LoadError: `cfg` cannot be written as a Hugging Face model (see `config_to_hf`).
      ValueError: `params` are quantized (`sage_jax.quant`): a Hugging Face directory holds floats.
    """
    from safetensors.numpy import save_file

    if quant.is_quantized(params):
        raise ValueError("save_hf: the params are quantized (sage_jax.quant); a Hugging Face directory holds floats: "
                         "save quant.dequantize(params) (their float reading)")
    hf = config_to_hf(cfg)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(hf_from_params(cfg, params), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return directory


def _rope(hf: Mapping[str, Any]) -> dict:
    """The rope parameters, from transformers 5's `rope_parameters` or the older `rope_theta`/`rope_scaling`."""
    rope = dict(hf.get("rope_scaling") or {})
    rope.update(hf.get("rope_parameters") or {})
    if "rope_theta" in hf:
        rope.setdefault("rope_theta", hf["rope_theta"])
    return rope


def _rope_scaling(hf: Mapping[str, Any], source: str) -> Optional[RopeScaling]:
    rope = _rope(hf)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(rope["factor"]))
    if kind == "llama3":
        return RopeScaling(kind="llama3", factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                           high_freq_factor=float(rope["high_freq_factor"]),
                           original_max_len=int(rope["original_max_position_embeddings"]))
    raise LoadError(f"{source}: rope_parameters.rope_type={kind!r} is not supported (default, linear, llama3)")


def _window(hf: Mapping[str, Any], arch: str, source: str) -> Optional[int]:
    """The sliding window all layers share, or `None`; per-layer windows are not a SAGE config."""
    if arch == "MistralForCausalLM":
        return hf.get("sliding_window")
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        types = set(hf.get("layer_types") or ())
        if not hf.get("use_sliding_window", False) and "sliding_attention" not in types:
            return None
        if types != {"sliding_attention"}:
            raise LoadError(f"{source}: layer_types={hf.get('layer_types')!r} mixes sliding and full attention; "
                            "sage_jax has one span for all layers")
        return hf["sliding_window"]
    return None


def _first(token_id) -> Optional[int]:
    """An id, or the first of a list of ids (`eos_token_id` may list several)."""
    if isinstance(token_id, (list, tuple)):
        return token_id[0] if token_id else None
    return token_id


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise LoadError(f"{path}: not found (a Hugging Face directory needs config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LoadError(f"{path}: not valid JSON ({err})") from None


def _read_tensors(directory: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a directory's safetensors (one file, or the shards an index names), and their source."""
    from safetensors.numpy import load_file

    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise LoadError(f"{index}: no weight_map")
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        raise LoadError(f"{directory}: no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        try:
            shard = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
            raise LoadError(f"{path}: cannot read safetensors ({type(err).__name__}: {err})") from None
        repeated = sorted(shard.keys() & tensors.keys())
        if repeated:
            raise LoadError(f"{path}: tensor {repeated[0]!r} appears in two shards")
        tensors.update(shard)
    source = str(files[0]) if len(files) == 1 else f"{directory} ({len(files)} shards)"
    return tensors, source


def _read_tokenizer(directory: pathlib.Path):
    """`(tokenizers.Tokenizer or None, chat template or None)` from `tokenizer.json` / `tokenizer_config.json`."""
    tokenizer = template = None
    if (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    if (directory / "tokenizer_config.json").is_file():
        template = _read_json(directory / "tokenizer_config.json").get("chat_template")
    if (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text()
    return tokenizer, template
