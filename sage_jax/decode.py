"""KV-cache generation: greedy or temperature/top-k sampling, batched with left padding, optionally tracked.

Prompts are left-padded so that every row's last prompt token sits in the same column and every row
writes its next token into the same cache slot. Rotary positions are counted over real tokens only, so a
padded row computes exactly what it would alone. The cache holds `P + max_new_tokens` slots.

Tracked mode records, for every generated token, the attention of the forward step that chose it
(the query at the position just before it) over every slot of the final sequence: `attention[b, i]` says
where the model looked when it emitted generated token `i`.

Generation speaks the coordinates of its final sequence `[B, P + N]`: `record=` returns the `Trace` that
`forward` over the output tokens would record (each query row filled by the step that computed it, so the
amortised analysis needs no second forward), and `edits=` takes an `Edits` sized for that sequence, each
step applying the rows of its own queries: an intervention decodes with the KV cache.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sage_jax.config import SageConfig
from sage_jax.model import Params, RecordSpec, _concrete, apply_model, check_tokens, default_positions
from sage_jax.nn.attention import value_norms
from sage_jax.nn.masks import attention_mask, boundary_flags
from sage_jax.quant import as_array
from sage_jax.trace import TRACE_QUERY_AXIS, Edits, Record, Trace, edit_rows, select_rows, validate_edits


@struct.dataclass
class KVCache:
    """Key/value buffers and per-slot metadata.

    Attributes:
      k, v: `[L, B, S, K, d]` keys (rotated) and values of every layer.
      positions: `[B, S]` rotary position of each slot.
      valid: `[B, S]` slots holding real tokens.
      boundary: `[B, S]` slots holding step-boundary tokens.
      index: scalar, the first free slot.
    """

    k: jax.Array
    v: jax.Array
    positions: jax.Array
    valid: jax.Array
    boundary: jax.Array
    index: jax.Array


@struct.dataclass
class GenerateOutput:
    """What `generate` returns (`P` padded prompt length, `N = max_new_tokens`).

    Attributes:
      tokens: `[B, P + N]` the left-padded prompt followed by the generated tokens; after a row's end token
        (or when the loop stopped early) the row holds `cfg.pad_id`.
      mask: `[B, P + N]` True at real tokens (prompt and generated, end token included).
      num_generated: `[B]` tokens generated per row (end token included).
      logits: `[B, N, V]` the logits each generated token was chosen from (zero where none was), or `None`.
      attention: `[B, N, L, H, P + N]` tracked attention of the step that chose each generated token over all
        slots (zero where no token was generated), or `None`.
      trace: with `record=`, the `Trace` over the final sequence (`attn [L, B, H, P + N, P + N]`, ...): the
        rows a `forward` over `tokens` (with `mask`) would record; zero in rows of slots that hold no token.
      hidden: with `return_hidden`, `[B, P + N, D]` the final normed hidden state of every slot (zero where
        no token is).
    """

    tokens: jax.Array
    mask: jax.Array
    num_generated: jax.Array
    logits: Optional[jax.Array] = None
    attention: Optional[jax.Array] = None
    trace: Optional[Trace] = None
    hidden: Optional[jax.Array] = None


def init_cache(cfg: SageConfig, batch: int, size: int) -> KVCache:
    """An empty cache of `size` slots."""
    kv_shape = (cfg.n_layers, batch, size, cfg.n_kv_heads, cfg.head_dim)
    return KVCache(k=jnp.zeros(kv_shape, cfg.compute_dtype), v=jnp.zeros(kv_shape, cfg.compute_dtype),
                   positions=jnp.zeros((batch, size), jnp.int32), valid=jnp.zeros((batch, size), bool),
                   boundary=jnp.zeros((batch, size), bool), index=jnp.zeros((), jnp.int32))


def extend(params: Params, cfg: SageConfig, cache: KVCache, tokens: jax.Array, positions: jax.Array,
           valid: jax.Array, record: Record = Record(), edits: Edits = Edits()):
    """Runs `[B, T]` new tokens against the cache and appends them to it, under `edits` sized for these
    `T` queries and all `S` slots.

    Returns:
      (`LMOutput` for the new tokens, with trace fields over all `S` cache slots; the updated cache).
    """
    t = tokens.shape[1]
    write = lambda buf, new: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (0, cache.index))  # noqa: E731
    cache = cache.replace(positions=write(cache.positions, positions), valid=write(cache.valid, valid),
                          boundary=write(cache.boundary, boundary_flags(cfg, tokens)))
    q_slots = cache.index + jnp.arange(t)
    mask = attention_mask(cfg, q_slots, jnp.arange(cache.valid.shape[1]), positions, cache.positions,
                          cache.valid, cache.boundary)
    out = apply_model(params, cfg, record, tokens, positions, mask, edits, kv=(cache.k, cache.v),
                      index=cache.index)
    k, v = out.kv
    return out, cache.replace(k=k, v=v, index=cache.index + t)


def generate(params: Params, cfg: SageConfig, prompt: Union[jax.Array, Sequence[Sequence[int]]], *,
             max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
             key: Optional[jax.Array] = None, eos_id: Optional[int] = None,
             prompt_mask: Optional[jax.Array] = None, track: bool = False,
             return_logits: bool = False, record: RecordSpec = None, return_hidden: bool = False,
             edits: Optional[Edits] = None, check_finite: bool = True) -> GenerateOutput:
    """Generates up to `max_new_tokens` tokens after each prompt, stopping each row at its end token.

    Args:
      params: model parameters.
      cfg: the model config.
      prompt: `[B, P]` left-padded token ids (with `prompt_mask`), or a list of token-id lists of any
        lengths, which are left-padded here.
      max_new_tokens: tokens to generate at most; `P + max_new_tokens <= cfg.max_seq_len`.
      temperature: 0 for greedy decoding; otherwise sample from `softmax(logits / temperature)`.
      top_k: with sampling, keep only the `top_k` most likely tokens.
      key: PRNG key, required when sampling.
      eos_id: the end token; defaults to `cfg.eos_id`.
      prompt_mask: `[B, P]` bool, `False` at left padding; defaults to all real.
      track: also return the attention each generated token paid to all earlier tokens.
      return_logits: also return the logits each token was chosen from.
      record: `Trace` fields to record over the final sequence (as `forward`'s `record`; its `positions` index
        the final `[P + N]` sequence, and are taken, or averaged, once every row is written).
      return_hidden: also return the final hidden state of every slot.
      edits: an intervention, sized for a forward over the final `[B, P + N]` sequence (queries and keys
        are its slots; any axis may have size 1); `None` or an empty `Edits` decodes the plain model.
      check_finite: raise when a token was chosen from non-finite logits. This waits for the result (one
        scalar comes to the host); pass False to keep generation asynchronous. Without the check, NaN
        parameters or edits decode silently as `argmax(NaN) = 0`, the pad id, which looks like a model
        that stopped talking rather than a broken input. Under an outer `jit` the check cannot run and is
        skipped.

    Returns:
      A `GenerateOutput`.

    Raises:
      ValueError: a malformed prompt (non-integer ids, ids outside the vocabulary, bad padding) or setting.
      FloatingPointError: with `check_finite`, a generated token was chosen from logits holding NaN or inf.
    """
    tokens, mask = _prepare_prompt(prompt, prompt_mask, cfg)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = tokens.shape[1] + max_new_tokens
    if total > cfg.max_seq_len:
        raise ValueError(f"prompt length {tokens.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds "
                         f"cfg.max_seq_len={cfg.max_seq_len} of config {cfg.name!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key: pass key=jax.random.key(...)")
    if top_k is not None and not 1 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k must lie in [1, vocab_size={cfg.vocab_size}], got {top_k}")
    eos_id = cfg.eos_id if eos_id is None else eos_id
    if not 0 <= eos_id < cfg.vocab_size:
        raise ValueError(f"eos_id={eos_id} is outside the vocabulary [0, {cfg.vocab_size})")
    key = jax.random.key(0) if key is None else key
    edits = Edits() if edits is None else edits
    validate_edits(edits, cfg, tokens.shape[0], total, total)
    record = Record.of(record)
    record.check(cfg, total)
    if track and record.layers is not None:
        raise ValueError("track=True returns every layer's attention, which Record.layers would cut: record "
                         "'attn' with the layers wanted instead (GenerateOutput.trace.attn), or track without layers")
    out, first_bad = _generate(
        params, tokens, mask, key, jnp.float32(max(temperature, 1e-6)), jnp.int32(eos_id), edits, cfg=cfg,
        max_new_tokens=max_new_tokens, greedy=temperature == 0, top_k=top_k, track=track,
        return_logits=return_logits, record=record, return_hidden=return_hidden)
    bad = _concrete(first_bad) if check_finite else None
    if bad is not None and bad >= 0:
        raise FloatingPointError(
            f"generate: generated token {int(bad)} (and those after it) was chosen from non-finite logits; "
            "check the parameters and edits for NaN or inf (sage_jax.forward on the prompt shows where they "
            "start), or pass check_finite=False to get the tokens anyway")
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy", "top_k", "track", "return_logits",
                                             "record", "return_hidden"))
def _generate(params, tokens, mask, key, temperature, eos_id, edits, *, cfg: SageConfig, max_new_tokens: int,
              greedy: bool, top_k: Optional[int], track: bool, return_logits: bool, record: Record,
              return_hidden: bool) -> tuple[GenerateOutput, jax.Array]:
    """The decoding loop; also returns the index of the first token chosen from non-finite logits (-1: none)."""
    b, p = tokens.shape
    n = max_new_tokens
    # Value norms are attention times per-slot norms: computed once from the final cache, not at every step.
    # Positions and means are of the final sequence's rows: taken once all rows are written.
    rows_record = dataclasses.replace(record.rows_only, attn=record.attn or record.value_norms, value_norms=False)
    step_record = dataclasses.replace(rows_record, attn=rows_record.attn or track)
    positions = default_positions(mask)
    out, cache = extend(params, cfg, init_cache(cfg, b, p + n), tokens, positions, mask, step_record,
                        edit_rows(edits, 0, p))
    rows = _Rows(rows_record, return_hidden)

    def last_step(out):
        attn = None if not track else jnp.moveaxis(out.trace.attn[:, :, :, -1, :], 0, 1)  # [B, L, H, S]
        return out.logits[:, -1], attn

    logits, attn = last_step(out)
    state = dict(
        i=jnp.int32(0), first_bad=jnp.int32(-1), cache=cache, logits=logits, attn=attn, done=jnp.zeros((b,), bool),
        tokens=jnp.concatenate([tokens, jnp.full((b, n), cfg.pad_id, tokens.dtype)], axis=1),
        mask=jnp.concatenate([mask, jnp.zeros((b, n), bool)], axis=1),
        next_pos=positions[:, -1] + 1,
        logits_buf=jnp.zeros((b, n, cfg.vocab_size), jnp.float32) if return_logits else None,
        attn_buf=jnp.zeros((b, n) + attn.shape[1:], attn.dtype) if track else None,
        rows=rows.write(rows.empty(out, p + n), out, 0, jnp.ones((b,), bool)),
    )

    def cond(s):
        return (s["i"] < n) & ~jnp.all(s["done"])

    def body(s):
        i = s["i"]
        token = _select(s["logits"], jax.random.fold_in(key, i), temperature, greedy, top_k)
        live = ~s["done"]
        bad = jnp.any(live & ~jnp.all(jnp.isfinite(s["logits"]), axis=-1))
        token = jnp.where(live, token, cfg.pad_id).astype(tokens.dtype)
        s = dict(s)
        s["first_bad"] = jnp.where(bad & (s["first_bad"] < 0), i, s["first_bad"])
        s["tokens"] = s["tokens"].at[:, p + i].set(token)
        s["mask"] = s["mask"].at[:, p + i].set(live)
        if return_logits:
            s["logits_buf"] = s["logits_buf"].at[:, i].set(jnp.where(live[:, None], s["logits"], 0.0))
        if track:
            s["attn_buf"] = s["attn_buf"].at[:, i].set(jnp.where(live[:, None, None, None], s["attn"], 0.0))
        s["done"] = s["done"] | (token == eos_id)
        out, s["cache"] = extend(params, cfg, s["cache"], token[:, None], s["next_pos"][:, None], live[:, None],
                                 step_record, edit_rows(edits, p + i, 1))
        s["rows"] = rows.write(s["rows"], out, p + i, live)
        s["logits"], s["attn"] = last_step(out)
        s["next_pos"] = s["next_pos"] + live
        s["i"] = i + 1
        return s

    s = jax.lax.while_loop(cond, body, state)
    trace, hidden = rows.read(s["rows"])
    if record.value_norms:
        v, w_o = s["cache"].v.astype(trace.attn.dtype), as_array(params["layers"]["attn"]["o"], trace.attn.dtype)
        if record.layers is not None:
            v, w_o = v[jnp.asarray(record.layers)], w_o[jnp.asarray(record.layers)]
        trace = trace.replace(value_norms=jax.vmap(value_norms)(trace.attn, v, w_o),
                              attn=trace.attn if record.attn else None)
    if trace is not None:
        trace = select_rows(trace, record)
    out = GenerateOutput(tokens=s["tokens"], mask=s["mask"], num_generated=jnp.sum(s["mask"][:, p:], axis=1),
                         logits=s["logits_buf"], attention=s["attn_buf"], trace=trace, hidden=hidden)
    return out, s["first_bad"]


class _Rows:
    """Buffers of the final sequence's `Trace` fields (and hidden state) that decoding fills row by row."""

    def __init__(self, record: Record, hidden: bool):
        self.names = [name for name in TRACE_QUERY_AXIS if getattr(record, name)]
        self.hidden = hidden

    def fields(self, out) -> dict:
        """name -> (array, query axis, batch axis) of what is recorded from one `LMOutput`."""
        fields = {name: (getattr(out.trace, name), TRACE_QUERY_AXIS[name], 1) for name in self.names}
        if self.hidden:
            fields["hidden"] = (out.hidden, 1, 0)
        return fields

    def empty(self, out, length: int) -> dict:
        """Zero buffers shaped like `out`'s fields with `length` query rows."""
        buffers = {}
        for name, (x, axis, _) in self.fields(out).items():
            buffers[name] = jnp.zeros(x.shape[:axis] + (length,) + x.shape[axis + 1:], x.dtype)
        return buffers

    def write(self, buffers: dict, out, start, live: jax.Array) -> dict:
        """`buffers` with the rows of `out` (an `LMOutput` of queries from slot `start`) written where `live`."""
        written = {}
        for name, (rows, axis, batch_axis) in self.fields(out).items():
            keep = live.reshape((1,) * batch_axis + (-1,) + (1,) * (rows.ndim - batch_axis - 1))
            rows = jnp.where(keep, rows, 0).astype(buffers[name].dtype)
            written[name] = jax.lax.dynamic_update_slice_in_dim(buffers[name], rows, start, axis)
        return written

    def read(self, buffers: dict):
        """(`Trace` or `None`, hidden or `None`)."""
        trace = Trace(**{name: buffers[name] for name in self.names}) if self.names else None
        return trace, buffers.get("hidden")


def _select(logits: jax.Array, key: jax.Array, temperature: jax.Array, greedy: bool,
            top_k: Optional[int]) -> jax.Array:
    """`[B]` next tokens from `[B, V]` logits."""
    if greedy:
        return jnp.argmax(logits, axis=-1)
    scaled = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    return jax.random.categorical(key, scaled, axis=-1)


def left_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`([B, width] int32 tokens, [B, width] bool prompt mask)`: each row right-aligned after `pad_id`s, the
    form `generate` takes with `prompt_mask` (a fixed `width` lets prompts of other lengths share one compile)."""
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"prompt row {i} has {len(row)} tokens, more than width={width}")
        tokens[i, width - len(row):] = row
        mask[i, width - len(row):] = True
    return tokens, mask


def _prepare_prompt(prompt, prompt_mask, cfg: SageConfig) -> tuple[jax.Array, jax.Array]:
    """Left-pads a ragged prompt, or checks an already padded one; returns `[B, P]` tokens and mask."""
    if isinstance(prompt, (list, tuple)):
        if prompt_mask is not None:
            raise ValueError("prompt_mask is only for an already padded [B, P] array prompt")
        rows = [np.asarray(r) for r in prompt]
        if not rows or any(r.ndim != 1 or r.size == 0 for r in rows):
            raise ValueError("every prompt must be a flat list of at least one token id")
        for i, r in enumerate(rows):
            if r.dtype.kind not in "iu":
                raise ValueError(f"prompt row {i} holds {r.dtype} values {r.tolist()[:8]}; token ids must be "
                                 "integers (nothing is rounded silently)")
        tokens, mask = left_pad(rows, max(len(r) for r in rows), cfg.pad_id)
        return check_tokens(tokens, cfg), jnp.asarray(mask)
    tokens = check_tokens(prompt, cfg)
    if prompt_mask is None:
        return tokens, jnp.ones(tokens.shape, bool)
    if tuple(jnp.shape(prompt_mask)) != tokens.shape:
        raise ValueError(f"prompt_mask has shape {tuple(jnp.shape(prompt_mask))}; expected {tokens.shape}")
    values = _concrete(prompt_mask)
    if values is not None:
        values = values.astype(bool)
        if not values[:, -1].all():
            raise ValueError(f"prompt rows {np.flatnonzero(~values[:, -1]).tolist()} end in padding: "
                             "prompts must be left-padded with at least one real token")
        if (np.diff(values.astype(np.int8), axis=1) < 0).any():
            raise ValueError("prompt_mask is not left padding (a real token is followed by padding)")
    return tokens, jnp.asarray(prompt_mask, bool)
