"""Pytree paths as readable strings, the names that partition rules and weight-decay masks match.

`path_str` joins the keys of a `jax.tree_util` key path with `/`: the parameter
`params['layers']['attn']['q']['kernel']` of a `TrainState` is `"params/layers/attn/q/kernel"`, and its Adam
first moment is `"opt_state/1/0/mu/layers/attn/q/kernel"`, so one rule anchored at the end (`q/kernel$`)
covers a parameter and every optimizer slot shaped like it.
"""

from __future__ import annotations

from typing import Sequence

from jax import tree_util


def path_str(path: Sequence) -> str:
    """`/`-joined names of the keys in a key path (dict keys, attribute names, sequence indices)."""
    parts = []
    for key in path:
        if isinstance(key, tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts)
