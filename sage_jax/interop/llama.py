"""The Llama family in sage_jax terms: its homogeneous config, and its weights by Hugging Face name.

Every loader ends here. A Hugging Face directory gives tensors under Hugging Face names directly; a GGUF file
gives them under llama.cpp names, renamed (and, for `llama`, with the query/key rows un-permuted) to the same
Hugging Face layout first. `params_from_hf` then checks the whole set (nothing missing, nothing unknown, every
shape right) before it builds one parameter tree, so a bad file never yields half a model.

Layouts. Hugging Face stores a projection as `weight [out, in]`; sage_jax stores `kernel [in, ...out]` with the
layers stacked on a leading `[L]` axis: `q_proj.weight [H*d, D]` is `layers/attn/q/kernel [L, D, H, d]`,
`o_proj.weight [D, H*d]` is `layers/attn/o [L, H, d, D]`, `down_proj.weight [D, F]` is
`layers/ffn/wo/kernel [L, F, D]`, biases `[H*d]` are `layers/attn/q_bias [L, H, d]`. Every conversion is a
transpose or a reshape, so the round trip is exact, and a `sage_jax.quant.QTensor` (a GGUF file's blocks,
grouped along `in`) goes through the same conversions and stays quantized.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax import quant
from sage_jax.config import RopeScaling, SageConfig
from sage_jax.interop.errors import LoadError

Tensors = Mapping[str, np.ndarray]


def family_config(*, name: str, vocab_size: int, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int,
                  head_dim: Optional[int], d_ff: int, max_seq_len: int, rope_base: float,
                  rope_scaling: Optional[RopeScaling], norm_eps: float, tie_embeddings: bool,
                  window: Optional[int] = None, qkv_bias: bool = False, qk_norm: bool = False,
                  bos_id: Optional[int] = None, eos_id: Optional[int] = None, pad_id: Optional[int] = None,
                  dtype: str = "float32") -> SageConfig:
    """The homogeneous `SageConfig` of a Llama-family decoder.

    Every head is a memory head with the span `window` (`None`: full context, a Mistral sliding window
    otherwise), there is no reasoning gate, no meta head and no step-boundary token. Missing special ids fall
    back to 0 (bos), 0 (eos) and eos (pad): a config needs ids inside the vocabulary, and the checkpoint did not
    name them.
    """
    eos = 0 if eos_id is None else eos_id
    return SageConfig(
        name=name, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff, max_seq_len=max_seq_len,
        n_reasoning_heads=0, n_memory_heads=n_heads, n_meta_heads=0,
        reasoning_span=window, memory_span=window, meta_span=window, boundary_token_ids=(),
        rope_base=rope_base, rope_scaling=rope_scaling, qkv_bias=qkv_bias, qk_norm=qk_norm, norm_eps=norm_eps,
        tie_embeddings=tie_embeddings, reasoning_gate=False, meta_head=False,
        bos_id=0 if bos_id is None else bos_id, eos_id=eos, pad_id=eos if pad_id is None else pad_id,
        dtype=dtype, param_dtype=dtype)


def window_of(cfg: SageConfig) -> Optional[int]:
    """The one attention span of a homogeneous config (`None`: full context).

    Raises:
      LoadError: `cfg` is not a plain Llama-family decoder (gate, meta head, unequal spans, or meta heads that
        see step boundaries beyond their span); the message names the field.
    """
    for field in ("reasoning_gate", "meta_head"):
        if getattr(cfg, field):
            raise LoadError(f"SageConfig.{field}=True has no Hugging Face counterpart; export needs it False")
    spans = {span for span, count in zip(cfg.group_spans, (cfg.n_reasoning_heads, cfg.n_memory_heads,
                                                           cfg.n_meta_heads)) if count}
    if len(spans) > 1:
        raise LoadError(f"SageConfig.reasoning_span/memory_span/meta_span: head groups with different spans "
                        f"{cfg.group_spans} have no Hugging Face counterpart; export needs one span for all heads")
    window = spans.pop()
    if window is not None and cfg.n_meta_heads and cfg.boundary_token_ids:
        raise LoadError("SageConfig.boundary_token_ids: meta heads see step boundaries beyond their span, which "
                        "no Hugging Face model does; export needs n_meta_heads=0 or no boundary tokens")
    return window


def hf_shapes(cfg: SageConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `cfg` holds, by Hugging Face name, with its shape."""
    d, hd, f = cfg.d_model, cfg.head_dim, cfg.d_ff
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.n_layers):
        for name, shape in _layer_shapes(cfg, d, hd, f, q, kv).items():
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes


def _layer_shapes(cfg: SageConfig, d: int, hd: int, f: int, q: int, kv: int) -> dict[str, tuple[int, ...]]:
    shapes = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
              "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
              "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
              "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f)}
    if cfg.qkv_bias:
        shapes.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    if cfg.qk_norm:
        shapes.update({"self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)})
    return shapes


def _layer_rules(cfg: SageConfig) -> dict[str, tuple[tuple[str, ...], Callable, Callable]]:
    """Hugging Face layer tensor -> (sage path under `layers`, to sage, back to Hugging Face), per layer."""
    d, hd = cfg.d_model, cfg.head_dim

    def heads(n):
        return (lambda w: w.T.reshape(d, n, hd), lambda k: k.reshape(d, n * hd).T)

    def bias(n):
        return (lambda b: b.reshape(n, hd), lambda b: b.reshape(n * hd))

    same = (lambda x: x, lambda x: x)
    transpose = (lambda w: w.T, lambda k: k.T)
    rules = {
        "input_layernorm.weight": (("attn_norm", "scale"), *same),
        "post_attention_layernorm.weight": (("ffn_norm", "scale"), *same),
        "self_attn.q_proj.weight": (("attn", "q", "kernel"), *heads(cfg.n_heads)),
        "self_attn.k_proj.weight": (("attn", "k", "kernel"), *heads(cfg.n_kv_heads)),
        "self_attn.v_proj.weight": (("attn", "v", "kernel"), *heads(cfg.n_kv_heads)),
        "self_attn.o_proj.weight": (("attn", "o"), lambda w: w.T.reshape(cfg.n_heads, hd, d),
                                    lambda o: o.reshape(cfg.n_heads * hd, d).T),
        "mlp.gate_proj.weight": (("ffn", "wi_gate", "kernel"), *transpose),
        "mlp.up_proj.weight": (("ffn", "wi_up", "kernel"), *transpose),
        "mlp.down_proj.weight": (("ffn", "wo", "kernel"), *transpose),
    }
    if cfg.qkv_bias:
        rules.update({"self_attn.q_proj.bias": (("attn", "q_bias"), *bias(cfg.n_heads)),
                      "self_attn.k_proj.bias": (("attn", "k_bias"), *bias(cfg.n_kv_heads)),
                      "self_attn.v_proj.bias": (("attn", "v_bias"), *bias(cfg.n_kv_heads))})
    if cfg.qk_norm:
        rules.update({"self_attn.q_norm.weight": (("attn", "q_norm", "scale"), *same),
                      "self_attn.k_norm.weight": (("attn", "k_norm", "scale"), *same)})
    return rules


def check_tensors(cfg: SageConfig, tensors: Tensors, source: str) -> None:
    """Checks that `tensors` is exactly the set `cfg` needs, with the right shapes.

    A tied checkpoint may still carry `lm_head.weight`, if it equals the embedding (some writers store both).

    Raises:
      LoadError: naming `source` and the first missing, unknown or misshapen tensor.
    """
    want = hf_shapes(cfg)
    extra = sorted(set(tensors) - set(want))
    if cfg.tie_embeddings and "lm_head.weight" in extra:
        if not np.array_equal(tensors["lm_head.weight"], tensors.get("model.embed_tokens.weight")):
            raise LoadError(f"{source}: tensor lm_head.weight differs from model.embed_tokens.weight, but the "
                            "config ties the embeddings (tie_word_embeddings)")
        extra.remove("lm_head.weight")
    if extra:
        raise LoadError(f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} in all) for a "
                        f"{_describe(cfg)} model; nothing was loaded")
    missing = sorted(set(want) - set(tensors), key=_natural)
    if missing:
        raise LoadError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} in all); nothing was loaded")
    for name, shape in want.items():
        got = tuple(np.shape(tensors[name]))
        if got != shape:
            raise LoadError(f"{source}: tensor {name!r} has shape {got}, the config needs {shape}")


def params_from_hf(cfg: SageConfig, tensors: Tensors, source: str) -> dict:
    """The sage_jax parameter tree of `cfg` from tensors under Hugging Face names, in `cfg.param_dtype`.

    A `quant.QTensor` tensor stays one, its codes and scales in their own dtypes. Two cases are dequantised to
    `cfg.param_dtype` instead: a weight whose layers are not all `QTensor`s of one layout (a file that stores
    layers in different types), and `o_proj` when a head is narrower than a group (its groups along `[H*d]` would
    straddle heads, which `[H, d, D]` cannot hold).

    Raises:
      LoadError: see `check_tensors`; nothing is converted before every tensor has been checked.
    """
    check_tensors(cfg, tensors, source)
    dtype = cfg.params_dtype
    layers: dict = {}
    for hf_name, (path, to_sage, _) in _layer_rules(cfg).items():
        node = layers
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _stack([_convert(to_sage, tensors[f"model.layers.{i}.{hf_name}"])
                                 for i in range(cfg.n_layers)], dtype)
    params = {"embed": _param(tensors["model.embed_tokens.weight"], dtype), "layers": layers,
              "final_norm": {"scale": jnp.asarray(tensors["model.norm.weight"], dtype)}}
    if not cfg.tie_embeddings:
        params["unembed"] = {"kernel": _param(_array(tensors["lm_head.weight"]).T, dtype)}
    return params


def hf_from_params(cfg: SageConfig, params: Mapping) -> dict[str, np.ndarray]:
    """Hugging Face tensors (numpy, `cfg.param_dtype`) from a sage_jax parameter tree of `cfg`."""
    tensors = {"model.embed_tokens.weight": np.asarray(params["embed"]),
               "model.norm.weight": np.asarray(params["final_norm"]["scale"])}
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = np.asarray(params["unembed"]["kernel"]).T
    for hf_name, (path, _, to_hf) in _layer_rules(cfg).items():
        node = params["layers"]
        for key in path:
            node = node[key]
        stacked = np.asarray(node)
        for i in range(cfg.n_layers):
            tensors[f"model.layers.{i}.{hf_name}"] = np.ascontiguousarray(to_hf(stacked[i]))
    return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def _array(tensor):
    """A tensor as numpy, a `QTensor` as it is (numpy would make it an object array)."""
    return tensor if isinstance(tensor, quant.QTensor) else np.asarray(tensor)


def _convert(to_sage: Callable, tensor):
    """`to_sage` of one layer's tensor; a `QTensor` whose groups it would cut is dequantised first."""
    if not isinstance(tensor, quant.QTensor):
        return to_sage(np.asarray(tensor))
    try:
        return to_sage(tensor)
    except ValueError:  # QTensor.reshape refuses to cut a group
        return to_sage(np.asarray(tensor.dequantize()))


def _param(tensor, dtype):
    """A float tensor as a `dtype` array; a `QTensor` with its leaves as arrays of their own dtypes."""
    if isinstance(tensor, quant.QTensor):
        return jax.tree.map(jnp.asarray, tensor)
    return jnp.asarray(tensor, dtype)


def _stack(per_layer: list, dtype):
    """One weight's layers stacked on a leading `[L]` axis (see `params_from_hf`)."""
    layouts = {(t.axis, t.bits, t.group_size, t.symmetric) if isinstance(t, quant.QTensor) else None
               for t in per_layer}
    if len(layouts) == 1 and None not in layouts:
        return _param(quant.stack(per_layer), dtype)
    return jnp.asarray(np.stack([np.asarray(t.dequantize()) if isinstance(t, quant.QTensor) else t
                                 for t in per_layer]), dtype)


def _describe(cfg: SageConfig) -> str:
    parts = [f"{cfg.n_layers}-layer"]
    parts += [name for name, on in (("tied", cfg.tie_embeddings), ("qkv-bias", cfg.qkv_bias),
                                    ("qk-norm", cfg.qk_norm)) if on]
    return " ".join(parts)


def _natural(name: str) -> tuple:
    """Sort key that puts layer 2 before layer 10."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))
