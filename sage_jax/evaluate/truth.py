"""Every attribution map scored against the model's own counterfactual behaviour, token level and step level.

The truth is measured, not declared (`sage_jax.interpret.counterfactual`): a token is a dependency of a step
when substituting it by another value of its kind changes the step's greedy tokens; a step's importance for
the answer is how far the answers move when it is resampled (Thought Anchors' resampling importance) and how
much the answer's log-probability drops when attention to it is suppressed. Chains are the examples' TRUE
chains, teacher-forced (as `sage_jax.evaluate.explanations`), with one extra target row after the steps: the
answer, so that the last step has a later reader too.

Token level, per map, over each rationale step's *content* candidates (tokens before its first query that
have a kind and so were substituted: the sink and format tokens are never candidates here):

- precision and recall at `k` against the substitution dependencies, with the chance precision;
- Spearman between the map and the substitution effect sizes;
- deletion ratio: the step's log-probability drop with its top-`k` content candidates cut (edge cuts, every
  layer and head) over the mean drop with `k` random content candidates, over the steps with more than `k`
  content candidates (elsewhere both sets are all of them); the unrestricted ratio (top-`k` of all context
  candidates, sink and format tokens included, against random ones) stays beside it, labelled;
- ERASER AOPC comprehensiveness over the content candidates.

Step level, per map, on chains of at least two steps: the map's importance of step `k` is the share of every
later target row's mass (rows normalised over their context candidates; the answer row included) that falls
on step `k`'s tokens (`sage_jax.interpret.significance.step_importance`); it is compared, by argmax, with
resampling importance (KL of the answer distributions; and the drop of the answer's accuracy, over the chains
where one step has the largest drop) and with suppression (the answer's log-probability drop). `explain`'s
default ranks steps by the model's own alternatives instead (`sage_jax.interpret.alternatives`: read as a
map's mass, every map names the step that writes the answer); its row's step columns are that analysis's, the
map's own agreement beside them (`step_agreement_resampling_map`).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.data.schema import Example
from sage_jax.evaluate.explanations import Encoded, encode_true_chains, nanmean_or_none
from sage_jax.evaluate.parallel import over_chains
from sage_jax.interpret import attribution, counterfactual as cf, faithfulness as fa, ranking
from sage_jax.interpret.alternatives import alternative_importance
from sage_jax.interpret.amortised import analyse_batch
from sage_jax.interpret.patching import baseline_log_probs
from sage_jax.interpret.pipeline import ExplainConfig
from sage_jax.interpret.significance import significance, step_importance
from sage_jax.layout import SAGE, Codec, Layout, Steps, answer_mask

Array = jax.Array

EXPLAIN_DEFAULT = "substitution (default)"
"""The name of `explain`'s default map in the tables: Eq. 7 with `w_ij` the counterfactual substitution effect."""
DEFAULT_METHODS = ("sage", "attention", "rollout", "value_norms", "saliency", "input_x_gradient",
                   "integrated_gradients", "occlusion")
"""The registered maps scored by default (`attribution.methods()`); "amortised" joins with IAL parameters."""


class Chains(NamedTuple):
    """`N` true chains laid out for the counterfactual measurements.

    Attributes:
      encoded: `Encoded` (tokens `[N, T]`, the rationale `Steps` `[N, S, T]`, data dependencies, ...).
      targets: `Steps` `[N, S + 1, T]`: the rationale steps (padded to `S`), then the answer in row `S`.
      answer: `[N, T]` bool, the answer's tokens.
      spans: per problem, the `(start, end)` token span of each rationale step.
    """

    encoded: Encoded
    targets: Steps
    answer: np.ndarray
    spans: tuple[tuple[tuple[int, int], ...], ...]


class Truth(NamedTuple):
    """The counterfactual truth of `N` chains.

    Attributes:
      substitution: `SubstitutionEffects` with a leading `[N]` axis, over the `S + 1` target rows.
      suppression: `StepSuppression` `[N, S, S]` / `[N, S]` over the rationale steps.
      resampling: `[N, S]` resampling importance (KL; NaN where not measured or the step has probability one).
      resampling_replaced: `[N, S]` int, rollouts with the step rewritten (a multiple of `n_rollouts`, or 0 where
        it cannot be).
      resampling_accuracy_drop: `[N, S]` the answer's accuracy with the step kept minus with it replaced, the
        accuracy side of resampling importance (NaN where the KL is).
    """

    substitution: cf.SubstitutionEffects
    suppression: cf.StepSuppression
    resampling: np.ndarray
    resampling_replaced: np.ndarray
    resampling_accuracy_drop: np.ndarray


def encode_chains(tokenizer: Codec, examples: Sequence[Example], layout: Layout = SAGE) -> Chains:
    """Encodes the examples' true chains (`encode_true_chains`) and adds the answer as a last target row."""
    encoded = encode_true_chains(tokenizer, examples, layout)
    answers = np.stack([answer_mask(row, layout) for row in encoded.tokens])
    n, s, t = encoded.steps.mask.shape
    mask = np.concatenate([np.asarray(encoded.steps.mask), answers[:, None]], axis=1)
    first = np.where(answers.any(-1), answers.argmax(-1), 0)
    last = np.where(answers.any(-1), t - answers[:, ::-1].argmax(-1), 0)
    targets = Steps(jnp.asarray(mask), jnp.concatenate([encoded.steps.starts, jnp.asarray(first)[:, None]], 1),
                    jnp.concatenate([encoded.steps.ends, jnp.asarray(last)[:, None]], 1))
    spans = tuple(tuple((int(a), int(b)) for a, b in zip(np.asarray(encoded.steps.starts[i])[:encoded.n_steps[i]],
                                                          np.asarray(encoded.steps.ends[i])[:encoded.n_steps[i]]))
                  for i in range(n))
    return Chains(encoded, targets, answers, spans)


def counterfactual_truth(params, cfg: SageConfig, tokenizer: Codec, chains: Chains, *, key: Array,
                         n_substitutes: int = 8, n_rollouts: int = 16, max_rollouts: Optional[int] = None,
                         table: Optional[cf.SubstitutionTable] = None, layout: Layout = SAGE,
                         batch_size: Optional[int] = None, log: Optional[Callable[[str], None]] = None) -> Truth:
    """Substitution effects, step suppression and resampling importance of every chain.

    Args:
      params, cfg: the model.
      tokenizer: decodes token kinds and answers.
      chains: `encode_chains` output.
      key: PRNG key of the substitutes and the rollouts.
      n_substitutes: substitutes tried per token (fewer where its kind has fewer members).
      n_rollouts: rollouts per prefix for resampling importance; 0 skips it (NaN).
      max_rollouts: draw further rounds of `n_rollouts`, up to this many, on the chains whose most important
        step is uncertain (`cf.resampling_importance`'s `max_n`); None: one round.
      table: the substitution table (built from `tokenizer` when None).
      layout: the chains' layout.
      batch_size: forward passes run at once (each holds `[T, V]` logits); with it, chains are also taken one at
        a time (`_per_chain`), so that memory no longer grows with their number. None: everything at once.
      log: called with a progress line after each part (and each chain's rollouts): a pretrained model's table
        takes an hour on a laptop CPU.
    """
    say, start = log or (lambda line: None), time.perf_counter()
    table = cf.substitution_table(tokenizer, layout) if table is None else table
    sub_key, roll_key = jax.random.split(key)
    tokens = jnp.asarray(chains.encoded.tokens)
    runs = cf.runs_needed(table, chains.encoded.tokens, chains.targets.mask, n_substitutes)
    substitution = jax.block_until_ready(_substitution(
        params, cfg, tokens, chains.targets.mask, jnp.asarray(table.alternatives), jnp.asarray(table.valid),
        jax.random.split(sub_key, tokens.shape[0]), n=n_substitutes, batch_size=batch_size, runs=runs))
    say(f"truth: substitution effects of {tokens.shape[0]} chains, {_since(start)}")
    suppression = jax.block_until_ready(_suppression(params, cfg, tokens, chains.encoded.steps.mask,
                                                     jnp.asarray(chains.answer), batch_size=batch_size))
    say(f"truth: step suppression, {_since(start)}")
    n, s = chains.encoded.steps.mask.shape[:2]
    kl, replaced, drop = np.full((n, s), np.nan), np.zeros((n, s), np.int32), np.full((n, s), np.nan)
    if n_rollouts:
        width = max(spans[-1][1] for spans in chains.spans) + 1  # one decode shape per step count
        rollout = min(chains.encoded.tokens.shape[1] - min(spans[0][0] for spans in chains.spans) + 8,
                      cfg.max_seq_len - width)
        for i, (row, spans) in enumerate(zip(chains.encoded.tokens, chains.spans)):
            length = int(chains.answer[i].nonzero()[0][-1]) + 2  # through the answer and its end token
            result = cf.resampling_importance(params, cfg, tokenizer, row[:length], spans,
                                              key=jax.random.fold_in(roll_key, i), n=n_rollouts,
                                              max_n=max_rollouts, layout=layout, max_new_tokens=rollout, width=width)
            kl[i, :len(spans)], replaced[i, :len(spans)] = result.kl, result.n_replaced
            drop[i, :len(spans)] = result.accuracy_kept - result.accuracy_replaced
            say(f"truth: resampling importance, chain {i + 1}/{len(chains.spans)}, {_since(start)}")
    return Truth(substitution, suppression, kl, replaced, drop)


@functools.partial(jax.jit, static_argnames=("cfg", "n", "batch_size", "runs"))
def _substitution(params, cfg, tokens, masks, alternatives, valid, keys, *, n, batch_size, runs):
    def one(tokens, mask, key):
        subs, ok = cf.draw_substitutes(key, tokens, alternatives, valid, n)
        return cf.substitution_effects(params, cfg, tokens, mask, subs, ok, batch_size=batch_size, runs=runs)
    return _per_chain(one, tokens, masks, keys, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("cfg", "batch_size"))
def _suppression(params, cfg, tokens, masks, answers, *, batch_size):
    def one(tokens, mask, answer):
        return cf.step_suppression(params, cfg, tokens, mask, answer, batch_size=batch_size)
    return _per_chain(one, tokens, masks, answers, batch_size=batch_size)


def _per_chain(fn: Callable[..., Any], *xs, batch_size: Optional[int]) -> Any:
    """`fn` over the leading chain axis of `xs`, the chains split over the devices (`parallel.over_chains`):
    vmapped when `batch_size` is None, else one chain at a time (`lax.map`), so that only one chain's chunk of
    `batch_size` forward passes is ever live. A pretrained vocabulary needs the bound: scoring SmolLM2's maps on
    3 chains at once asked for a 36 GB buffer of `[T, 49152]` logits; one at a time the whole table peaks at
    14.6 GB."""
    return over_chains(fn, *xs, batch_size=batch_size)


def attribution_maps(params, cfg: SageConfig, chains: Chains, methods: Sequence[str] = DEFAULT_METHODS, *,
                     inverse_params=None, table: Optional[cf.SubstitutionTable] = None,
                     explain_config: ExplainConfig = ExplainConfig(), batch_size: Optional[int] = None
                     ) -> dict[str, Array]:
    """`{method: [N, S + 1, T]}` maps over the target rows; "amortised" (the IAL) joins when `inverse_params`,
    and `EXPLAIN_DEFAULT` (Eq. 7 with counterfactual substitution weights, what `explain` reports by default,
    drawn as `explain_config` says; `batch_size` chunks its substituted forward passes) when the codec's
    substitution `table` is given."""
    tokens = jnp.asarray(chains.encoded.tokens)
    if batch_size is None:
        maps = {method: over_chains(functools.partial(_attribute, method, cfg), tokens, chains.targets,
                                    shared=params) for method in methods}
    else:  # one chain at a time: a gradient method holds `[S + 1, T, V]` logits per chain
        rows = [jax.tree.map(lambda x: x[i], chains.targets) for i in range(tokens.shape[0])]
        maps = {method: jnp.stack([attribution.attribute(method, params, cfg, tokens[i], row)
                                   for i, row in enumerate(rows)]) for method in methods}
    if inverse_params is not None:
        maps["amortised"] = analyse_batch(params, inverse_params, cfg, tokens, chains.targets.mask).significance
    if table is not None:
        n = min(explain_config.substitutes, table.alternatives.shape[1])
        maps[EXPLAIN_DEFAULT] = _substitution_significance(
            params, cfg, tokens, chains.targets, jnp.asarray(table.alternatives), jnp.asarray(table.valid),
            jax.random.key(explain_config.substitution_seed), n=n, layer=explain_config.layer, batch_size=batch_size,
            runs=cf.runs_needed(table, chains.encoded.tokens, chains.targets.mask, n))
    return maps


def _attribute(method: str, cfg: SageConfig, params, tokens, targets) -> Array:
    """`attribution.attribute` with the parameters first, as `over_chains` passes what is shared."""
    return attribution.attribute(method, params, cfg, tokens, targets)


@functools.partial(jax.jit, static_argnames=("cfg", "n", "layer", "batch_size", "runs"))
def _substitution_significance(params, cfg, tokens, targets, alternatives, valid, key, *, n, layer, batch_size,
                               runs):
    def one(tokens, targets):
        subs, ok = cf.draw_substitutes(key, tokens, alternatives, valid, n)
        effect = cf.substitution_effects(params, cfg, tokens, targets.mask, subs, ok, batch_size=batch_size,
                                         runs=runs).effect
        return significance(params, cfg, tokens, targets, layer=layer, weight=effect).score
    return _per_chain(one, tokens, targets, batch_size=batch_size)


class MapScores(NamedTuple):
    """Per-problem scores of one map (rationale rows `[N, S]`, chains `[N]`).

    Attributes:
      precision, recall, chance: `[N, S]` at `k` over content candidates (recall NaN without dependencies).
      spearman: `[N, S]` rank correlation with the effect sizes (NaN for fewer than 2 content candidates).
      drop_top, drop_random: `[N, S]` log-probability drop with the top-`k` / `k` random content candidates cut.
      drop_top_all, drop_random_all: `[N, S]` the same over all context candidates (sink and format included).
      aopc: `[N, S]` AOPC comprehensiveness over the content candidates.
      step_importance: `[N, S]` the map's importance of each step for the later rows (module docstring).
    """

    precision: Array
    recall: Array
    chance: Array
    spearman: Array
    drop_top: Array
    drop_random: Array
    drop_top_all: Array
    drop_random_all: Array
    aopc: Array
    step_importance: Array


def score_map(params, cfg: SageConfig, chains: Chains, truth: Truth, attribution_map: Array, *, k: int, key: Array,
              n_random: int = 4, batch_size: Optional[int] = None) -> MapScores:
    """Scores one map `[N, S + 1, T]` against `truth` (module docstring). `key` draws the random deletions;
    pass the same key for every map so that all face the same random baseline."""
    s = chains.encoded.steps.mask.shape[1]
    return _score(params, cfg, jnp.asarray(chains.encoded.tokens), chains.targets.mask, jnp.asarray(attribution_map),
                  truth.substitution.tested, truth.substitution.dependencies(), truth.substitution.effect,
                  jax.random.split(key, chains.encoded.tokens.shape[0]), k=k, n_random=n_random, n_steps=s,
                  batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("cfg", "k", "n_random", "n_steps", "batch_size"))
def _score(params, cfg, tokens, targets, maps, tested, deps, effect, keys, *, k, n_random, n_steps, batch_size):
    def one(tokens, targets, score, tested, deps, effect, key):
        step_mask, score = targets[:n_steps], jnp.abs(score)
        rows = score[:n_steps]
        content, context = tested[:n_steps], fa.context_candidates(step_mask)
        deps = deps[:n_steps]
        top_k = jax.vmap(ranking.top_k, (0, 0, None))
        top = top_k(rows, content, k)
        hits = (top & deps).sum(-1)
        precision = hits / jnp.maximum(top.sum(-1), 1)
        recall = jnp.where(deps.sum(-1) > 0, hits / jnp.maximum(deps.sum(-1), 1), jnp.nan)
        chance = deps.sum(-1) / jnp.maximum(content.sum(-1), 1)
        rho = jnp.where(content.sum(-1) >= 2, jax.vmap(ranking.spearman)(rows, effect[:n_steps], content), jnp.nan)
        noise = fa.random_maps(key, step_mask, n_random)
        deleted = jnp.concatenate([top[None], jax.vmap(lambda m: top_k(m, content, k))(noise),
                                   top_k(rows, context, k)[None], jax.vmap(lambda m: top_k(m, context, k))(noise)])
        lp = fa.deleted_log_probs(params, cfg, tokens, step_mask, deleted, batch_size=batch_size)
        drop = baseline_log_probs(params, cfg, tokens, step_mask).step[None] - lp
        aopc = fa.faithfulness(params, cfg, tokens, step_mask, rows, candidates=content,
                               batch_size=batch_size).aopc_comprehensiveness
        return (precision, recall, chance, rho, drop[0], drop[1:1 + n_random].mean(0), drop[1 + n_random],
                drop[2 + n_random:].mean(0), aopc, step_importance(score, targets, n_steps))

    return MapScores(*_per_chain(one, tokens, targets, maps, tested, deps, effect, keys, batch_size=batch_size))


def summarise_scores(chains: Chains, truth: Truth, scores: Mapping[str, MapScores], k: int,
                     steps: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, dict[str, Any]]:
    """One row per map: token-level means over the real rationale steps, and step-level argmax agreement over
    chains of at least two steps with a measured resampling importance (KL; by the answer's accuracy over the
    chains where one step has the largest drop, `_accuracy_anchor`; and, separately, suppression).

    The content deletion ratio is taken over the steps with more than `k` content candidates: where a step has
    `k` or fewer, its top `k` and any `k` random ones are the same tokens and the ratio is 1 by construction
    (a one-step chained sum: `a + b`). The ratio over every step stays beside it
    (`deletion_ratio_content_every_step`).

    `steps` gives a row's step ranking `[N, S]` from another analysis than its map's mass (`explain`'s default:
    `alternative_steps`); the map's own agreement with resampling stays beside it
    (`step_agreement_resampling_map`).
    """
    valid = np.asarray(chains.encoded.steps.mask).any(-1)
    s = valid.shape[1]
    choice = valid & (np.asarray(truth.substitution.tested)[:, :s].sum(-1) > k)
    multi, resampled, resample_best, suppress_best = _anchor_steps(chains, truth)
    decided, accuracy_best = _accuracy_anchor(chains, truth)
    steps = steps or {}

    def best_step(importance):
        return np.argmax(np.where(valid, np.nan_to_num(importance, nan=-np.inf), -np.inf), axis=1)

    def agreement(best, anchor, chains_):
        return float((best == anchor)[chains_].mean()) if chains_.any() else None

    table = {}
    for name, m in scores.items():
        m = jax.tree_util.tree_map(np.asarray, m)
        top, rand = nanmean_or_none(m.drop_top[choice]), nanmean_or_none(m.drop_random[choice])  # None: no choice
        top_every, rand_every = m.drop_top[valid].mean(), m.drop_random[valid].mean()
        top_all, rand_all = m.drop_top_all[valid].mean(), m.drop_random_all[valid].mean()
        best = best_step(steps[name] if name in steps else m.step_importance)
        table[name] = {
            "precision_at_k": float(m.precision[valid].mean()), "recall_at_k": nanmean_or_none(m.recall[valid]),
            "chance_precision_at_k": float(m.chance[valid].mean()), "spearman": nanmean_or_none(m.spearman[valid]),
            "deletion_ratio_content": top / rand if top is not None and rand > 0 else None,
            "deletion_ratio_content_every_step": float(top_every / rand_every) if rand_every > 0 else None,
            "deletion_ratio_all": float(top_all / rand_all) if rand_all > 0 else None,
            "drop_top_k_content": top, "drop_random_k_content": rand,
            "aopc_content": float(m.aopc[valid].mean()),
            "step_agreement_resampling": agreement(best, resample_best, resampled),
            "step_agreement_resampling_accuracy": agreement(best, accuracy_best, decided),
            "step_agreement_suppression": agreement(best, suppress_best, multi),
            "chains_resampling": int(resampled.sum()), "chains_resampling_accuracy": int(decided.sum()),
            "chains_multi_step": int(multi.sum()), "steps": int(valid.sum()), "steps_with_a_choice": int(choice.sum())}
        if name in steps:
            table[name]["step_agreement_resampling_map"] = agreement(best_step(m.step_importance), resample_best,
                                                                     resampled)
    return table


class Measured(NamedTuple):
    """`measure`'s result: the chains, their truth, every map `[N, S + 1, T]` and the table
    (`summarise_scores`: one row per map)."""

    chains: Chains
    truth: Truth
    maps: dict[str, Array]
    table: dict[str, dict[str, Any]]


def measure(params, cfg: SageConfig, codec: Codec, examples: Sequence[Example], *, key: Array, k: int = 3,
            layout: Layout = SAGE, methods: Sequence[str] = DEFAULT_METHODS, inverse_params=None,
            n_substitutes: int = 8, n_rollouts: int = 16, max_rollouts: Optional[int] = None,
            batch_size: Optional[int] = None,
            step_alternatives: int = ExplainConfig().step_alternatives,
            step_samples: int = ExplainConfig().step_samples,
            log: Optional[Callable[[str], None]] = None) -> Measured:
    """The whole table for one model: the examples' true chains in `layout`, their counterfactual truth, and
    every map of `methods` (with explain's default, and the IAL's when `inverse_params`) scored against it.

    `key` draws the substitutes and rollouts, and (split off) the random deletions every map is compared with;
    `n_rollouts` and `max_rollouts` are `counterfactual_truth`'s;
    `step_alternatives` and `step_samples` (`ExplainConfig`'s; 0 alternatives: the map's mass) rank the default
    row's steps, their continuations drawn from `fold_in(key, 1)`;
    `batch_size` chunks the substituted and deleted forward passes and takes the chains one at a time (a large
    vocabulary needs it: each pass holds `[T, V]` logits); `log` receives a progress line after each part.
    """
    say, start = log or (lambda line: None), time.perf_counter()
    chains = encode_chains(codec, examples, layout)
    truth_key, score_key = jax.random.split(key)
    table = cf.substitution_table(codec, layout)
    found = counterfactual_truth(params, cfg, codec, chains, key=truth_key, n_substitutes=n_substitutes,
                                 n_rollouts=n_rollouts, max_rollouts=max_rollouts, table=table, layout=layout,
                                 batch_size=batch_size, log=log)
    maps = jax.block_until_ready(attribution_maps(params, cfg, chains, methods, inverse_params=inverse_params,
                                                  table=table, batch_size=batch_size))
    say(f"truth: {len(maps)} maps, {_since(start)}")
    scores = {}
    for i, (name, m) in enumerate(maps.items()):
        scores[name] = jax.block_until_ready(score_map(params, cfg, chains, found, m, k=k, key=score_key,
                                                       batch_size=batch_size))
        say(f"truth: scored {name!r} ({i + 1}/{len(maps)}), {_since(start)}")
    ranked = {}
    if step_alternatives:
        ranked[EXPLAIN_DEFAULT] = alternative_steps(params, cfg, codec, chains, key=jax.random.fold_in(key, 1),
                                                    alternatives=step_alternatives, samples=step_samples,
                                                    layout=layout)
        say(f"truth: steps ranked by their alternatives, {_since(start)}")
    return Measured(chains, found, maps, summarise_scores(chains, found, scores, k, steps=ranked))


def alternative_steps(params, cfg: SageConfig, codec: Codec, chains: Chains, *, key: Array, alternatives: int,
                      samples: int, layout: Layout = SAGE) -> np.ndarray:
    """`[N, S]` each step's importance for the answer from the model's alternatives to it
    (`alternatives.alternative_importance`, chain `i`'s continuations drawn from `fold_in(key, i)`); NaN for
    chains of one step (nothing to rank) and padding."""
    n, s = chains.encoded.steps.mask.shape[:2]
    out = np.full((n, s), np.nan)
    width = max(spans[-1][1] for spans in chains.spans) + 1  # one decode shape per step count
    rollout = min(chains.encoded.tokens.shape[1] - min(spans[0][0] for spans in chains.spans) + 8,
                  cfg.max_seq_len - width)
    for i, (row, spans) in enumerate(zip(chains.encoded.tokens, chains.spans)):
        if len(spans) >= 2:
            length = int(chains.answer[i].nonzero()[0][-1]) + 2  # through the answer and its end token
            out[i, :len(spans)] = alternative_importance(params, cfg, codec, row[:length], spans,
                                                         key=jax.random.fold_in(key, i), alternatives=alternatives,
                                                         samples=samples, layout=layout, max_new_tokens=rollout,
                                                         width=width).importance
    return out


def _since(start: float) -> str:
    return f"{time.perf_counter() - start:.0f} s in"


def truth_summary(chains: Chains, truth: Truth) -> dict[str, Any]:
    """What the truth itself looks like: dependencies per step, the share of data dependencies the model's
    counterfactual behaviour confirms, how often resampling could rewrite a step (and with how many rollouts,
    on average, where it could), and how often each step-level truth's most important step is the chain's
    last: what a map that always names the last step would score in the step columns (None without a chain of
    2+ steps)."""
    valid = np.asarray(chains.encoded.steps.mask).any(-1)
    s = valid.shape[1]
    deps = np.asarray(truth.substitution.dependencies())[:, :s]
    tested = np.asarray(truth.substitution.tested)[:, :s]
    data = chains.encoded.deps & tested
    multi, resampled, resample_best, suppress_best = _anchor_steps(chains, truth)
    decided, accuracy_best = _accuracy_anchor(chains, truth)
    last = chains.encoded.n_steps - 1
    rewritten = valid & (truth.resampling_replaced > 0)
    return {"steps": int(valid.sum()), "content_candidates_per_step": float(tested[valid].sum(-1).mean()),
            "dependencies_per_step": float(deps[valid].sum(-1).mean()),
            "data_dependencies_confirmed": float((deps & data)[valid].sum() / max(data[valid].sum(), 1)),
            "counterfactual_dependencies_in_data": float((deps & data)[valid].sum() / max(deps[valid].sum(), 1)),
            "steps_resampled_differently": float((truth.resampling_replaced[valid] > 0).mean()),
            "rollouts_per_resampled_step": float(truth.resampling_replaced[rewritten].mean()) if rewritten.any()
            else None,
            "last_step_is_resampling_anchor": float((resample_best == last)[resampled].mean()) if resampled.any()
            else None,
            "last_step_is_resampling_accuracy_anchor": float((accuracy_best == last)[decided].mean())
            if decided.any() else None,
            "last_step_is_suppression_anchor": float((suppress_best == last)[multi].mean()) if multi.any() else None}


def _anchor_steps(chains: Chains, truth: Truth) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`([N] chains of 2+ steps, [N] those with a measured resampling importance, [N] the step of highest
    resampling importance, [N] the step whose suppression moves the answer most)`."""
    valid = np.asarray(chains.encoded.steps.mask).any(-1)
    multi = chains.encoded.n_steps >= 2
    resampled = multi & ~np.all(np.isnan(np.where(valid, truth.resampling, np.nan)), axis=1)
    resample_best = np.nanargmax(np.where(valid & resampled[:, None], np.nan_to_num(truth.resampling, nan=-1.0),
                                          -np.inf), axis=1)
    suppress_best = np.argmax(np.where(valid, np.asarray(truth.suppression.answer), -np.inf), axis=1)
    return multi, resampled, resample_best, suppress_best


def _accuracy_anchor(chains: Chains, truth: Truth) -> tuple[np.ndarray, np.ndarray]:
    """`([N] chains of 2+ steps whose largest resampling accuracy drop belongs to one step, [N] that step)`.

    Replacing a chained sum's step often makes every rollout wrong, so several steps tie at the largest drop;
    the KL then orders them by how many different wrong answers the rollouts reach (add-one smoothing over the
    answers seen: one wrong answer 16 times scores higher than four), which says nothing about which step
    the answer rests on. A chain with a tie has no accuracy anchor and is left out, not counted as agreeing.
    """
    valid = np.asarray(chains.encoded.steps.mask).any(-1)
    drop = np.where(valid & ~np.isnan(truth.resampling_accuracy_drop), truth.resampling_accuracy_drop, -np.inf)
    top = drop.max(axis=1, keepdims=True)
    decided = (chains.encoded.n_steps >= 2) & np.isfinite(top[:, 0]) & ((drop == top).sum(axis=1) == 1)
    return decided, np.argmax(drop, axis=1)


def format_scores(table: Mapping[str, Mapping[str, Any]], k: int) -> str:
    """A plain-text table of `summarise_scores`: one line per map."""
    head = (f"{'map':<22} {f'P@{k} (chance)':>14} {f'R@{k}':>5} {'Spearman':>8} {'del. content':>12} "
            f"{'del. all':>8} {'AOPC':>6} {'step=resample':>13} {'(accuracy)':>10} {'step=suppress':>13}")
    lines = [head]
    for name, row in table.items():
        lines.append(f"{name:<22} {row['precision_at_k']:>7.2f} ({row['chance_precision_at_k']:.2f}) "
                     f"{format_value(row['recall_at_k']):>5} {format_value(row['spearman']):>8} "
                     f"{format_value(row['deletion_ratio_content']):>12} {format_value(row['deletion_ratio_all']):>8} "
                     f"{row['aopc_content']:>6.2f} {format_value(row['step_agreement_resampling']):>13} "
                     f"{format_value(row['step_agreement_resampling_accuracy']):>10} "
                     f"{format_value(row['step_agreement_suppression']):>13}")
    return "\n".join(lines)


def format_rollouts(table: Mapping[str, Any]) -> str:
    """How many rollouts per prefix a truth table's resampling drew (an `evaluate_truth`-like dict)."""
    n, most = table["n_rollouts"], table.get("max_rollouts")
    if most is None or most <= n:
        return f"{n} rollouts per prefix"
    drawn = table["truth"].get("rollouts_per_resampled_step")
    mean = "" if drawn is None else f", {drawn:.0f} on average"
    return f"{n}-{most} rollouts per prefix (rounds of {n} while the most important step is uncertain{mean})"


def format_value(value: Optional[float]) -> str:
    """A score with two decimals, "n/a" for None or NaN (a measure with nothing to measure)."""
    return "n/a" if value is None or np.isnan(value) else f"{value:.2f}"
