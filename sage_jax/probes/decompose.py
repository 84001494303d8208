"""The residual stream as a sum of its writers, and each writer's direct contribution to a logit.

The stream the final norm reads is `embedding + sum over layers of (sum over heads of head_out + mlp_out)`: the
embedding (with any `Edits.residual_delta` of layer 0, which `Trace.residual[0]` includes), every head's output
(`Trace.head_out`, which includes `Edits.head_delta`, and sums to the block's attention output) and every FFN's
output (`Trace.mlp_out`, reasoning gate included). `residual_decomposition` returns these terms; their sum is
`Trace.resid_post[-1]` for any edit of the heads, attention or FFN internals. Edits that add to the stream between
writers (`residual_delta` at a layer above 0, an `Edit` of `attn_out`, `resid_mid` or `resid_post`) belong to no
writer: under them the terms no longer sum to the stream.

Direct logit attribution (DLA) pushes each term through the final RMSNorm and the unembedding with the norm's
`1 / rms` frozen at the full stream's value, which makes the map linear: term `c` contributes
`c / rms(stream) * scale . W_U[:, target]` to the target's logit, and the contributions sum to the logit (up to
float rounding). It measures what a component writes directly into the output, not what it causes through later
layers (that is patching's question). Researchers usually attribute a logit difference (the target minus a
contrast token), which cancels the part of the stream that raises every logit alike: pass `contrast`.

Shapes: `L` layers, `B` batch, `T` query positions (those the trace recorded), `H` heads, `D` model width,
`V` vocabulary. Every function is pure and jit-able with `cfg` static.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.model import Params
from sage_jax.probes.lens import final_norm_factors
from sage_jax.quant import as_array, embed_rows
from sage_jax.trace import Trace

Array = jax.Array


class Components(NamedTuple):
    """The writers of the residual stream, in the trace's dtype.

    Attributes:
      embed: `[B, T, D]` the token embedding (`Trace.residual[0]`).
      heads: `[L, B, T, H, D]` each head's output (`Trace.head_out`).
      mlps: `[L, B, T, D]` each FFN's output (`Trace.mlp_out`).
    """

    embed: Array
    heads: Array
    mlps: Array

    def total(self) -> Array:
        """`[B, T, D]` the sum of every term, in float32 at least: the stream the final norm reads."""
        dtype = jnp.promote_types(self.embed.dtype, jnp.float32)
        return (self.embed.astype(dtype) + jnp.sum(self.heads.astype(dtype), axis=(0, 3))
                + jnp.sum(self.mlps.astype(dtype), axis=0))


class DLA(NamedTuple):
    """Direct logit attribution: each writer's contribution to the attributed logit (or logit difference) at each
    position, in `cfg.accum_dtype`.

    Attributes:
      embed: `[B, T]` the embedding's.
      heads: `[L, B, T, H]` each head's.
      mlps: `[L, B, T]` each FFN's.
    """

    embed: Array
    heads: Array
    mlps: Array

    def total(self) -> Array:
        """`[B, T]` the sum of every contribution: the attributed logit (or difference), up to float rounding."""
        return self.embed + jnp.sum(self.heads, axis=(0, 3)) + jnp.sum(self.mlps, axis=0)


def residual_decomposition(trace: Trace) -> Components:
    """The terms whose sum is the final residual stream `Trace.resid_post[-1]` (see the module docstring for the
    edits under which this holds).

    Args:
      trace: a `Trace` with `residual`, `head_out` and `mlp_out` of all layers
        (`record=("residual", "head_out", "mlp_out")`); with `Record.positions` or `reduce`, the terms are those
        of the recorded rows.

    Raises:
      ValueError: a field is missing, or the fields disagree in shape (e.g. recorded with different records).
    """
    needed = ("residual", "head_out", "mlp_out")
    missing = [name for name in needed if getattr(trace, name) is None]
    if missing:
        raise ValueError(f"residual_decomposition needs Trace.{' and Trace.'.join(missing)}: run forward with "
                         f"record={needed} (or record=\"all\")")
    residual, heads, mlps = trace.residual, trace.head_out, trace.mlp_out
    if not (residual.shape == mlps.shape and heads.shape[:3] + heads.shape[4:] == residual.shape):
        raise ValueError(f"Trace.residual {residual.shape}, Trace.head_out {heads.shape} and Trace.mlp_out "
                         f"{mlps.shape} do not describe one forward ([L, B, T, D], [L, B, T, H, D], [L, B, T, D])")
    return Components(embed=residual[0], heads=heads, mlps=mlps)


def direct_logit_attribution(params: Params, cfg: SageConfig, trace: Trace, targets: Array,
                             contrast: Optional[Array] = None) -> DLA:
    """Each writer's direct contribution to the logit of `targets` (minus that of `contrast`) at each position.

    The norm's `1 / rms` is that of `Trace.resid_post[-1]` when it was recorded (the stream the final norm read),
    else of the writers' sum (the same stream, unless an edit added to it between writers).

    Args:
      params: the model's parameters (float or quantized).
      cfg: its config (static under `jit`).
      trace: a `Trace` with `residual`, `head_out` and `mlp_out` of all layers (`resid_post` optional).
      targets: `[B, T]` the token whose logit is attributed at each position (e.g. the next tokens).
      contrast: `[B, T]` optional token whose logit is subtracted: the contributions then sum to
        `logit_difference(logits, targets, contrast)`.

    Raises:
      ValueError: a trace field is missing or recorded for only some layers, or `targets`/`contrast` do not
        match the trace's `[B, T]`.
    """
    parts = residual_decomposition(trace)
    if parts.mlps.shape[0] != cfg.n_layers:
        raise ValueError(f"direct_logit_attribution needs the trace of all {cfg.n_layers} layers of {cfg.name!r}, "
                         f"got {parts.mlps.shape[0]}: record without Record.layers")
    rows = tuple(parts.embed.shape[:2])
    for name, ids in (("targets", targets), ("contrast", contrast)):
        if ids is not None and tuple(jnp.shape(ids)) != rows:
            raise ValueError(f"{name} has shape {tuple(jnp.shape(ids))}; expected [batch, positions] = {rows} to "
                             "match the trace")
    stream = parts.total() if trace.resid_post is None else trace.resid_post[-1]
    inv_rms, scale = final_norm_factors(params, cfg, stream)
    direction = unembedding_columns(params, cfg, targets)
    if contrast is not None:
        direction = direction - unembedding_columns(params, cfg, contrast)
    weight = inv_rms * scale * direction  # [B, T, D]: the linear map from a stream term to the attributed logit
    acc = cfg.accum_dtype
    return DLA(embed=jnp.einsum("btd,btd->bt", parts.embed.astype(acc), weight),
               heads=jnp.einsum("lbthd,btd->lbth", parts.heads.astype(acc), weight),
               mlps=jnp.einsum("lbtd,btd->lbt", parts.mlps.astype(acc), weight))


def logit_difference(logits: Array, targets: Array, contrast: Optional[Array] = None) -> Array:
    """`[..., B, T]` the logit of `targets` minus that of `contrast` (or the logit alone): the quantity that
    `direct_logit_attribution` splits, read off real logits.

    Args:
      logits: `[..., B, T, V]` logits (`forward`'s, or a `logit_lens` stack).
      targets, contrast: `[B, T]` token ids, broadcast over the leading axes.
    """
    def pick(ids):
        index = jnp.broadcast_to(jnp.asarray(ids, jnp.int32), logits.shape[:-1])[..., None]
        return jnp.take_along_axis(logits, index, axis=-1)[..., 0]

    return pick(targets) if contrast is None else pick(targets) - pick(contrast)


def unembedding_columns(params: Params, cfg: SageConfig, ids: Array) -> Array:
    """`[..., D]` the unembedding's column of each id in `ids [...]`, in `cfg.accum_dtype`: the direction whose
    dot product with the final normed stream is that token's logit.

    Read from the weights where `sage_jax.model.unembed` reads them (the embedding when `cfg.tie_embeddings`,
    else `unembed/kernel`), by gathering, so only the needed rows of a quantized embedding are dequantised.
    Out-of-vocabulary ids read NaN.
    """
    if cfg.tie_embeddings:
        return embed_rows(params["embed"], ids, cfg.accum_dtype)
    kernel = as_array(params["unembed"]["kernel"], cfg.accum_dtype)  # [D, V]
    return jnp.take(kernel.T, ids, axis=0, mode="fill", fill_value=jnp.nan)
