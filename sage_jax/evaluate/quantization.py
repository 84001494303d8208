"""Does quantization change what the analysis says? The same true chains analysed by a model and by its quantized
copy (`sage_jax.quant`), map against map.

No interpretability library measures this, yet a user who analyses a 4-bit model on a laptop needs to know whether
the explanation is the full model's. Per attribution map (Eq. 7 as the paper writes it, explain's default):

- rank correlation and top-`k` overlap of the quantized map with the full one over each step's context
  candidates (`consistency.map_agreement`, the measures the amortised analysis is held to);
- decision points: the (step, source token) pairs above explain's threshold that change (one minus their
  Jaccard similarity, over all chains), and the share of steps whose branching position (the step token of
  highest entropy, Algorithm S1) moves, which depends on the logits alone.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.data.procedural import Example
from sage_jax.evaluate import truth
from sage_jax.evaluate.consistency import map_agreement, summarise_amortised
from sage_jax.interpret import counterfactual as cf
from sage_jax.interpret.decisions import branches
from sage_jax.interpret.pipeline import ExplainConfig
from sage_jax.layout import SAGE, Codec, Layout
from sage_jax.model import forward

DEFAULT_MAPS = ("sage",)
"""Maps compared besides explain's default (`truth.EXPLAIN_DEFAULT`), which is always compared."""


def explanation_shift(params, quantized, cfg: SageConfig, codec: Codec, examples: Sequence[Example], *,
                      layout: Layout = SAGE, methods: Sequence[str] = DEFAULT_MAPS, k: int = 3,
                      threshold: float = ExplainConfig().threshold, batch_size: Optional[int] = None
                      ) -> dict[str, Any]:
    """The analysis of `examples`' true chains under `params` against under `quantized`.

    Args:
      params: the full-precision model.
      quantized: the same model quantized (`quant.quantize`, or a GGUF file's blocks).
      cfg: their config.
      codec, examples, layout: the chains, laid out as `truth.encode_chains` lays them out.
      methods: registered maps to compare besides explain's default.
      k: the top-`k` of the overlap.
      threshold: a (step, token) pair is a decision point when its significance is above it (explain's).
      batch_size: as `truth.attribution_maps` (one chain at a time; a large vocabulary needs it).

    Returns:
      `{"chains", "steps", "maps": {method: {"rank_correlation", "top_k_overlap", "map_agreement",
      "decision_points_changed", "decision_points"}}, "branch_moved"}`.
    """
    chains = truth.encode_chains(codec, examples, layout)
    table = cf.substitution_table(codec, layout)
    full = truth.attribution_maps(params, cfg, chains, methods, table=table, batch_size=batch_size)
    reduced = truth.attribution_maps(quantized, cfg, chains, methods, table=table, batch_size=batch_size)
    steps = chains.encoded.steps
    s = steps.mask.shape[1]
    valid = np.asarray(steps.mask.any(-1))
    maps = {}
    for name in full:
        a, b = full[name][:, :s], reduced[name][:, :s]
        agreement = summarise_amortised(map_agreement(b, a, steps, k=k))
        sources = np.asarray(steps.sources) & valid[..., None]
        before, after = (np.asarray(a) > threshold) & sources, (np.asarray(b) > threshold) & sources
        union = int((before | after).sum())
        maps[name] = {**agreement, "decision_points": int(before.sum()),
                      "decision_points_changed": float((before ^ after).sum() / union) if union else 0.0}
    moved = _branch_positions(params, cfg, chains) != _branch_positions(quantized, cfg, chains)
    return {"chains": int(valid.shape[0]), "steps": int(valid.sum()), "maps": maps,
            "branch_moved": float(moved[valid].mean())}


def _branch_positions(params, cfg: SageConfig, chains: truth.Chains) -> np.ndarray:
    """`[N, S]` each step's branching position, one chain at a time (`[T, V]` logits each)."""
    tokens = jnp.asarray(chains.encoded.tokens)
    rows = []
    for i in range(tokens.shape[0]):
        logits = forward(params, tokens[i:i + 1], cfg).logits[0]
        rows.append(branches(logits, tokens[i], jax.tree.map(lambda x: x[i], chains.encoded.steps)).position)
    return np.asarray(jnp.stack(rows))


def format_shift(shift: dict[str, Any]) -> str:
    """The shift as table lines."""
    lines = [f"explanation under quantization ({shift['chains']} chains, {shift['steps']} steps): branching "
             f"position moved at {100 * shift['branch_moved']:.0f}% of steps"]
    for name, row in shift["maps"].items():
        lines.append(f"  {name}: Spearman {row['rank_correlation']:.3f}, top-k overlap {row['top_k_overlap']:.3f}, "
                     f"decision points changed {100 * row['decision_points_changed']:.0f}% of "
                     f"{row['decision_points']}")
    return "\n".join(lines)
