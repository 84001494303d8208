"""An independent numpy (float64) reference of the SAGE-nano forward pass, for parity tests.

Written from the math in DESIGN.md, not from the Flax modules: loops over heads, explicit masks.
"""

from __future__ import annotations

import numpy as np

from sage_jax.config import SageConfig


def _rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rope(x, pos, base):
    """x [T, d], pos [T]."""
    half = x.shape[-1] // 2
    inv = 1.0 / base ** (np.arange(half) / half)
    ang = pos[:, None] * inv[None]
    c, s = np.cos(ang), np.sin(ang)
    return np.concatenate([x[:, :half] * c - x[:, half:] * s, x[:, half:] * c + x[:, :half] * s], axis=-1)


def allowed(cfg: SageConfig, tokens, h):
    """[T, T] keys head h may see for one unpadded row."""
    t = len(tokens)
    group = cfg.head_groups[h]
    span = cfg.group_spans[group]
    q, k = np.arange(t)[:, None], np.arange(t)[None, :]
    ok = k <= q
    if span is not None:
        in_span = (q - k) < span
        if group == 2:
            in_span = in_span | np.isin(tokens, cfg.boundary_token_ids)[None, :]
        ok = ok & in_span
    return ok


def block(cfg: SageConfig, p, x, tokens, head_mask=None, acts=None):
    """One block on x [T, D] (one row); p is that layer's parameters as numpy float64. `acts`, a dict, receives the
    block's named activations (the `Trace` fields of one layer and row, without batch axis)."""
    t = x.shape[0]
    pos = np.arange(t, dtype=np.float64)
    h_in = _rms(x, p["attn_norm"]["scale"], cfg.norm_eps)
    g = cfg.n_heads // cfg.n_kv_heads
    attn_out = np.zeros_like(x)
    queries, scores, head_out = [], [], []
    keys = [_rope(h_in @ p["attn"]["k"]["kernel"][:, kv], pos, cfg.rope_base) for kv in range(cfg.n_kv_heads)]
    values = [h_in @ p["attn"]["v"]["kernel"][:, kv] for kv in range(cfg.n_kv_heads)]
    for h in range(cfg.n_heads):
        q = _rope(h_in @ p["attn"]["q"]["kernel"][:, h], pos, cfg.rope_base)
        k, v = keys[h // g], values[h // g]
        logits = q @ k.T / np.sqrt(cfg.head_dim)
        queries.append(q)
        scores.append(np.where(allowed(cfg, tokens, h), logits, 0.0))
        logits = np.where(allowed(cfg, tokens, h), logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        weight = 1.0 if head_mask is None else head_mask[h]
        head_out.append(weight * (probs @ v) @ p["attn"]["o"][h])
        attn_out += head_out[-1]
    mid = x + attn_out
    f_in = _rms(mid, p["ffn_norm"]["scale"], cfg.norm_eps)
    a = f_in @ p["ffn"]["wi_gate"]["kernel"]
    hidden = a / (1 + np.exp(-a)) * (f_in @ p["ffn"]["wi_up"]["kernel"])
    out = hidden @ p["ffn"]["wo"]["kernel"]
    if cfg.reasoning_gate:
        out = out / (1 + np.exp(-(f_in @ p["ffn"]["gate_w"] + p["ffn"]["gate_b"])))[:, None]
    if acts is not None:
        acts.update(residual=x, queries=np.stack(queries, 1), keys=np.stack(keys, 1), values=np.stack(values, 1),
                    scores=np.stack(scores), head_out=np.stack(head_out, 1), attn_out=attn_out, resid_mid=mid,
                    mlp_hidden=hidden, mlp_out=out, resid_post=mid + out)
    return mid + out


def forward(cfg: SageConfig, params, tokens, head_masks=None, activations=None):
    """Logits [T, V] for one unpadded row of token ids; head_masks {layer: [H] multipliers}; `activations`, a
    list, receives one dict of named activations per layer (see `block`)."""
    params = _to_numpy(params)
    x = params["embed"][np.asarray(tokens)]
    for layer in range(cfg.n_layers):
        p = _layer(params["layers"], layer)
        acts = None if activations is None else {}
        x = block(cfg, p, x, np.asarray(tokens), (head_masks or {}).get(layer), acts)
        if activations is not None:
            activations.append(acts)
    h = _rms(x, params["final_norm"]["scale"], cfg.norm_eps)
    if cfg.tie_embeddings:
        return h @ params["embed"].T
    return h @ params["unembed"]["kernel"]


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def _layer(tree, i):
    if isinstance(tree, dict):
        return {k: _layer(v, i) for k, v in tree.items()}
    return tree[i]
