"""The logit lens: the residual stream at every depth read out as if the model stopped there.

Depth `l` of the lens is the stream entering block `l` (`Trace.residual[l]`; depth 0 is the token embedding) and
depth `L` the stream leaving the last block (`Trace.resid_post[-1]`), each decoded through the model's own final
RMSNorm and unembedding. Depth `L` is therefore `forward`'s logits, the same computation in the same dtypes; the
earlier depths show when the prediction forms. The readouts (`lens_log_probs`, `lens_ranks`, `lens_kl`) reduce
`[L + 1, B, T, V]` lens logits to `[L + 1, B, T]` curves over depth, which is what one plots.

Shapes: `L` layers, `B` batch, `T` query positions (those the trace recorded), `D` model width, `V` vocabulary.
Every function is pure and jit-able with `cfg` static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.model import Params, unembed
from sage_jax.quant import as_array
from sage_jax.trace import Trace

Array = jax.Array


def final_norm_factors(params: Params, cfg: SageConfig, stream: Array) -> tuple[Array, Array]:
    """The two factors of the final RMSNorm of `stream [..., D]`, in `cfg.accum_dtype`: `[..., 1]`
    `1 / sqrt(mean(stream^2) + eps)` and the `[D]` scale. Apart, because direct logit attribution freezes the
    first at the full stream's value to make the norm linear."""
    acc = cfg.accum_dtype
    x = stream.astype(acc)
    inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + cfg.norm_eps)
    return inv_rms, as_array(params["final_norm"]["scale"], acc)


def final_norm(params: Params, cfg: SageConfig, stream: Array) -> Array:
    """`[..., D]` the final RMSNorm of `stream [..., D]`, as `SageLM` applies it: in `cfg.accum_dtype`, returned in
    `cfg.compute_dtype` (what the unembedding reads)."""
    inv_rms, scale = final_norm_factors(params, cfg, stream)
    return (stream.astype(cfg.accum_dtype) * inv_rms * scale).astype(cfg.compute_dtype)


def lens_streams(cfg: SageConfig, trace: Trace) -> Array:
    """`[L + 1, B, T, D]` the residual stream at every depth: `residual[0..L-1]`, then `resid_post[-1]`.

    Raises:
      ValueError: `residual` or `resid_post` was not recorded, or only some layers were (`Record.layers`).
    """
    missing = [name for name in ("residual", "resid_post") if getattr(trace, name) is None]
    if missing:
        raise ValueError(f"the logit lens needs Trace.{' and Trace.'.join(missing)}: run forward with "
                         "record=(\"residual\", \"resid_post\") (or record=\"all\")")
    for name in ("residual", "resid_post"):
        layers = getattr(trace, name).shape[0]
        if layers != cfg.n_layers:
            raise ValueError(f"the logit lens needs Trace.{name} of all {cfg.n_layers} layers of {cfg.name!r}, got "
                             f"{layers}: record without Record.layers")
    return jnp.concatenate([trace.residual, trace.resid_post[-1:]], axis=0)


def logit_lens(params: Params, cfg: SageConfig, trace: Trace) -> Array:
    """`[L + 1, B, T, V]` logits of the stream at every depth, through the final norm and unembedding.

    The last entry is `forward`'s logits (the stream the final norm reads, decoded the same way). The embedding
    (depth 0) decoded by a tied unembedding mostly predicts the input token itself: that is the lens's known
    bias at shallow depths, not a bug.

    Args:
      params: the model's parameters (float or quantized).
      cfg: its config (static under `jit`).
      trace: a `Trace` with `residual` and `resid_post` of all layers (`record=("residual", "resid_post")`).
    """
    return unembed(params, cfg, final_norm(params, cfg, lens_streams(cfg, trace)))


def lens_log_probs(lens_logits: Array, targets: Array) -> Array:
    """`[L + 1, B, T]` log-probability of `targets` at every depth.

    Args:
      lens_logits: `[L + 1, B, T, V]` from `logit_lens`.
      targets: `[B, T]` token ids in `[0, V)` (e.g. each position's next token), broadcast over depth.
    """
    logp = jax.nn.log_softmax(lens_logits.astype(jnp.promote_types(lens_logits.dtype, jnp.float32)), axis=-1)
    return _pick(logp, targets)


def lens_ranks(lens_logits: Array, targets: Array) -> Array:
    """`[L + 1, B, T]` int32 rank of `targets` at every depth: the number of tokens with a strictly larger logit
    (0: the target is the lens's top prediction, ties counted in its favour).

    Args:
      lens_logits: `[L + 1, B, T, V]` from `logit_lens`.
      targets: `[B, T]` token ids in `[0, V)`, broadcast over depth.
    """
    picked = _pick(lens_logits, targets)
    return jnp.sum(lens_logits > picked[..., None], axis=-1, dtype=jnp.int32)


def lens_kl(lens_logits: Array) -> Array:
    """`[L + 1, B, T]` `KL(final || depth l)` in nats: how far each depth's prediction is from the model's (0 at
    the last depth). The target-free readout: it says at which depth the prediction is settled.

    Args:
      lens_logits: `[L + 1, B, T, V]` from `logit_lens`.
    """
    logp = jax.nn.log_softmax(lens_logits.astype(jnp.promote_types(lens_logits.dtype, jnp.float32)), axis=-1)
    final = logp[-1]
    return jnp.sum(jnp.exp(final) * (final - logp), axis=-1)


def _pick(values: Array, targets: Array) -> Array:
    """`values [..., B, T, V]` at `targets [B, T]` (broadcast over the leading axes): `[..., B, T]`."""
    if tuple(targets.shape) != tuple(values.shape[-3:-1]):
        raise ValueError(f"targets has shape {tuple(targets.shape)}; expected [batch, positions] = "
                         f"{tuple(values.shape[-3:-1])} to match the lens logits {tuple(values.shape)}")
    index = jnp.broadcast_to(jnp.asarray(targets, jnp.int32), values.shape[:-1])[..., None]
    return jnp.take_along_axis(values, index, axis=-1)[..., 0]
