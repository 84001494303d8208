"""Intervene on what an explanation names: cut those attention edges, re-run, and see what changes.

For one problem (`intervene`):

1. explain it (`sage_jax.interpret.explain`, exact path; the chain is generated greedily unless given);
2. cut, for every step, the edges from the step's queries (the positions that predict its tokens) to the
   source tokens its explanation names (its dependencies above the threshold, the decision points of
   Algorithm S1), in every layer and head (`interventions.cut_edges` of the union of the steps' edge sets,
   which is `interventions.merge_edits` of one cut per step: edge masks intersect). The control
   cuts as many edges: per step, as many sources drawn uniformly (without replacement, from `key`) among
   the tokens before the step as the explanation named, from the same queries;
3. re-run under each cut (and uncut): the step and answer log-probabilities teacher-forced on the explained
   chain; the chain regenerated greedily from the question with the cut in place (`generate(edits=...)`, KV
   cache; the edge mask is fixed by position, so a position keeps its cut edges whether or not the new chain
   still has the same step there); and the exact significance map of the explained chain under the cut, with
   each step's top-`k` tokens and its Spearman correlation with the uncut map over the step's sources.

`InterventionReport` holds all of it and renders JSON and Markdown.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.decode import generate
from sage_jax.interpret import ranking
from sage_jax.interpret.interventions import cut_edges, edges
from sage_jax.interpret.patching import step_log_probs
from sage_jax.interpret.pipeline import ExplainConfig, explain
from sage_jax.interpret.significance import significance_from_gradients, step_gradients
from sage_jax.layout import SAGE, Layout, Steps, answer_mask, from_spans, parse_answer
from sage_jax.trace import Edits

CONDITIONS = ("uncut", "explained", "random")


@dataclasses.dataclass(frozen=True)
class Condition:
    """The model under one cut.

    Attributes:
      name: "uncut", "explained" (the edges the explanation names) or "random" (as many random edges).
      edges: edges cut, counted over query-source pairs (each is cut in every layer and head).
      sources: per step, the positions whose edges from the step's queries are cut.
      chain: the chain regenerated from the question under the cut (special tokens by name).
      answer: its parsed answer, or None when it wrote no `<answer>`.
      step_log_probs: per step, the log-probability of the explained chain's step, teacher-forced.
      answer_log_prob: the log-probability of the explained chain's answer tokens.
      top_tokens: per step, the top-`k` tokens of the exact significance map under the cut, as
        `(position, text, score)`.
      rank_correlation: per step, Spearman correlation of that map with the uncut one over the step's sources.
    """

    name: str
    edges: int
    sources: tuple[tuple[int, ...], ...]
    chain: str
    answer: Optional[str]
    step_log_probs: tuple[float, ...]
    answer_log_prob: float
    top_tokens: tuple[tuple[tuple[int, str, float], ...], ...]
    rank_correlation: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class InterventionReport:
    """`intervene`'s result: the problem, the explained chain and the three conditions (`CONDITIONS` order)."""

    question: str
    chain: str
    answer: Optional[str]
    steps: tuple[str, ...]
    threshold: float
    k: int
    conditions: tuple[Condition, ...]

    def condition(self, name: str) -> Condition:
        """The condition called `name` (one of `CONDITIONS`)."""
        return next(c for c in self.conditions if c.name == name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_markdown(self) -> str:
        """What was cut and what changed, uncut first."""
        uncut = self.condition("uncut")
        lines = ["# Intervention on an explanation", "", f"**Question:** `{self.question}`", "",
                 f"**Explained chain:** `{self.chain}` (answer {self.answer!r}); dependencies above "
                 f"{self.threshold:.2f} are cut from each step's queries in every layer and head; the control "
                 "cuts as many random edges (same queries, as many random earlier tokens per step).", "",
                 "| cut | edges | regenerated chain | answer | changed | step log-probs (change) | answer log-prob |",
                 "|---|---|---|---|---|---|---|"]
        for c in self.conditions:
            deltas = ", ".join(f"{lp:.2f} ({lp - ref:+.2f})" for lp, ref in zip(c.step_log_probs, uncut.step_log_probs))
            changed = "-" if c.name == "uncut" else ("yes" if c.answer != uncut.answer else "no")
            lines.append(f"| {c.name} | {c.edges} | `{_inline(c.chain)}` | {c.answer} | {changed} | {deltas} | "
                         f"{c.answer_log_prob:.2f} ({c.answer_log_prob - uncut.answer_log_prob:+.2f}) |")
        lines += ["", "## The explanation under each cut (exact significance of the explained chain)", ""]
        for i, step in enumerate(self.steps):
            lines.append(f"Step {i + 1} `{_inline(step)}`:")
            for c in self.conditions:
                cut = ", ".join(str(p) for p in c.sources[i]) or "nothing"
                top = ", ".join(f"`{_inline(t)}`@{p} ({s:.2f})" for p, t, s in c.top_tokens[i])
                lines.append(f"- {c.name}: cut sources {cut}; top-{self.k}: {top}; rank correlation with uncut "
                             f"{c.rank_correlation[i]:.2f}")
        return "\n".join(lines) + "\n"


def intervene(params: Any, cfg: SageConfig, tokenizer: Tokenizer, question: str, *, key: jax.Array,
              rationale: Optional[str] = None, answer: Optional[str] = None, threshold: float = 0.3, k: int = 3,
              max_new_tokens: int = 48, layer: int = 0, layout: Layout = SAGE) -> InterventionReport:
    """Explains `question`'s chain, cuts what the explanation names and as many random edges, re-runs.

    Args:
      params, cfg: the model.
      tokenizer: the model's tokenizer.
      question: the question text.
      key: draws the random control's sources.
      rationale: the chain (one step per line); None generates it greedily.
      answer: the given chain's answer.
      threshold: significance threshold of the dependencies that are cut.
      k: top tokens reported per step of the maps under each cut.
      max_new_tokens: budget of the regenerated chains (cut to what `cfg.max_seq_len` leaves).
      layer: where the exact analysis differentiates hidden states.
      layout: how the chain is laid out as tokens.

    Raises:
      ValueError: the chain has no step (from `explain`), or no room is left to regenerate it.
    """
    explanation = explain(params, cfg, question, rationale, tokenizer=tokenizer, answer=answer, layout=layout,
                          config=ExplainConfig(weighting="attention", threshold=threshold, layer=layer))
    ids = np.asarray(explanation.tokens, np.int32)
    steps = from_spans([(s.start, s.end) for s in explanation.steps], len(ids))
    named = tuple(tuple(sorted(d.position for d in s.token_dependencies)) for s in explanation.steps)
    pools = np.asarray(steps.sources)
    drawn = []
    for i, sources in enumerate(named):
        pool = np.flatnonzero(pools[i])
        pick = jax.random.choice(jax.random.fold_in(key, i), pool.shape[0], (len(sources),), replace=False)
        drawn.append(tuple(sorted(int(pool[j]) for j in np.asarray(pick))))
    prompt = int(explanation.steps[0].start)
    size = min(cfg.max_seq_len, prompt + max_new_tokens)
    if size <= prompt:
        raise ValueError(f"no room to regenerate: the prompt has {prompt} tokens and cfg.max_seq_len is "
                         f"{cfg.max_seq_len}")
    queries = np.asarray(steps.queries)
    answer_where = jnp.asarray(answer_mask(ids, layout))
    tokens = jnp.asarray(ids)
    measured = []
    for sources in (tuple(() for _ in named), named, tuple(drawn)):
        edge_set = _edge_set(queries, sources, len(ids))
        score, lp_steps, lp_answer = _edited_analysis(params, cfg, tokens, steps, answer_where,
                                                      _cut(cfg, edge_set), layer=layer)
        generated = _regenerate(params, cfg, ids[:prompt], edge_set, size, layout.eos_id)
        measured.append((sources, int(edge_set.sum()), generated, np.asarray(score), lp_steps, lp_answer))
    maps = jnp.asarray(np.stack([m[3] for m in measured]))
    correlations = np.asarray(_rank_correlations(maps, maps[0], jnp.asarray(pools)))
    conditions = tuple(Condition(
        name=name, edges=n_edges, sources=sources, chain=layout.render(tokenizer, ids[:prompt].tolist() + generated),
        answer=parse_answer(tokenizer, generated, layout),
        step_log_probs=tuple(float(x) for x in np.asarray(lp_steps)),
        answer_log_prob=float(lp_answer), top_tokens=_top_tokens(score, pools, k, explanation.token_text),
        rank_correlation=tuple(float(x) for x in correlation))
        for name, (sources, n_edges, generated, score, lp_steps, lp_answer), correlation
        in zip(CONDITIONS, measured, correlations))
    return InterventionReport(question=question, chain=layout.render(tokenizer, ids.tolist()),
                              answer=explanation.answer, steps=tuple(s.text for s in explanation.steps),
                              threshold=explanation.threshold, k=k, conditions=conditions)


def _edge_set(queries: np.ndarray, sources: tuple[tuple[int, ...], ...], length: int) -> np.ndarray:
    """`[T, T]` bool: for every step `i`, its queries x its `sources[i]`."""
    edge_set = np.zeros((length, length), bool)
    for i, positions in enumerate(sources):
        chosen = np.zeros(length, bool)
        chosen[list(positions)] = True
        edge_set |= np.asarray(edges(queries[i], chosen))
    return edge_set


def _regenerate(params, cfg: SageConfig, prompt: np.ndarray, edge_set: np.ndarray, size: int,
                eos_id: int) -> list[int]:
    """Greedy tokens after `prompt` up to `eos_id` (included) or `size` tokens in all, with the cut `edge_set
    [T, T]` of the explained chain in place (cropped or padded with uncut edges to `[size, size]`)."""
    grown = np.zeros((size, size), bool)
    n = min(size, edge_set.shape[0])
    grown[:n, :n] = edge_set[:n, :n]
    out = generate(params, cfg, [[int(t) for t in prompt]], max_new_tokens=size - len(prompt), eos_id=eos_id,
                   edits=_cut(cfg, grown))
    out = np.asarray(out.tokens[0, len(prompt):])
    end = next((j + 1 for j, t in enumerate(out) if t in (eos_id, cfg.pad_id)), len(out))
    return [int(t) for t in out[:end] if t != cfg.pad_id]


def _cut(cfg: SageConfig, edge_set: np.ndarray) -> Edits:
    """The cut of `edge_set [T, T]` (an all-True edge mask when nothing is cut, so that every condition runs
    the same compiled forward)."""
    return cut_edges(cfg, jnp.asarray(edge_set))


def _top_tokens(score: np.ndarray, pools: np.ndarray, k: int, texts) -> tuple:
    out = []
    for row, pool in zip(score, pools):
        out.append(tuple((j, texts[j], float(row[j])) for j in ranking.top_k_positions(row, pool, k)))
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def _edited_analysis(params, cfg: SageConfig, tokens: jax.Array, steps: Steps, answer_mask: jax.Array,
                     edits: Edits, *, layer: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The model under `edits` on one chain: `[n, T]` exact significance (Eq. 7), `[n]` step log-probabilities
    and `[]` the answer's (`answer_mask [T]`), from the same forward."""
    gradients = step_gradients(params, cfg, tokens, steps, layer=layer, edits=edits)
    score = significance_from_gradients(gradients, steps, cfg).score
    logits = gradients.logits
    lp = step_log_probs(logits, tokens, steps.mask, answer_mask)
    return score, lp.step, lp.answer


@jax.jit
def _rank_correlations(maps: jax.Array, reference: jax.Array, pools: jax.Array) -> jax.Array:
    """`[C, n]` Spearman correlation of each condition's map `maps [C, n, T]` with `reference [n, T]`."""
    return jax.vmap(lambda m: jax.vmap(ranking.spearman)(m, reference, pools))(maps)


def _inline(text: str) -> str:
    return text.replace("\n", "\\n").replace("`", "'").replace("|", "\\|")


__all__ = ["CONDITIONS", "Condition", "InterventionReport", "intervene"]
