"""Which keys each head may see: causality, padding, and the per-group spans of multiscale attention.

Slots are indices into the key buffer (the sequence itself in a plain forward, the KV cache while
decoding) and decide causality; positions are the rotary positions (they differ from slots under left
padding) and decide spans, so a padded row sees exactly what the unpadded row would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig


def attention_mask(cfg: SageConfig, q_slot: jax.Array, k_slot: jax.Array, q_pos: jax.Array, k_pos: jax.Array,
                   k_valid: jax.Array, k_boundary: jax.Array) -> jax.Array:
    """The keys each head may attend to.

    Args:
      cfg: the model config (head groups and spans).
      q_slot: `[T]` key-buffer slot of each query.
      k_slot: `[S]` slot of each key.
      q_pos: `[B, T]` position of each query.
      k_pos: `[B, S]` position of each key.
      k_valid: `[B, S]` keys that hold real tokens (not padding, not yet written).
      k_boundary: `[B, S]` keys that are step-boundary tokens (meta heads see them at any distance).

    Returns:
      `[B, H, T, S]` boolean mask. A query always sees its own slot, so no row is empty.
    """
    causal = k_slot[None, :] <= q_slot[:, None]  # [T, S]
    own = k_slot[None, :] == q_slot[:, None]
    visible = causal[None] & (k_valid[:, None, :] | own[None])  # [B, T, S]
    distance = q_pos[:, :, None] - k_pos[:, None, :]  # [B, T, S]
    groups = []
    counts = (cfg.n_reasoning_heads, cfg.n_memory_heads, cfg.n_meta_heads)
    for group, (span, count) in enumerate(zip(cfg.group_spans, counts)):
        if not count:
            continue
        allowed = visible if span is None else visible & (distance < span)
        if group == 2:
            allowed = allowed | (visible & k_boundary[:, None, :])
        # Heads are ordered by group, so each group's rows are one broadcast block (no gather).
        groups.append(jnp.broadcast_to(allowed[:, None], (allowed.shape[0], count) + allowed.shape[1:]))
    return jnp.concatenate(groups, axis=1)


def boundary_flags(cfg: SageConfig, tokens: jax.Array) -> jax.Array:
    """`[B, T]` True where a token is one of `cfg.boundary_token_ids`."""
    flags = jnp.zeros(tokens.shape, bool)
    for token in cfg.boundary_token_ids:
        flags = flags | (tokens == token)
    return flags
