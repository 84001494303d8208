"""Labels a reader can follow: tokens as text, heads by group, layers by number.

Token labels come from `sage_jax.layout.Layout.token_text` (special tokens by name, `<bos>`, `<step>`,
...; undecodable ids as `<id>`; control characters escaped), with one change for tick labels: a space is
shown as `␣`, so a label is never blank. Head groups follow `SageConfig.head_groups` (heads ordered
`[reasoning | memory | meta]`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from sage_jax.config import SageConfig
from sage_jax.layout import SAGE, Codec, Layout

GROUP_NAMES = ("reasoning", "memory", "meta")
SPACE = "\u2423"


def token_labels(tokens, tokenizer: Codec, layout: Layout = SAGE) -> list[str]:
    """`[T]` ids -> one label per token (special tokens by name, spaces as `␣`)."""
    ids = np.asarray(tokens)
    if ids.ndim != 1:
        raise ValueError(f"token_labels: tokens has shape {ids.shape}; expected one sequence [T]")
    return [layout.token_text(tokenizer, t).replace(" ", SPACE) for t in ids]


def display_labels(labels: Sequence[str]) -> list[str]:
    """Labels as given, with `$` escaped so that matplotlib never reads them as mathtext."""
    return [str(label).replace("$", r"\$") for label in labels]


def head_groups(cfg: SageConfig) -> list[tuple[str, tuple[int, ...], Optional[int]]]:
    """`(group name, head indices, span)` of every non-empty head group, in head order."""
    groups = []
    for g, (name, span) in enumerate(zip(GROUP_NAMES, cfg.group_spans)):
        heads = tuple(h for h, group in enumerate(cfg.head_groups) if group == g)
        if heads:
            groups.append((name, heads, span))
    return groups


def head_labels(cfg: SageConfig) -> list[str]:
    """One label per query head: its index and group, e.g. `h0 reasoning`."""
    return [f"h{h} {GROUP_NAMES[g]}" for h, g in enumerate(cfg.head_groups)]


def span_text(span: Optional[int]) -> str:
    return "full context" if span is None else f"span {span}"
