"""The figures of a run's report: what `make demo` writes beside `report.md`, and the helpers it needs.

`save_report_figures` takes explained problems (`Explanation`s, e.g. read back with `Explanation.from_json`)
and writes, for every one, its significance matrix (PNG) and its token view (HTML), and for the first one
the analyses that run the model again: attention by layer and head group, faithfulness curves against random
maps, residual (layer x position) and head (layer x head) patching, and the treescope view of its `Trace`.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.interpret.explanation import Explanation
from sage_jax.interpret.faithfulness import FRACTIONS, faithfulness, random_maps
from sage_jax.interpret.patching import head_patching, residual_patching
from sage_jax.layout import SAGE, Codec, Layout, answer_mask, from_spans
from sage_jax.model import Params, forward
from sage_jax.viz.figures import (attention_figure, explanation_figure, faithfulness_figure, head_patching_figure,
                                  residual_patching_figure)
from sage_jax.viz.html import explanation_html
from sage_jax.viz.labels import token_labels
from sage_jax.viz.tree import tree_html


def explanation_masks(explanation: Explanation, layout: Layout = SAGE) -> tuple[np.ndarray, np.ndarray]:
    """`([n, T] bool step mask, [T] bool answer mask)` of an explained sequence (the answer as
    `sage_jax.layout.answer_mask` finds it; all False without one)."""
    tokens = list(explanation.tokens)
    steps = from_spans([(s.start, s.end) for s in explanation.steps], len(tokens))
    return np.asarray(steps.mask), answer_mask(tokens, layout)


def swap_first_digit(tokens, tokenizer: Codec, layout: Layout = SAGE) -> tuple[np.ndarray, int]:
    """A corrupted copy of `tokens`: the question's first digit `d` becomes `(d + 1) % 10`, and its position.

    The corrupted run differs from the clean one in one token, so patching the clean residuals into it shows
    where that number is carried, layer by layer.
    """
    ids = np.asarray(tokens).copy()
    spans = layout.step_spans(ids, skip_empty=True)
    end = spans[0][0] if spans else len(ids)
    for position in range(end):
        text = layout.token_text(tokenizer, ids[position])
        if len(text) == 1 and text.isdigit():
            replacement = tokenizer.encode(str((int(text) + 1) % 10))
            if len(replacement) != 1:
                raise ValueError(f"digit {(int(text) + 1) % 10} does not encode to one token")
            ids[position] = replacement[0]
            return ids, position
    raise ValueError(f"the question {token_labels(ids[:end], tokenizer, layout)} holds no digit token to corrupt")


@functools.partial(jax.jit, static_argnames=("cfg",))
def _traced_forward(params: Params, tokens: jax.Array, cfg: SageConfig):
    return forward(params, tokens, cfg, record=("attn", "gate"))


def save_report_figures(out_dir: str | pathlib.Path, params: Params, cfg: SageConfig, tokenizer: Codec,
                        explanations: Sequence[Explanation], *, key: Optional[jax.Array] = None,
                        n_random: int = 4, dpi: int = 110) -> list[pathlib.Path]:
    """Writes the report figures of `explanations` into `out_dir` and returns their paths.

    Per explanation `i`: `significance_<i>.png` (step x token matrix, decision points and branching tokens
    marked) and `explanation_<i>_view.html` (tokens shaded, alternatives on hover). For the first one also:
    `attention_0.png` (every layer, per head group), `faithfulness_0.png` (deletion and insufficiency curves of
    its map against `n_random` random maps drawn from `key`), `patching_residual_0.png` (the clean run's
    residual stream patched into a run whose first question digit is changed; effect on the answer),
    `patching_heads_0.png` (each head zero-ablated; effect on the answer) and `trace_0.html` (treescope). The
    patching effects are on the last step instead when the chain has no answer.
    """
    if not explanations:
        raise ValueError("save_report_figures needs at least one explanation")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(0) if key is None else key
    written = []

    def save(figure, name):
        path = out / name
        figure.savefig(path, dpi=dpi)
        written.append(path)

    def write(text, name):
        path = out / name
        path.write_text(text)
        written.append(path)

    for i, explanation in enumerate(explanations):
        save(explanation_figure(explanation), f"significance_{i}.png")
        write(explanation_html(explanation), f"explanation_{i}_view.html")

    first = explanations[0]
    tokens = jnp.asarray(first.tokens, jnp.int32)
    labels = token_labels(first.tokens, tokenizer)
    step_mask, answer_mask = explanation_masks(first)
    trace = _traced_forward(params, tokens[None], cfg).trace
    save(attention_figure(trace.attn[:, 0], cfg, labels, title=f"Attention by layer and head group: "
                                                              f"{first.question}"), "attention_0.png")
    write(tree_html(trace, token_labels=labels, cfg=cfg), "trace_0.html")

    attribution = jnp.asarray([s.significance for s in first.steps], jnp.float32)
    # The random baseline of `faithfulness.random_baseline` (the mean over `random_maps(key, ...)`), one map at
    # a time so that every call reuses the compiled `faithfulness` of the significance map.
    randoms = [faithfulness(params, cfg, tokens, step_mask, m) for m in random_maps(key, step_mask, n_random)]
    scores = {"significance": faithfulness(params, cfg, tokens, step_mask, attribution),
              "random": jax.tree_util.tree_map(lambda *x: jnp.mean(jnp.stack(x), axis=0), *randoms)}
    save(faithfulness_figure(scores, FRACTIONS, title=f"Faithfulness of the significance map: {first.question}"),
         "faithfulness_0.png")

    target = "answer" if answer_mask.any() else len(first.steps) - 1  # a chain without an answer: its last step
    name = "log p(answer)" if target == "answer" else f"log p(step {target + 1})"
    corrupted, position = swap_first_digit(first.tokens, tokenizer)
    result = residual_patching(params, cfg, jnp.asarray(corrupted), tokens, step_mask, answer_mask)
    save(residual_patching_figure(result, labels, target=target, title=f"Residual patching into the run with "
                                  f"{labels[position]!r}@{position} changed: effect on {name}"),
         "patching_residual_0.png")
    save(head_patching_figure(head_patching(params, cfg, tokens, step_mask, answer_mask), cfg, target=target,
                              title=f"Head zero-ablation: effect on {name}"), "patching_heads_0.png")
    return written
