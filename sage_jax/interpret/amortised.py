"""The amortised analysis path: one forward pass with tracking, then the Inverse Analysis Layer.

`analyse` runs the forward model once, recording attention and value contributions, and lets the IAL
(`sage_jax.nn.inverse`) predict the significance map and reconstruct the next-token distribution from
those features, with no backward pass. The exact path (Eq. 7) is its teacher and its check:
`sage_jax.interpret.consistency` compares the two.

`analyse` takes one sequence `tokens [T]` with `step_mask [n_steps, T]`; `analyse_batch` vmaps it over
problems (`[B, T]`, `[B, n_steps, T]`; pad the step axis with all-False rows to batch different counts).
`analyse_recorded` runs the IAL alone on features already recorded, e.g. by the generation that wrote the
chain (`generate(..., record=("attn", "value_norms"), return_hidden=True)`), which saves the forward pass:
the paper's inference-time overhead is tracked generation plus this.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.model import forward
from sage_jax.nn.inverse import InverseAnalysisLayer, InverseConfig, InverseOutput, inverse_features
from sage_jax.trace import Trace

Array = jax.Array


class AmortisedAnalysis(NamedTuple):
    """significance `[n_steps, T]` in [0, 1]; logits `[T, V]` the IAL's reconstruction of the forward
    next-token distribution; forward_logits `[T, V]` the forward model's own (for consistency)."""

    significance: Array
    logits: Array
    forward_logits: Array


@functools.partial(jax.jit, static_argnames=("cfg", "icfg"))
def analyse(params, inverse_params, cfg: SageConfig, tokens: Array, step_mask: Array, *,
            icfg: Optional[InverseConfig] = None) -> AmortisedAnalysis:
    """Amortised significance and reconstruction for one sequence.

    Args:
      params: forward-model parameters.
      inverse_params: IAL parameters (`sage_jax.nn.inverse.init_inverse_params` or trained).
      cfg: the forward model's config.
      tokens: `[T]` token ids.
      step_mask: `[n_steps, T]` bool, the tokens of each step.
      icfg: the IAL's shape; by default `InverseConfig.from_sage(cfg)`.

    Returns:
      `AmortisedAnalysis`; no gradient reaches `params` through it.
    """
    tokens, step_mask = jnp.asarray(tokens), jnp.asarray(step_mask, bool)
    if tokens.ndim != 1:
        raise ValueError(f"tokens has shape {tokens.shape}; expected one sequence [T] (analyse_batch for [B, T])")
    if step_mask.ndim != 2 or step_mask.shape[1] != tokens.shape[0]:
        raise ValueError(f"step_mask has shape {step_mask.shape}; expected [n_steps, {tokens.shape[0]}]")
    out = forward(params, tokens[None], cfg, record=("attn", "value_norms"))
    result = analyse_recorded(inverse_params, cfg, out.hidden, out.trace, step_mask[None], icfg=icfg)
    return AmortisedAnalysis(result.significance[0], result.logits[0], out.logits[0])


@functools.partial(jax.jit, static_argnames=("cfg", "icfg"))
def analyse_recorded(inverse_params, cfg: SageConfig, hidden: Array, trace: Trace, step_mask: Array, *,
                     icfg: Optional[InverseConfig] = None) -> InverseOutput:
    """The IAL on what a forward pass (or a generation) already recorded.

    Args:
      inverse_params: IAL parameters.
      cfg: the forward model's config.
      hidden: `[B, T, D]` final hidden states (`ForwardOutput.hidden`, `GenerateOutput.hidden`).
      trace: a `Trace` with `attn` and `value_norms` `[L, B, H, T, T]`.
      step_mask: `[B, n_steps, T]` bool, the tokens of each step.
      icfg: the IAL's shape; by default `InverseConfig.from_sage(cfg)`.

    Returns:
      `InverseOutput` (`significance [B, n_steps, T]`, `logits [B, T, V]`).
    """
    icfg = InverseConfig.from_sage(cfg) if icfg is None else icfg
    features = inverse_features(hidden, trace, jnp.asarray(step_mask, bool))
    return InverseAnalysisLayer(icfg).apply({"params": inverse_params}, features)


def analyse_batch(params, inverse_params, cfg: SageConfig, tokens: Array, step_mask: Array, *,
                  icfg: Optional[InverseConfig] = None) -> AmortisedAnalysis:
    """`analyse` vmapped over problems: `tokens [B, T]`, `step_mask [B, n_steps, T]`; outputs gain `[B]`."""
    one = functools.partial(analyse, cfg=cfg, icfg=icfg)
    return jax.vmap(lambda t, s: one(params, inverse_params, tokens=t, step_mask=s))(
        jnp.asarray(tokens), jnp.asarray(step_mask, bool))
