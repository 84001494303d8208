"""Static configuration of a SAGE-nano model.

`SageConfig` is a frozen, hashable dataclass so that it can be a static argument of `jax.jit` and a field of
Flax modules. It is validated once, at construction, and every failure names the field at fault.

Head groups. Each layer has `n_heads` query heads, split in order into three groups:
`[reasoning | memory | meta]`, so head `h` is a reasoning head when `h < n_reasoning_heads`, and so on.
Each group has its own attention span (multiscale attention): a span of `w` lets a query at position `p`
see keys at positions `p - w + 1 .. p`; `None` means the full causal context. Meta-cognitive heads
additionally always see step-boundary tokens (`boundary_token_ids`), wherever they are in the past, so
that they can monitor the chain step by step even with a short span. Setting all three spans to `None`
gives homogeneous heads (the ablation, and the Llama-compatible setting).

Llama-family switches. With homogeneous heads, `reasoning_gate=False` and `meta_head=False` the model is a
Llama decoder; `rope_scaling` (Llama 3), `qkv_bias` (Qwen2) and `qk_norm` (Qwen3) add what the other members of
the family need, and a Mistral sliding window is every group's span set to the window. Their defaults are the
plain SAGE model, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Union

import jax.numpy as jnp

from sage_jax import layout

_DTYPES = ("float32", "bfloat16", "float16", "float64")


class ConfigError(ValueError):
    """An invalid `SageConfig`; the message names the field."""


_ROPE_KINDS = ("linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched for a longer context (Hugging Face's `rope_parameters`).

    Attributes:
      kind: `"linear"` divides every frequency by `factor`; `"llama3"` divides the low frequencies (wavelength
        above `original_max_len / low_freq_factor`) by `factor`, keeps the high ones (below
        `original_max_len / high_freq_factor`) and interpolates smoothly between the two (Llama 3.1).
      factor: the stretch of the context.
      low_freq_factor, high_freq_factor: the Llama 3 band edges (unused by `"linear"`).
      original_max_len: the context the model was pretrained with (Llama 3 only).
    """

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_len: int = 8192

    def __post_init__(self):
        if self.kind not in _ROPE_KINDS:
            _fail("rope_scaling", f"kind must be one of {_ROPE_KINDS}, got {self.kind!r}")
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor > 0):
            _fail("rope_scaling", f"factor must be a positive number, got {self.factor!r}")
        if self.kind == "llama3":
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                _fail("rope_scaling", f"llama3 needs 0 < low_freq_factor ({self.low_freq_factor}) < "
                                      f"high_freq_factor ({self.high_freq_factor})")
            if not isinstance(self.original_max_len, int) or self.original_max_len <= 0:
                _fail("rope_scaling", f"original_max_len must be a positive integer, got {self.original_max_len!r}")


@dataclasses.dataclass(frozen=True)
class SageConfig:
    """Architecture of a SAGE-nano language model.

    Attributes:
      name: preset name, for logs only.
      vocab_size: number of token ids; ids must lie in `[0, vocab_size)`.
      d_model: width of the residual stream.
      n_layers: number of decoder blocks in the forward stack.
      n_heads: query heads per layer (`n_reasoning_heads + n_memory_heads + n_meta_heads`).
      n_kv_heads: key/value heads (grouped-query attention); must divide `n_heads`.
      head_dim: width of one head; defaults to `d_model // n_heads`.
      d_ff: hidden width of the SwiGLU FFN.
      max_seq_len: the context length; longer inputs are rejected, never clipped.
      n_reasoning_heads, n_memory_heads, n_meta_heads: the three head groups.
      reasoning_span, memory_span, meta_span: attention span per group in tokens (`None` = full context).
      boundary_token_ids: tokens that mark step boundaries; meta heads see them at any distance.
      rope_base: base of the rotary position frequencies.
      rope_scaling: a `RopeScaling` of the frequencies (Llama 3, linear), or `None` for plain RoPE; a mapping of
        its fields is accepted too (JSON overrides).
      qkv_bias: add a learned bias to the query, key and value projections (Qwen2).
      qk_norm: RMSNorm every query and key head over its width before the rotation (Qwen3).
      norm_eps: epsilon of every RMSNorm.
      tie_embeddings: unembed with the transposed token embedding instead of a separate matrix.
      reasoning_gate: scale each FFN output per token by a learned sigmoid gate.
      gate_init_bias: initial bias of that gate; positive so that the gate starts open.
      meta_head: add the meta-cognitive confidence head.
      n_inverse_layers: depth of the Inverse Analysis Layer (the amortised analyser).
      pad_id, bos_id, eos_id: special token ids shared with the tokenizer (`sage_jax.special`).
      dtype: compute dtype of activations; logits are always float32.
      param_dtype: dtype of the parameters.
      init_std: standard deviation of the normal initialisers.
      remat: rematerialise each block in the backward pass (saves memory at scale).
    """

    name: str = "custom"
    vocab_size: int = 512
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int = 8
    head_dim: Optional[int] = None
    d_ff: int = 688
    max_seq_len: int = 256
    n_reasoning_heads: int = 4
    n_memory_heads: int = 2
    n_meta_heads: int = 2
    reasoning_span: Optional[int] = 64
    memory_span: Optional[int] = None
    meta_span: Optional[int] = None
    boundary_token_ids: tuple[int, ...] = (layout.STEP,)
    rope_base: float = 10_000.0
    rope_scaling: Optional[RopeScaling] = None
    qkv_bias: bool = False
    qk_norm: bool = False
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    reasoning_gate: bool = True
    gate_init_bias: float = 3.0
    meta_head: bool = True
    n_inverse_layers: int = 6
    pad_id: int = layout.PAD
    bos_id: int = layout.BOS
    eos_id: int = layout.EOS
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02
    remat: bool = False

    def __post_init__(self):
        if self.head_dim is None:
            if self.d_model % max(self.n_heads, 1):
                _fail("n_heads", f"n_heads={self.n_heads} must divide d_model={self.d_model} "
                                 "(or set head_dim explicitly)")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        object.__setattr__(self, "boundary_token_ids", tuple(self.boundary_token_ids))
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", _rope_scaling(self.rope_scaling))
        self._validate()

    def _validate(self) -> None:
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                      "max_seq_len", "n_inverse_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                _fail(field, f"{field} must be a positive integer, got {value!r}")
        for field in ("n_reasoning_heads", "n_memory_heads", "n_meta_heads"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                _fail(field, f"{field} must be a non-negative integer, got {value!r}")
        groups = self.n_reasoning_heads + self.n_memory_heads + self.n_meta_heads
        if groups != self.n_heads:
            _fail("n_reasoning_heads",
                  f"head groups n_reasoning_heads={self.n_reasoning_heads} + n_memory_heads={self.n_memory_heads}"
                  f" + n_meta_heads={self.n_meta_heads} = {groups} must equal n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            _fail("n_kv_heads", f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.meta_head and self.n_meta_heads == 0:
            _fail("meta_head", "meta_head=True reads the meta-cognitive heads, but n_meta_heads=0")
        if self.head_dim % 2:
            _fail("head_dim", f"head_dim={self.head_dim} must be even for rotary embeddings")
        for field in ("reasoning_span", "memory_span", "meta_span"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value <= 0):
                _fail(field, f"{field} must be a positive integer or None (full context), got {value!r}")
        for field in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, field)
            if not 0 <= value < self.vocab_size:
                _fail(field, f"{field}={value} is outside the vocabulary [0, {self.vocab_size})")
        for token in self.boundary_token_ids:
            if not 0 <= token < self.vocab_size:
                _fail("boundary_token_ids", f"boundary token {token} is outside the vocabulary [0, {self.vocab_size})")
        for field in ("rope_base", "norm_eps", "init_std"):
            if not getattr(self, field) > 0:
                _fail(field, f"{field} must be positive, got {getattr(self, field)!r}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in _DTYPES:
                _fail(field, f"{field} must be one of {_DTYPES}, got {getattr(self, field)!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            _fail("rope_scaling", f"rope_scaling must be a RopeScaling, a mapping of its fields or None, "
                                  f"got {self.rope_scaling!r}")
        for field in ("qkv_bias", "qk_norm"):
            if not isinstance(getattr(self, field), bool):
                _fail(field, f"{field} must be a bool, got {getattr(self, field)!r}")

    def replace(self, **changes) -> "SageConfig":
        """A copy with `changes` applied and validated again."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"SageConfig has no field(s) {sorted(unknown)}")
        if "d_model" in changes or "n_heads" in changes:
            changes.setdefault("head_dim", None)
        return dataclasses.replace(self, **changes)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def accum_dtype(self) -> jnp.dtype:
        """Dtype of norms, softmax and logits: the compute dtype, but never below float32."""
        return jnp.promote_types(self.compute_dtype, jnp.float32)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def group_spans(self) -> tuple[Optional[int], Optional[int], Optional[int]]:
        """Spans of the (reasoning, memory, meta) groups."""
        return (self.reasoning_span, self.memory_span, self.meta_span)

    @property
    def head_groups(self) -> tuple[int, ...]:
        """Group index (0 reasoning, 1 memory, 2 meta) of every query head, length `n_heads`."""
        return ((0,) * self.n_reasoning_heads + (1,) * self.n_memory_heads + (2,) * self.n_meta_heads)

    @property
    def meta_heads(self) -> tuple[int, ...]:
        """Indices of the meta-cognitive heads."""
        return tuple(range(self.n_heads - self.n_meta_heads, self.n_heads))


def _rope_scaling(fields: Mapping[str, Union[str, float, int]]) -> RopeScaling:
    unknown = set(fields) - {f.name for f in dataclasses.fields(RopeScaling)}
    if unknown:
        _fail("rope_scaling", f"unknown RopeScaling field(s) {sorted(unknown)}")
    return RopeScaling(**fields)


def _fail(field: str, message: str):
    raise ConfigError(f"SageConfig.{field}: {message}")
