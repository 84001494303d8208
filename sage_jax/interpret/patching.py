"""Activation-patching sweeps: one generic engine, specialised by small functions.

`sweep` runs the model once per index of a sweep, with the `Edits` that `make_edits(index)` builds, and
reduces each run with a `metric`. The runs are batched with `vmap` (in chunks of `batch_size` through
`lax.map` when memory asks for it), never a Python loop of forward passes, and the edits are built inside
the mapped function so that only one chunk of full-size edits exists at a time.

The specialisations measure the effect on each reasoning step's log-probability and on the answer:

- `residual_patching`: layer x position. Run `tokens`, patch in the residual stream of `source_tokens` at
  one `(layer, position)`; `[L, T]` effects.
- `head_patching`: layer x head. Zero-ablate one head, or patch in from `source_tokens` its output (its
  contribution to the residual stream, `Trace.head_out`) or its attention pattern; `[L, H]` effects.
- `faithfulness.deleted_log_probs`: deletion set x step. Cut a set of source tokens from one step's queries
  (`faithfulness.deletion_edits`); `[N, n_steps]` log-probabilities.

Log-probabilities: the log-probability of token `t` is `log softmax(logits[t - 1])[tokens[t]]` (position 0
has none and counts 0); a step's log-probability sums it over the step's tokens (`step_mask [n_steps, T]`),
the answer's over `answer_mask [T]`. Effects are patched minus unpatched values, so a positive effect means
the patch made the step more likely. All functions take one sequence `[T]`; vmap over problems.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.interpret.interventions import replace_heads
from sage_jax.interpret.steps import sequence_nll
from sage_jax.model import ForwardOutput, forward
from sage_jax.trace import Edits

Array = jax.Array


class LogProbs(NamedTuple):
    """step `[..., n_steps]` summed token log-probabilities of each step; answer `[...]` of the answer."""

    step: Array
    answer: Array


class PatchingResult(NamedTuple):
    """effect: `LogProbs` with the sweep axes leading (`[L, T, n_steps]`/`[L, T]`, or `[L, H, ...]`);
    baseline: `LogProbs` of the unpatched run of `tokens`."""

    effect: LogProbs
    baseline: LogProbs


def token_log_probs(logits: Array, tokens: Array) -> Array:
    """`[T]` log-probability of each token given the ones before it (0 at position 0), from `[T, V]` logits."""
    return -sequence_nll(logits, tokens)


def step_log_probs(logits: Array, tokens: Array, step_mask: Array, answer_mask: Optional[Array] = None) -> LogProbs:
    """Summed log-probabilities of each step (`step_mask [n_steps, T]`) and of the answer (`answer_mask [T]`).

    Without `answer_mask` the answer log-probability is 0.
    """
    per_token = token_log_probs(logits, tokens)
    step = jnp.asarray(step_mask, per_token.dtype) @ per_token
    answer = 0.0 if answer_mask is None else jnp.asarray(answer_mask, per_token.dtype) @ per_token
    return LogProbs(step, jnp.asarray(answer, per_token.dtype))


def log_prob_metric(tokens: Array, step_mask: Array, answer_mask: Optional[Array] = None
                    ) -> Callable[[ForwardOutput], LogProbs]:
    """The metric of a one-row forward pass: `LogProbs` of `tokens [T]` under its logits."""
    return lambda out: step_log_probs(out.logits[0], tokens, step_mask, answer_mask)


def baseline_log_probs(params, cfg: SageConfig, tokens: Array, step_mask: Array,
                       answer_mask: Optional[Array] = None) -> LogProbs:
    """`LogProbs` of the unedited run of `tokens [T]`: what every sweep's effects are measured from."""
    return log_prob_metric(tokens, step_mask, answer_mask)(forward(params, tokens[None], cfg))


def sweep(params, cfg: SageConfig, tokens: Array, make_edits: Callable[[Any], Edits], indices: Any,
          metric: Callable[[ForwardOutput], Any], *, record=None, batch_size: Optional[int] = None) -> Any:
    """The generic engine: `metric(forward(tokens, edits=make_edits(i)))` for every index `i` of a sweep.

    Args:
      params: model parameters.
      cfg: the model config.
      tokens: `[T]` one sequence (run as a batch of one).
      make_edits: builds the `Edits` (batch axis 1) of one sweep index.
      indices: a pytree of arrays with a leading sweep axis `[N, ...]`.
      metric: reduces a `ForwardOutput` to a pytree of arrays.
      record: `Trace` fields the metric needs.
      batch_size: run the sweep in vmapped chunks of this size (`lax.map`); `None` vmaps it all at once.

    Returns:
      The metric's pytree with a leading `[N]` axis.
    """
    def run(index):
        return metric(forward(params, tokens[None], cfg, edits=make_edits(index), record=record))

    if batch_size is None:
        return jax.vmap(run)(indices)
    return jax.lax.map(run, indices, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("cfg", "batch_size"))
def residual_patching(params, cfg: SageConfig, tokens: Array, source_tokens: Array, step_mask: Array,
                      answer_mask: Optional[Array] = None, *, batch_size: Optional[int] = None) -> PatchingResult:
    """Layer x position sweep: patch `source_tokens`' residual stream into the run of `tokens`.

    Args:
      params, cfg: the model.
      tokens: `[T]` the run to patch (e.g. a corrupted prompt, to find what restores the clean behaviour).
      source_tokens: `[T]` the run to copy residuals from.
      step_mask: `[n_steps, T]` bool, the tokens of each step (scored under `tokens`).
      answer_mask: `[T]` bool, the answer tokens.
      batch_size: chunk size of the `L * T` patched runs.

    Returns:
      `PatchingResult` with effects `[L, T, n_steps]` and `[L, T]`: entry `[l, p]` patches the stream
      entering block `l` at position `p`.
    """
    _check_inputs(tokens, step_mask, source_tokens)
    this = forward(params, tokens[None], cfg, record=("residual",))
    other = forward(params, source_tokens[None], cfg, record=("residual",))
    diff = other.trace.residual - this.trace.residual  # [L, 1, T, D]
    n_layers, seq = cfg.n_layers, tokens.shape[0]

    def make_edits(index):
        layer, position = index
        at_layer = (jnp.arange(n_layers) == layer)[:, None, None, None]
        at_position = (jnp.arange(seq) == position)[None, None, :, None]
        return Edits(residual_delta=jnp.where(at_layer & at_position, diff, 0.0))

    grid = jnp.meshgrid(jnp.arange(n_layers), jnp.arange(seq), indexing="ij")
    indices = (grid[0].reshape(-1), grid[1].reshape(-1))
    return _result(params, cfg, tokens, step_mask, answer_mask, make_edits, indices, (n_layers, seq),
                   batch_size)


HEAD_PATCHES = ("output", "pattern")


@functools.partial(jax.jit, static_argnames=("cfg", "patch", "batch_size"))
def head_patching(params, cfg: SageConfig, tokens: Array, step_mask: Array, answer_mask: Optional[Array] = None,
                  *, source_tokens: Optional[Array] = None, patch: str = "output",
                  batch_size: Optional[int] = None) -> PatchingResult:
    """Layer x head sweep: zero-ablate each head, or patch in its output or attention pattern from a source run.

    Args:
      params, cfg: the model.
      tokens: `[T]` the run to edit.
      step_mask: `[n_steps, T]` bool; answer_mask: `[T]` bool.
      source_tokens: `[T]`; when `None`, head `(l, h)` is zero-ablated (`head_mask` 0).
      patch: with `source_tokens`, what of head `(l, h)` comes from the source run: `"output"`, its
        contribution to the residual stream at every position (`head_mask` 0 plus `head_delta`, exact at
        every layer), or `"pattern"`, its attention probabilities (`attn_where`/`attn_value`; the values
        stay this run's).
      batch_size: chunk size of the `L * H` edited runs.

    Returns:
      `PatchingResult` with effects `[L, H, n_steps]` and `[L, H]`.
    """
    _check_inputs(tokens, step_mask, source_tokens)
    if patch not in HEAD_PATCHES:
        raise ValueError(f"head_patching: patch={patch!r}; choose from {HEAD_PATCHES}")
    n_layers, n_heads, seq = cfg.n_layers, cfg.n_heads, tokens.shape[0]
    if source_tokens is not None:
        field = "head_out" if patch == "output" else "attn"
        source = getattr(forward(params, source_tokens[None], cfg, record=(field,)).trace, field)

    def make_edits(index):
        layer, head = index
        selected = (jnp.arange(n_layers) == layer)[:, None] & (jnp.arange(n_heads) == head)[None, :]  # [L, H]
        if source_tokens is None:
            return Edits(head_mask=jnp.where(selected, 0.0, 1.0)[:, None, :])
        if patch == "output":  # source [L, 1, T, H, D]
            return replace_heads(cfg, selected, source)
        where = jnp.broadcast_to(selected[:, None, :, None, None], (n_layers, 1, n_heads, seq, seq))
        return Edits(attn_where=where, attn_value=source)  # source [L, 1, H, T, T]

    grid = jnp.meshgrid(jnp.arange(n_layers), jnp.arange(n_heads), indexing="ij")
    indices = (grid[0].reshape(-1), grid[1].reshape(-1))
    return _result(params, cfg, tokens, step_mask, answer_mask, make_edits, indices, (n_layers, n_heads),
                   batch_size)


def _result(params, cfg, tokens, step_mask, answer_mask, make_edits, indices, grid_shape, batch_size):
    baseline = baseline_log_probs(params, cfg, tokens, step_mask, answer_mask)
    patched = sweep(params, cfg, tokens, make_edits, indices, log_prob_metric(tokens, step_mask, answer_mask),
                    batch_size=batch_size)
    effect = jax.tree_util.tree_map(lambda p, b: (p - b).reshape(grid_shape + b.shape), patched, baseline)
    return PatchingResult(effect, baseline)


def _check_inputs(tokens: Array, step_mask: Array, source_tokens: Optional[Array] = None) -> None:
    tokens, step_mask = jnp.asarray(tokens), jnp.asarray(step_mask)
    if tokens.ndim != 1:
        raise ValueError(f"tokens has shape {tokens.shape}; expected one sequence [T] (vmap over problems)")
    if source_tokens is not None and jnp.shape(source_tokens) != tokens.shape:
        raise ValueError(f"source_tokens has shape {jnp.shape(source_tokens)}; expected {tokens.shape} like tokens")
    if step_mask.ndim != 2 or step_mask.shape[1] != tokens.shape[0]:
        raise ValueError(f"step_mask has shape {step_mask.shape}; expected [n_steps, {tokens.shape[0]}]")
