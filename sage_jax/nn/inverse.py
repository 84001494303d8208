"""The Inverse Analysis Layer (IAL): the amortised analyser of a forward pass.

A small transformer, bidirectional over the whole chain, reads per-token features of a forward pass that
need no gradient (the final hidden state and reductions of the tracked attention and value contributions)
and predicts, in one pass:

(a) the significance map `[n_steps, T]` in [0, 1]: each step's query (the mean of its tokens' IAL states)
    attends over the token states; the score adds a learned read-out of the step's direct attention and
    value contributions to each token, and a sigmoid maps it to [0, 1]; tokens no token of the step can see
    (after its last token) score 0;
(b) a reconstruction of the forward next-token distribution as logits `[T, V]`.

The exact path (`Sig = w * ||dL/dh|| * H`) is its teacher and its check (consistency); training comes with
the training code. Features (`inverse_features`) are computed under `stop_gradient`, so no gradient reaches
the forward model through the IAL.

Width. The IAL must stay small beside the forward model (the 4B preset's forward model has 3.99e9
parameters and the total must stay within 3% of 4.0e9), so its width is derived from the forward model's:
`InverseConfig.from_sage` takes `d_model // 4` (at least 32), heads of width 64 (at least 2 heads), an MLP
of 4x the width and `cfg.n_inverse_layers` layers. Until `SageConfig` grows the fields, `InverseConfig` is
where they live; override any of them with `InverseConfig.from_sage(cfg, d_model=...)`.

Shapes: `B` batch, `T` tokens, `n` steps, `L` forward layers, `H` forward heads, `F` token features
(`D + 3 * L * H`), `P` pair features (`2 * L * H`), `W` IAL width, `V` vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.trace import Trace

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class InverseConfig:
    """Static shape of the Inverse Analysis Layer.

    Attributes:
      d_model: IAL width `W`.
      n_layers: number of bidirectional encoder layers (the paper's 6).
      n_heads: attention heads per layer; must divide `d_model`.
      d_ff: hidden width of each layer's MLP.
      vocab_size: size of the reconstructed next-token distribution (the forward model's vocabulary).
      n_token_features: `F`, width of the per-token features.
      n_pair_features: `P`, width of the per-(step, token) features.
      dtype: compute dtype.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    vocab_size: int
    n_token_features: int
    n_pair_features: int
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "n_token_features",
                     "n_pair_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"InverseConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"InverseConfig.n_heads={self.n_heads} must divide d_model={self.d_model}")

    @classmethod
    def from_sage(cls, cfg: SageConfig, **overrides) -> "InverseConfig":
        """The IAL shape derived from a forward model's config (see the module docstring)."""
        width = overrides.pop("d_model", max(32, cfg.d_model // 4))
        lh = cfg.n_layers * cfg.n_heads
        defaults = dict(d_model=width, n_layers=cfg.n_inverse_layers, n_heads=max(2, width // 64),
                        d_ff=4 * width, vocab_size=cfg.vocab_size, n_token_features=cfg.d_model + 3 * lh,
                        n_pair_features=2 * lh, dtype=cfg.dtype)
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ValueError(f"InverseConfig has no field(s) {sorted(unknown)}")
        return cls(**{**defaults, **overrides})


class InverseFeatures(NamedTuple):
    """What the IAL reads.

    Attributes:
      tokens: `[B, T, F]` per token: final hidden state `[D]`; per forward layer and head, the mean
        attention the token receives from the queries that can see it, the mean value contribution it makes
        (`log1p`), and the entropy of its own attention row.
      pairs: `[B, n, T, P]` per step and token: per forward layer and head, the mean attention and the mean
        value contribution (`log1p`) from the step's tokens to the token.
      step_mask: `[B, n, T]` bool, the tokens of each step.
      visible: `[B, n, T]` bool, the tokens some token of the step can see (at or before its last token).
    """

    tokens: Array
    pairs: Array
    step_mask: Array
    visible: Array


def inverse_features(hidden: Array, trace: Trace, step_mask: Array) -> InverseFeatures:
    """Builds the IAL's inputs from a forward pass, without gradients.

    Args:
      hidden: `[B, T, D]` final hidden state (`ForwardOutput.hidden`).
      trace: a `Trace` with `attn` and `value_norms` `[L, B, H, T, T]` recorded.
      step_mask: `[B, n, T]` bool, the tokens of each step.

    Returns:
      `InverseFeatures`, all under `stop_gradient`.
    """
    if trace.attn is None or trace.value_norms is None:
        raise ValueError("inverse_features needs trace.attn and trace.value_norms; "
                         "record them with record=('attn', 'value_norms')")
    hidden, attn, vnorm = jax.lax.stop_gradient((hidden, trace.attn, trace.value_norms))
    n_layers, batch, n_heads, seq, _ = attn.shape
    if step_mask.shape[0] != batch or step_mask.shape[-1] != seq:
        raise ValueError(f"step_mask has shape {step_mask.shape}; expected [{batch}, n_steps, {seq}]")
    attn = attn.astype(jnp.float32)
    vnorm = jnp.log1p(vnorm.astype(jnp.float32))
    n_queries = (seq - jnp.arange(seq)).astype(jnp.float32)  # queries at or after each key
    received = attn.sum(axis=3) / n_queries  # [L, B, H, S]
    contributed = vnorm.sum(axis=3) / n_queries
    entropy = -(attn * jnp.log(jnp.where(attn > 0, attn, 1.0))).sum(axis=-1)  # [L, B, H, T]
    per_head = jnp.stack([received, contributed, entropy], axis=0)  # [3, L, B, H, T]
    per_head = per_head.transpose(2, 4, 0, 1, 3).reshape(batch, seq, 3 * n_layers * n_heads)
    token_features = jnp.concatenate([hidden.astype(jnp.float32), per_head], axis=-1)

    step_mask = jnp.asarray(step_mask, bool)
    weights = step_mask / jnp.maximum(step_mask.sum(-1, keepdims=True), 1)  # [B, n, T]
    pair = jnp.stack([jnp.einsum("bnt,lbhts->bnslh", weights, attn),
                      jnp.einsum("bnt,lbhts->bnslh", weights, vnorm)], axis=-1)  # [B, n, S, L, H, 2]
    pair = pair.reshape(pair.shape[:3] + (-1,))
    positions = jnp.arange(seq)
    last = jnp.max(jnp.where(step_mask, positions, -1), axis=-1)  # [B, n]
    visible = positions <= last[..., None]
    return InverseFeatures(token_features, pair, step_mask, visible)


class InverseOutput(NamedTuple):
    """significance `[B, n, T]` in [0, 1]; logits `[B, T, V]` reconstructing the forward distribution."""

    significance: Array
    logits: Array


class EncoderLayer(nn.Module):
    """Pre-norm bidirectional self-attention and GELU MLP over `[B, T, W]`."""

    icfg: InverseConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        icfg = self.icfg
        attend = nn.MultiHeadDotProductAttention(num_heads=icfg.n_heads, dtype=icfg.dtype, name="attn")
        x = x + attend(nn.LayerNorm(dtype=icfg.dtype, name="attn_norm")(x))
        h = nn.LayerNorm(dtype=icfg.dtype, name="mlp_norm")(x)
        h = nn.Dense(icfg.d_ff, dtype=icfg.dtype, name="mlp_in")(h)
        return x + nn.Dense(icfg.d_model, dtype=icfg.dtype, name="mlp_out")(nn.gelu(h))


class InverseAnalysisLayer(nn.Module):
    """The IAL: `InverseFeatures` -> `InverseOutput` (module docstring)."""

    icfg: InverseConfig

    @nn.compact
    def __call__(self, features: InverseFeatures) -> InverseOutput:
        icfg = self.icfg
        _check_features(features, icfg)
        seq = features.tokens.shape[1]
        x = nn.Dense(icfg.d_model, dtype=icfg.dtype, name="embed")(
            nn.LayerNorm(dtype=icfg.dtype, name="feature_norm")(features.tokens))
        x = x + sinusoid(seq, icfg.d_model).astype(x.dtype)
        for i in range(icfg.n_layers):
            x = EncoderLayer(icfg, name=f"layer_{i}")(x)
        x = nn.LayerNorm(dtype=icfg.dtype, name="final_norm")(x)  # [B, T, W]
        logits = nn.Dense(icfg.vocab_size, dtype=icfg.dtype, name="reconstruct")(x).astype(jnp.float32)

        weights = features.step_mask / jnp.maximum(features.step_mask.sum(-1, keepdims=True), 1)
        steps = jnp.einsum("bnt,btw->bnw", weights.astype(x.dtype), x)
        query = nn.Dense(icfg.d_model, dtype=icfg.dtype, name="step_query")(steps)
        key = nn.Dense(icfg.d_model, dtype=icfg.dtype, name="token_key")(x)
        score = jnp.einsum("bnw,btw->bnt", query, key) * icfg.d_model ** -0.5
        score = score + nn.Dense(1, dtype=icfg.dtype, name="pair_readout")(features.pairs)[..., 0]
        significance = jnp.where(features.visible, jax.nn.sigmoid(score.astype(jnp.float32)), 0.0)
        return InverseOutput(significance, logits)


def sinusoid(seq: int, width: int) -> Array:
    """`[T, W]` fixed sinusoidal position encodings (no parameters, any length)."""
    positions = np.arange(seq)[:, None]
    rates = 1.0 / (10_000.0 ** (np.arange(0, width, 2) / width))
    table = np.zeros((seq, width), np.float32)
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates[: width // 2])
    return jnp.asarray(table)


def init_inverse_params(cfg: SageConfig, key: Array, icfg: Optional[InverseConfig] = None) -> dict:
    """Fresh IAL parameters for the forward model `cfg` (shape from `InverseConfig.from_sage` by default)."""
    icfg = InverseConfig.from_sage(cfg) if icfg is None else icfg
    return jax.jit(lambda k: InverseAnalysisLayer(icfg).init(k, _dummy_features(icfg))["params"])(key)


def inverse_param_count(cfg: SageConfig, icfg: Optional[InverseConfig] = None) -> int:
    """Number of IAL parameters, counted with `jax.eval_shape` (nothing is allocated)."""
    icfg = InverseConfig.from_sage(cfg) if icfg is None else icfg
    shapes = jax.eval_shape(lambda k: InverseAnalysisLayer(icfg).init(k, _dummy_features(icfg))["params"],
                            jax.random.key(0))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


def _dummy_features(icfg: InverseConfig) -> InverseFeatures:
    return InverseFeatures(jnp.zeros((1, 1, icfg.n_token_features)), jnp.zeros((1, 1, 1, icfg.n_pair_features)),
                           jnp.ones((1, 1, 1), bool), jnp.ones((1, 1, 1), bool))


def _check_features(features: InverseFeatures, icfg: InverseConfig) -> None:
    batch, seq, width = features.tokens.shape
    if width != icfg.n_token_features:
        raise ValueError(f"InverseFeatures.tokens has {width} features; InverseConfig.n_token_features is "
                         f"{icfg.n_token_features} (was the IAL built for another forward model?)")
    n_steps = features.step_mask.shape[1]
    want = {"pairs": (batch, n_steps, seq, icfg.n_pair_features), "step_mask": (batch, n_steps, seq),
            "visible": (batch, n_steps, seq)}
    for name, shape in want.items():
        got = tuple(getattr(features, name).shape)
        if got != shape:
            raise ValueError(f"InverseFeatures.{name} has shape {got}; expected {shape}")
