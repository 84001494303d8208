"""Multiscale attention masks: each head group attends only inside its span (the meta heads also to
step-boundary tokens)."""

from __future__ import annotations

import numpy as np

import sage_jax as sj


def test_each_head_group_attends_only_inside_its_span(cfg, params, tokens):
    attn = np.asarray(sj.forward(params, tokens, cfg, record="attn").trace.attn)  # [L, B, H, T, T]
    _, b, h, t, _ = attn.shape
    q, k = np.arange(t)[:, None], np.arange(t)[None, :]
    for head in range(h):
        group = cfg.head_groups[head]
        span = cfg.group_spans[group]
        for row in range(b):
            boundary = np.isin(np.asarray(tokens[row]), cfg.boundary_token_ids)[None, :]
            inside = (k <= q) if span is None else (k <= q) & (q - k < span)
            if group == 2:
                inside = inside | ((k <= q) & boundary)
            np.testing.assert_array_equal(attn[:, row, head][:, ~inside], 0.0)
            assert (attn[:, row, head][:, inside] > 0).all()
    # The meta heads' boundary exception is live: row 0 has a boundary at 2, out of span for query 10.
    meta = cfg.n_heads - 1
    assert (attn[:, 0, meta, 10, 2] > 0).all() and (attn[:, 0, meta, 10, 3] == 0).all()
