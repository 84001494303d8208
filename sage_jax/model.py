"""The functional core: `init_params`, `forward`, `param_count`.

`forward(params, tokens, cfg, *, edits=None, record=None)` is a pure function of arrays and static
configuration, so `jax.jit` (with `cfg` and `record` static), `jax.grad`, `jax.vmap` (over a leading axis
of `[N, B, T]` tokens) and sharding compose over it. Input checks run on shapes always and on token values
whenever the tokens are concrete; nothing is clipped silently.
"""

from __future__ import annotations

import functools
from typing import Iterable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.nn.lm import SageLM, project_logits
from sage_jax.nn.masks import attention_mask, boundary_flags
from sage_jax.quant import as_array
from sage_jax.trace import Edits, Record, Trace, validate_edits

Params = dict
RecordSpec = Union[Record, Iterable[str], str, None]


class ForwardOutput(NamedTuple):
    """What `forward` returns.

    Attributes:
      logits: `[B, T, V]` next-token logits in `cfg.accum_dtype` (float32 unless the model is float64).
      trace: the `Trace` of what was asked for in `record` (other fields `None`).
      meta: `[B, T]` confidence logits of the meta-cognitive head (`sigmoid` gives the
        confidence), or `None` when `cfg.meta_head` is off.
      hidden: `[B, T, D]` the final normed hidden state (the features the unembedding reads).
    """

    logits: jax.Array
    trace: Trace
    meta: Optional[jax.Array]
    hidden: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: SageConfig, key: jax.Array) -> Params:
    """Fresh parameters for `cfg`; block parameters carry a leading `[n_layers]` axis.

    Jitted with `cfg` static, so that initialising many models of one config compiles once."""
    return SageLM(cfg).init(key, *_dummy_inputs(cfg))["params"]


def param_shapes(cfg: SageConfig) -> Params:
    """The parameter pytree as `jax.ShapeDtypeStruct`s, without allocating anything."""
    return jax.eval_shape(lambda k: SageLM(cfg).init(k, *_dummy_inputs(cfg))["params"],
                          jax.random.key(0))


def param_count(cfg: SageConfig) -> int:
    """Number of parameters of the forward model, counted with `jax.eval_shape` (nothing is allocated)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(param_shapes(cfg)))


def forward(params: Params, tokens: jax.Array, cfg: SageConfig, *, edits: Optional[Edits] = None,
            record: RecordSpec = None, positions: Optional[jax.Array] = None,
            mask: Optional[jax.Array] = None, query_rows: Optional[jax.Array] = None) -> ForwardOutput:
    """Runs SAGE-nano on `tokens`, recording and editing its internals on request.

    Args:
      params: parameters from `init_params` (or a checkpoint).
      tokens: `[B, T]` integer token ids in `[0, cfg.vocab_size)`, `T <= cfg.max_seq_len`.
      cfg: the model config (static under `jit`).
      edits: changes to attention and the residual stream (`sage_jax.Edits`); `None` or an empty `Edits`
        reproduces the plain forward bit for bit.
      record: which `Trace` fields to record: a `Record` (which may also select layers, positions or a mean),
        field names, or `"all"` (static under `jit`).
      positions: `[B, T]` rotary positions; by default `0..T-1`, or, with `mask`, counted over real tokens
        only (so a left-padded row gets the positions of its unpadded self).
      mask: `[B, T]` bool, `False` at padding; padding keys are invisible to every query.
      query_rows: `[B, R, T]` float weights over the query positions, the `R` sets of queries whose attention
        `Trace.attn_rows` records (`query_rows @ attn` per head); required by, and only with, `attn_rows`.

    Returns:
      `ForwardOutput(logits, trace, meta, hidden)`.
    """
    tokens = check_tokens(tokens, cfg)
    b, t = tokens.shape
    if mask is None:
        mask = jnp.ones((b, t), bool)
    else:
        _check_shape("mask", mask, (b, t))
        mask = jnp.asarray(mask, bool)
    if positions is None:
        positions = default_positions(mask)
    else:
        _check_shape("positions", positions, (b, t))
    edits = Edits() if edits is None else edits
    validate_edits(edits, cfg, b, t, t)
    record = Record.of(record)
    record.check(cfg, t)
    _check_query_rows(query_rows, record, b, t)
    slots = jnp.arange(t)
    attn_mask = attention_mask(cfg, slots, slots, positions, positions, mask, boundary_flags(cfg, tokens))
    out = apply_model(params, cfg, record, tokens, positions, attn_mask, edits, query_rows=query_rows)
    return ForwardOutput(out.logits, out.trace, out.meta_logits, out.hidden)


def apply_model(params: Params, cfg: SageConfig, record: Record, tokens: jax.Array, positions: jax.Array,
                attn_mask: jax.Array, edits: Edits, kv=None, index=0, query_rows: Optional[jax.Array] = None):
    """Applies `SageLM` with a precomputed `[B, H, T, S]` mask; the shared path of `forward` and decoding.

    Raises:
      ValueError: `record.attn_rows` without `query_rows` (decoding has none: only `forward` records it).
    """
    if record.attn_rows and query_rows is None:
        raise ValueError("record: Trace.attn_rows needs query_rows [B, R, T], which only sage_jax.forward takes "
                         "(generate cannot record attn_rows: record attn over the final sequence instead)")
    edits = jax.tree_util.tree_map(
        lambda e: jnp.broadcast_to(e, (cfg.n_layers,) + jnp.shape(e)[1:]), edits)
    return SageLM(cfg, record).apply({"params": params}, tokens, positions, attn_mask, edits, kv, index, query_rows)


def unembed(params: Params, cfg: SageConfig, hidden: jax.Array) -> jax.Array:
    """`[..., V]` logits from a final normed hidden state `[..., D]` (`ForwardOutput.hidden`), as `forward` computes
    them: for analyses that differentiate the unembedding apart from the blocks (each position's logits read only
    that position's row, so one pullback through it serves every loss that is a sum over positions)."""
    if cfg.tie_embeddings:  # as SageLM reads it: the embedding's transpose, else unembed/kernel (float or QTensor)
        matrix = as_array(params["embed"], cfg.compute_dtype).T
    else:
        matrix = as_array(params["unembed"]["kernel"], cfg.compute_dtype)
    return project_logits(hidden, matrix, cfg)


def default_positions(mask: jax.Array) -> jax.Array:
    """`[B, T]` positions counted over real tokens: the first real token of each row is at 0."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def check_tokens(tokens, cfg: SageConfig) -> jax.Array:
    """Checks shape, dtype, length and (when concrete) the value range of `[B, T]` token ids."""
    shape = jnp.shape(tokens)
    if len(shape) != 2:
        raise ValueError(f"tokens must be [batch, seq] token ids, got shape {shape} "
                         "(vmap over a leading axis of [N, batch, seq] for more axes)")
    dtype = jnp.asarray(tokens).dtype if not isinstance(tokens, jax.Array) else tokens.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {dtype}")
    if 0 in shape:
        raise ValueError(f"tokens must hold at least one row and one position, got shape {shape}")
    if shape[1] > cfg.max_seq_len:
        raise ValueError(f"sequence length {shape[1]} exceeds the context cfg.max_seq_len={cfg.max_seq_len} "
                         f"of config {cfg.name!r}; nothing is truncated silently, so shorten the input")
    values = _concrete(tokens)
    if values is not None and values.size:
        bad = np.argwhere((values < 0) | (values >= cfg.vocab_size))
        if bad.size:
            row, col = bad[0]
            raise ValueError(f"token id {values[row, col]} at [batch {row}, position {col}] is outside the "
                             f"vocabulary [0, {cfg.vocab_size}) of config {cfg.name!r} "
                             f"({len(bad)} such id(s) in all)")
    return jnp.asarray(tokens)


def _check_query_rows(query_rows, record: Record, batch: int, length: int) -> None:
    """`query_rows` comes with `attn_rows` and only with it, as `[B, R, T]` floats matching the tokens."""
    if query_rows is None:
        if record.attn_rows:
            raise ValueError("record: Trace.attn_rows needs query_rows, [batch, rows, seq] float weights over the "
                             "query positions (e.g. each step's queries normalised to sum 1)")
        return
    if not record.attn_rows:
        raise ValueError("query_rows is used only to record Trace.attn_rows: add 'attn_rows' to record")
    shape = tuple(jnp.shape(query_rows))
    if len(shape) != 3 or shape[0] != batch or shape[2] != length:
        raise ValueError(f"query_rows has shape {shape}; expected [batch={batch}, rows, seq={length}] to match tokens")
    if not jnp.issubdtype(jnp.result_type(query_rows), jnp.floating):
        raise ValueError(f"query_rows must be float weights over the queries, got dtype {jnp.result_type(query_rows)}")


def _check_shape(name: str, value, want: tuple[int, ...]) -> None:
    if tuple(jnp.shape(value)) != want:
        raise ValueError(f"{name} has shape {tuple(jnp.shape(value))}; expected {want} to match tokens")


def _concrete(x) -> Optional[np.ndarray]:
    """The value of `x` as numpy, or `None` while tracing."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _dummy_inputs(cfg: SageConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, cfg.n_heads, 1, 1), bool)
    return tokens, tokens, mask
