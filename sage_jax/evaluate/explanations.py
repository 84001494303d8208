"""Explanation metrics on held-out procedural problems: is the exact significance map faithful, and does it
find the tokens each step truly depends on?

Every problem is teacher-forced on its TRUE chain (`encode_example` of the example: question, true
steps, true answer), not on a generated one: the true dependencies `step_deps [S, T]` are defined on that
layout, and a wrong generated step has no true dependencies to recover. Per problem:

- the exact significance map (`sage_jax.interpret.significance`, Eq. 7) `[S, T]`;
- comprehensiveness at `k`: the drop in each step's log-probability when its top-`k` significance tokens are
  deleted (edges from the step's queries cut in every layer and head, `faithfulness.deleted_log_probs`),
  against the mean drop over `n_random` draws of `k` uniformly random candidates (fixed `key`). The summary's
  ratio is the mean drop of the map over the mean random drop;
- ERASER AOPC (comprehensiveness and sufficiency over `faithfulness.FRACTIONS`) of the map and of random maps
  (`faithfulness.faithfulness`, `faithfulness.random_baseline`);
- dependency recovery precision and recall at `k` against `step_deps` (`faithfulness.dependency_recovery`),
  twice: over all context candidates, and, reported separately as "content only", over the candidates that
  are not format tokens (`format_vocabulary`: the special tokens and tokens made only of the layout's
  punctuation, `=?`, `=`, `,`, ...). Exact significance ranks the attention sink `<bos>` and the format
  anchors `<question>` / `=?` highest (WORKSPACE, explanation metrics); the content-only variant asks which
  *content* tokens the map ranks highest. It never replaces the unrestricted number.

Candidates are `faithfulness.context_candidates` throughout (the tokens before each step's `<step>` marker,
which hold every true dependency), except for the content-only recovery. Problems are right-padded to one
length with `<pad>` (causality keeps it out) and their steps to one count (`stack_steps`; padding steps are
flagged invalid), so the whole set is one `vmap` of significance and one `jit` of the deletions.
`map_metrics` scores any other method's maps the same way.
"""

from __future__ import annotations

import functools
import string
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.data.schema import Example, encode_example
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate.parallel import over_chains
from sage_jax.interpret import faithfulness as fa, ranking
from sage_jax.interpret.patching import baseline_log_probs
from sage_jax.interpret.significance import significance_batch
from sage_jax.layout import SAGE, Codec, Layout, Steps, from_spans, stack_steps

Array = jax.Array

FORMAT_CHARACTERS = frozenset("=?:;,.!" + string.whitespace)
"""A token whose text is made only of these is a format token: the layout's glue (`=?` ends a question, `=`
separates a step's left side from its result, `,`/`.`/`:` separate facts), never an operand or an operator."""


class ExplanationMetrics(NamedTuple):
    """Per-problem, per-step explanation metrics of `N` problems padded to `S` steps.

    Attributes:
      n_steps: `[N]` int, each problem's number of rationale steps.
      valid: `[N, S]` bool, real steps (False for padding rows).
      base: `[N, S]` step log-probabilities of the unedited run.
      drop_top: `[N, S]` log-probability drop with the step's top-`k` significance tokens deleted.
      drop_random: `[N, S, R]` the drop with `k` random candidates deleted, one per draw.
      aopc_comprehensiveness: `[N, S]` AOPC comprehensiveness of the significance map.
      aopc_sufficiency: `[N, S]` AOPC sufficiency of the significance map.
      random_aopc_comprehensiveness: `[N, S]` the same for random maps (mean over `R` maps).
      random_aopc_sufficiency: `[N, S]` the same for random maps.
      precision: `[N, S]` dependency-recovery precision at `k`.
      recall: `[N, S]` dependency-recovery recall at `k` (NaN for a step without true dependencies).
      chance_precision: `[N, S]` the expected precision of `k` uniformly random candidates (the share of
        candidates that are true dependencies), the level a map must beat to recover anything.
      content_precision: `[N, S]` precision at `k` with format tokens excluded from the candidates.
      content_recall: `[N, S]` recall at `k` with format tokens excluded (NaN without true dependencies).
      content_chance_precision: `[N, S]` the chance precision over the content candidates.
      attribution: `[N, S, T]` the maps evaluated (the significance scores in `explanation_metrics`).
    """

    n_steps: Array
    valid: Array
    base: Array
    drop_top: Array
    drop_random: Array
    aopc_comprehensiveness: Array
    aopc_sufficiency: Array
    random_aopc_comprehensiveness: Array
    random_aopc_sufficiency: Array
    precision: Array
    recall: Array
    chance_precision: Array
    content_precision: Array
    content_recall: Array
    content_chance_precision: Array
    attribution: Array


class Encoded(NamedTuple):
    """`N` problems laid out for one batched analysis.

    Attributes:
      tokens: `[N, T]` right-padded with `<pad>`.
      steps: `Steps` `[N, S, T]` (each problem's `EncodedExample.step_spans`, `stack_steps`).
      deps: `[N, S, T]` bool true dependencies (`EncodedExample.step_deps`, padded).
      n_steps: `[N]` rationale steps per problem.
      content: `[N, T]` bool, tokens that are not format tokens (`format_vocabulary`); padding is format.
    """

    tokens: np.ndarray
    steps: Steps
    deps: np.ndarray
    n_steps: np.ndarray
    content: np.ndarray


def format_vocabulary(tokenizer: Codec, layout: Layout = SAGE) -> np.ndarray:
    """`[V]` bool: the layout's special ids and every id whose text is made only of `FORMAT_CHARACTERS`."""
    is_format = np.zeros(tokenizer.vocab_size, bool)
    for token in range(tokenizer.vocab_size):
        is_format[token] = layout.is_special(token) or set(tokenizer.decode([token])) <= FORMAT_CHARACTERS
    return is_format


def content_candidates(step_mask: Array, content: Array) -> Array:
    """`[n_steps, T]` bool: `faithfulness.context_candidates` that are content tokens (`content [T]`)."""
    return fa.context_candidates(step_mask) & jnp.asarray(content, bool)[None, :]


def encode_true_chains(tokenizer: Codec, examples: Sequence[Example], layout: Layout = SAGE) -> Encoded:
    """Encodes each example's true chain and its dependencies in `layout`, right-padded with its `pad_id` to one
    length and step count.

    Raises:
      ValueError: no examples, or an example without dependencies.
    """
    if not examples:
        raise ValueError("explanation metrics need at least one example")
    encoded = []
    for i, example in enumerate(examples):
        item = encode_example(example, tokenizer, layout)
        if item.step_deps is None:
            raise ValueError(f"examples[{i}] ({example.source!r}, {example.question!r}) declares no step "
                             "dependencies; use procedural problems (e.g. procedural_by_difficulty)")
        encoded.append(item)
    length = max(len(item.tokens) for item in encoded)
    tokens = np.stack([np.pad(item.tokens, (0, length - len(item.tokens)), constant_values=layout.pad_id)
                       for item in encoded])
    steps = [from_spans(item.step_spans, length) for item in encoded]
    n_max = max(s.n_steps for s in steps)
    deps = np.zeros((len(encoded), n_max, length), bool)
    for i, item in enumerate(encoded):
        deps[i, :item.step_deps.shape[0], :item.step_deps.shape[1]] = item.step_deps
    return Encoded(tokens, stack_steps(steps, n_max), deps, np.asarray([s.n_steps for s in steps], np.int32),
                   ~format_vocabulary(tokenizer, layout)[tokens])


def explanation_metrics(params, cfg: SageConfig, tokenizer: Tokenizer, examples: Sequence[Example], *, k: int,
                        key: Array, n_random: int = 4, fractions: tuple[float, ...] = fa.FRACTIONS,
                        batch_size: Optional[int] = None, **significance_options) -> ExplanationMetrics:
    """Faithfulness and dependency recovery of the exact significance map on `examples` (module docstring).

    Args:
      params, cfg: the model.
      tokenizer: encodes the examples' true chains.
      examples: procedural problems with `dependencies` (e.g. `procedural_by_difficulty(...).examples`).
      k: tokens deleted per step and the `k` of precision/recall at `k`.
      key: PRNG key of the random deletions and random maps.
      n_random: random draws (`k`-token deletions and random AOPC maps), each.
      fractions: the AOPC fractions.
      batch_size: chunk size of a problem's edited forward passes (None: all at once).
      **significance_options: passed to `significance` (`layer`, `weighting`, `heads`, `sources`).

    Returns:
      `ExplanationMetrics` of the `N` problems; aggregate with `summarise`.
    """
    encoded = encode_true_chains(tokenizer, examples)
    tokens = jnp.asarray(encoded.tokens)
    scores = significance_batch(params, cfg, tokens, encoded.steps, **significance_options).score
    return map_metrics(params, cfg, encoded, scores, k=k, key=key, n_random=n_random, fractions=fractions,
                       batch_size=batch_size)


def map_metrics(params, cfg: SageConfig, encoded: Encoded, attribution: Array, *, k: int, key: Array,
                n_random: int = 4, fractions: tuple[float, ...] = fa.FRACTIONS,
                batch_size: Optional[int] = None) -> ExplanationMetrics:
    """The metrics of any attribution maps `[N, S, T]` of `encoded` problems (`explanation_metrics` passes the
    exact significance; any other method's maps are scored the same way). Arguments as `explanation_metrics`."""
    if k < 1 or n_random < 1:
        raise ValueError(f"k={k} and n_random={n_random} must both be at least 1")
    if jnp.shape(attribution) != encoded.deps.shape:
        raise ValueError(f"attribution has shape {jnp.shape(attribution)}; expected [N, S, T] = "
                         f"{encoded.deps.shape}")
    metrics = _batched(params, cfg, jnp.asarray(encoded.tokens), encoded.steps.mask, jnp.asarray(attribution),
                       jnp.asarray(encoded.deps), jnp.asarray(encoded.content), key, k=k, n_random=n_random,
                       fractions=tuple(fractions), batch_size=batch_size)
    return metrics._replace(n_steps=jnp.asarray(encoded.n_steps))


@functools.partial(jax.jit, static_argnames=("cfg", "k", "n_random", "fractions", "batch_size"))
def _batched(params, cfg, tokens, step_masks, attribution, deps, content, key, *, k, n_random, fractions,
             batch_size) -> ExplanationMetrics:
    def one(tokens, step_mask, score, deps, content, key):
        draw_key, map_key = jax.random.split(key)
        candidates = fa.context_candidates(step_mask)
        top_k = jax.vmap(ranking.top_k, (0, 0, None))
        random_sets = jax.vmap(lambda m: top_k(m, candidates, k))(fa.random_maps(draw_key, step_mask, n_random))
        deleted = jnp.concatenate([top_k(score, candidates, k)[None], random_sets])  # [1 + R, S, T]
        lp = fa.deleted_log_probs(params, cfg, tokens, step_mask, deleted, batch_size=batch_size)
        base = baseline_log_probs(params, cfg, tokens, step_mask).step
        drop = base[None] - lp
        options = dict(fractions=fractions, batch_size=batch_size)
        ours = fa.faithfulness(params, cfg, tokens, step_mask, score, **options)
        rand = fa.random_baseline(params, cfg, tokens, step_mask, map_key, n_maps=n_random, **options)
        precision, recall = fa.dependency_recovery(score, deps, step_mask, k)
        chance = (deps & candidates).sum(-1) / jnp.maximum(candidates.sum(-1), 1)
        restricted = content_candidates(step_mask, content)
        content_precision, content_recall = fa.dependency_recovery(score, deps, step_mask, k, candidates=restricted)
        content_chance = (deps & restricted).sum(-1) / jnp.maximum(restricted.sum(-1), 1)
        return (base, drop[0], drop[1:].T, ours.aopc_comprehensiveness, ours.aopc_sufficiency,
                rand.aopc_comprehensiveness, rand.aopc_sufficiency, precision, recall, chance, content_precision,
                content_recall, content_chance)

    out = over_chains(one, tokens, step_masks, attribution, deps, content, jax.random.split(key, tokens.shape[0]))
    valid = step_masks.any(-1)
    return ExplanationMetrics(jnp.zeros(tokens.shape[:1], jnp.int32), valid, *out, attribution)


def summarise(metrics: ExplanationMetrics, k: int) -> dict[Any, dict[str, Any]]:
    """Means over the real steps, by number of rationale steps and over all problems (key "all").

    Each row: `problems`, `steps`, `drop_top_k` and `drop_random_k` (mean log-probability drops),
    `ratio_vs_random` (their quotient; None when the random drop is not positive, so no ratio is meaningful),
    the four AOPC means, `precision_at_k`, `recall_at_k`, `chance_precision_at_k`, their content-only
    counterparts `content_precision_at_k`, `content_recall_at_k`, `content_chance_precision_at_k`, and `k`.
    """
    m = jax.tree_util.tree_map(np.asarray, metrics)
    groups = {int(n): m.n_steps == n for n in sorted(set(m.n_steps.tolist()))}
    groups["all"] = np.ones_like(m.n_steps, bool)
    table = {}
    for name, rows in groups.items():
        valid = m.valid & rows[:, None]
        top, rand = float(m.drop_top[valid].mean()), float(m.drop_random[valid].mean())
        table[name] = {
            "problems": int(rows.sum()), "steps": int(valid.sum()), "k": k,
            "drop_top_k": top, "drop_random_k": rand, "ratio_vs_random": top / rand if rand > 0 else None,
            "aopc_comprehensiveness": float(m.aopc_comprehensiveness[valid].mean()),
            "random_aopc_comprehensiveness": float(m.random_aopc_comprehensiveness[valid].mean()),
            "aopc_sufficiency": float(m.aopc_sufficiency[valid].mean()),
            "random_aopc_sufficiency": float(m.random_aopc_sufficiency[valid].mean()),
            "precision_at_k": float(m.precision[valid].mean()),
            "recall_at_k": nanmean_or_none(m.recall[valid]),
            "chance_precision_at_k": float(m.chance_precision[valid].mean()),
            "content_precision_at_k": float(m.content_precision[valid].mean()),
            "content_recall_at_k": nanmean_or_none(m.content_recall[valid]),
            "content_chance_precision_at_k": float(m.content_chance_precision[valid].mean())}
    return table


def format_summary(table: Mapping[Any, Mapping[str, Any]]) -> str:
    """A plain-text table of `summarise`'s rows; the last two columns are the content-only recovery."""
    k = next(iter(table.values()))["k"]
    lines = [f"{'steps':>5}  {'n':>3}  {'drop top-' + str(k):>10}  {'drop rand':>9}  {'ratio':>6}  "
             f"{'AOPC comp (rand)':>16}  {'AOPC suff (rand)':>16}  {f'P@{k} (chance)':>14}  {f'R@{k}':>5}  "
             f"{f'content P@{k} (chance)':>22}  {f'R@{k}':>5}"]
    for name, row in table.items():
        ratio = "n/a" if row["ratio_vs_random"] is None else f"{row['ratio_vs_random']:.2f}"
        lines.append(f"{name!s:>5}  {row['problems']:>3}  {row['drop_top_k']:>10.3f}  {row['drop_random_k']:>9.3f}  "
                     f"{ratio:>6}  {row['aopc_comprehensiveness']:>7.3f} ({row['random_aopc_comprehensiveness']:.3f})"
                     f"  {row['aopc_sufficiency']:>7.3f} ({row['random_aopc_sufficiency']:.3f})  "
                     f"{row['precision_at_k']:>7.2f} ({row['chance_precision_at_k']:.2f})  "
                     f"{_optional(row['recall_at_k']):>5}  {row['content_precision_at_k']:>15.2f} "
                     f"({row['content_chance_precision_at_k']:.2f})  {_optional(row['content_recall_at_k']):>5}")
    return "\n".join(lines)


def _optional(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def nanmean_or_none(values: np.ndarray) -> Optional[float]:
    """The mean of the finite entries; None when there are none (a rate nothing measured)."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


__all__ = ["FORMAT_CHARACTERS", "Encoded", "ExplanationMetrics", "content_candidates", "encode_true_chains",
           "explanation_metrics", "format_summary", "format_vocabulary", "map_metrics", "summarise"]
