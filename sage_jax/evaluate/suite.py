"""The evaluation suite of a curriculum run: answer accuracy on held-out procedural problems by number of
steps (with how many of them the training source also held), accuracy on reasoning-gym tasks with each
task's own scorer, and the meta head's calibration error on held-out batches of the evaluated stage;
`evaluate_explanations` adds the explanation metrics (faithfulness and dependency recovery of the exact
significance map, also over content tokens only; the exact path's consistency; the Inverse Analysis Layer
against the exact path when its parameters are given; how often the model's own generated explanations name
what the exact analysis finds); `evaluate_truth` scores every attribution map against the model's own
counterfactual behaviour; `evaluate_datasets` scores GSM8K / AQUA-RAT / LogiQA data with their scorers.

It reads checkpoints through `sage_jax.train.curriculum`, so it is imported as `sage_jax.evaluate.suite`
(the package `__init__` does not import it: the curriculum itself uses `sage_jax.evaluate.teacher_forced`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from sage_jax.data.explanations import explain_dependencies
from sage_jax.data.gym import GymSource
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate import truth
from sage_jax.evaluate.accuracy import accuracy_by, predict
from sage_jax.evaluate.consistency import amortised_agreement, exact_consistency, summarise_amortised
from sage_jax.evaluate.datasets import dataset_accuracy, load_dataset
from sage_jax.evaluate.explanations import encode_true_chains, explanation_metrics, format_summary, summarise
from sage_jax.evaluate.generated import compare, generate_explanations
from sage_jax.evaluate.heldout import procedural_by_difficulty
from sage_jax.train.curriculum.config import CurriculumConfig
from sage_jax.train.curriculum.data import build_sources
from sage_jax.train.curriculum.handoff import final_state
from sage_jax.train.curriculum.stages import HeldOutEvaluator

_PROCEDURAL = ("chain_sum", "variable_chain")


def training_questions(cfg: CurriculumConfig, task: str) -> set[str]:
    """The questions of every stage's training source of `procedural/<task>` (an upper bound of what was seen)."""
    questions: set[str] = set()
    for stage in cfg.stages:
        for spec, source in zip(stage.mixture.sources, build_sources(cfg, stage.mixture, cfg.seed)):
            if spec.name == f"procedural/{task}":
                questions.update(source[i].question for i in range(len(source)))
    return questions


def trained_steps(cfg: CurriculumConfig, eval_cfg: Mapping[str, Any]) -> list[int]:
    """The evaluated numbers of steps that the training task's knobs can draw (chained sums of `n` terms have
    `n - 1` steps), in the order of `eval_cfg["steps"]`; the rest are generalisation probes."""
    task = eval_cfg["procedural"]
    if task not in _PROCEDURAL:
        raise ValueError(f"eval.procedural={task!r}; choose one of {_PROCEDURAL}")
    if task == "chain_sum":
        low, high = cfg.chain_sum.n_terms[0] - 1, cfg.chain_sum.n_terms[1] - 1
    else:
        low, high = cfg.variable_chain.n_steps
    return [s for s in eval_cfg["steps"] if low <= s <= high]


def evaluate_run(cfg: CurriculumConfig, eval_cfg: Mapping[str, Any], stage: Optional[int] = None) -> dict:
    """Accuracy by difficulty, per gym task, and calibration of stage `stage`'s final parameters.

    Args:
      cfg: the curriculum whose run to evaluate.
      eval_cfg: the config's `eval` section (`procedural`, `steps`, `per_difficulty`, `max_new_tokens`,
        `batch_size`, `gym_tasks` (comma-separated), `gym_size`, `seed`).
      stage: which stage's final parameters (default: the last).
    """
    stage = cfg.stages[-1].stage if stage is None else stage
    if eval_cfg["procedural"] not in _PROCEDURAL:
        raise ValueError(f"eval.procedural={eval_cfg['procedural']!r}; choose one of {_PROCEDURAL}")
    params = final_state(cfg, stage).params
    tokenizer = Tokenizer.load(cfg.model.vocab_size)
    task = eval_cfg["procedural"]
    held_out = procedural_by_difficulty(getattr(cfg, task), tuple(eval_cfg["steps"]), eval_cfg["per_difficulty"],
                                        seed=eval_cfg["seed"], training_questions=training_questions(cfg, task))
    generation = dict(max_new_tokens=eval_cfg["max_new_tokens"], batch_size=eval_cfg["batch_size"])
    predictions = predict(params, cfg.model, tokenizer, held_out.examples, **generation)
    by_steps = accuracy_by(predictions, key=lambda ex: len(ex.steps))
    for steps, row in by_steps.items():
        row["seen_in_training"] = held_out.seen[steps]
    gym = {}
    for name in filter(None, (t.strip() for t in eval_cfg["gym_tasks"].split(","))):
        source = GymSource(name, size=eval_cfg["gym_size"], seed=eval_cfg["seed"])
        examples = [source[i] for i in range(len(source))]
        scored = predict(params, cfg.model, tokenizer, examples,
                         scorer=lambda ex, answer, source=source: source.score(ex, answer or ""), **generation)
        gym[name] = accuracy_by(scored, key=lambda ex: "all")["all"]
    calibration = HeldOutEvaluator(cfg, cfg.stage(stage), tokenizer)(params)
    return {"stage": stage, "procedural_task": task, "accuracy_by_steps": {int(k): v for k, v in by_steps.items()},
            "gym": gym, "teacher_forced": calibration,
            "examples": [{"question": p.example.question, "answer": p.example.answer,
                          "generated": tokenizer.render(p.generated), "score": p.score} for p in predictions[:5]]}


def evaluate_explanations(cfg: CurriculumConfig, params, tokenizer: Tokenizer, eval_cfg: Mapping[str, Any], *,
                          per_difficulty: int, k: int, n_random: int = 4, inverse_params=None,
                          explanation_tokens: int = 96, consistency_threshold: float = 0.8) -> dict:
    """Explanation metrics of `params` on held-out procedural problems, teacher-forced on their true chains.

    The problems are the first `per_difficulty` of each difficulty of the accuracy evaluation (same task,
    steps and seed as `evaluate_run`); the random deletions and maps are drawn with
    `jax.random.key(eval_cfg["seed"])`.

    Args:
      cfg, params, tokenizer: the run and its parameters.
      eval_cfg: the config's `eval` section.
      per_difficulty: problems per number of steps.
      k: tokens deleted per step; the `k` of precision/recall at `k` and of the top-`k` comparisons.
      n_random: random draws of the deletion baseline.
      inverse_params: trained Inverse Analysis Layer parameters, or None ("not trained" is reported).
      explanation_tokens: generation budget of the model's own explanations.
      consistency_threshold: the exact-path consistency below which `explain` would refine.

    Returns:
      `{"k", "n_random", "per_difficulty", "by_steps": summarise(...), "exact_consistency",
      "amortised", "generated_explanations"}`.
    """
    task = eval_cfg["procedural"]
    if task not in _PROCEDURAL:
        raise ValueError(f"eval.procedural={task!r}; choose one of {_PROCEDURAL}")
    examples = procedural_by_difficulty(getattr(cfg, task), tuple(eval_cfg["steps"]), per_difficulty,
                                        seed=eval_cfg["seed"]).examples
    metrics = explanation_metrics(params, cfg.model, tokenizer, examples, k=k, n_random=n_random,
                                  key=jax.random.key(eval_cfg["seed"]))
    encoded = encode_true_chains(tokenizer, examples)
    scores = np.asarray(exact_consistency(params, cfg.model, encoded))
    n_steps = np.asarray(encoded.n_steps)
    exact = {"mean": float(scores.mean()), "threshold": consistency_threshold,
             "below_threshold": float((scores < consistency_threshold).mean()),
             "by_steps": {int(n): float(scores[n_steps == n].mean()) for n in sorted(set(n_steps.tolist()))}}
    if inverse_params is None:
        amortised = {"status": "not trained", "reason": "the run has no Inverse Analysis Layer parameters"}
    else:
        amortised = {"status": "trained", **summarise_amortised(
            amortised_agreement(params, inverse_params, cfg.model, encoded, metrics.attribution, k=k))}
    texts = generate_explanations(params, cfg.model, tokenizer, examples, max_new_tokens=explanation_tokens,
                                  batch_size=max(1, min(len(examples), eval_cfg["batch_size"])))
    generated = compare(tokenizer, examples, texts, encoded, np.asarray(metrics.attribution), k=k)
    generated["examples"] = [{"question": ex.question, "generated": text, "true": explain_dependencies(ex)}
                             for ex, text in list(zip(examples, texts))[-2:]]
    return {"k": k, "n_random": n_random, "per_difficulty": per_difficulty, "by_steps": summarise(metrics, k),
            "exact_consistency": exact, "amortised": amortised, "generated_explanations": generated}


def evaluate_truth(cfg: CurriculumConfig, params, tokenizer: Tokenizer, eval_cfg: Mapping[str, Any], *,
                   steps: Sequence[int], per_difficulty: int, k: int, inverse_params=None, n_substitutes: int = 8,
                   n_rollouts: int = 16, max_rollouts: Optional[int] = 64,
                   methods: Sequence[str] = truth.DEFAULT_METHODS,
                   explanation_tokens: int = 96, log: Optional[Callable[[str], None]] = None) -> dict:
    """Every attribution map scored against the model's own counterfactual behaviour (`sage_jax.evaluate.truth`).

    The problems are the first `per_difficulty` of each of `steps` (the difficulties the model was trained on:
    the goals are about a model that computes) from the accuracy evaluation's task and seed; the substitutes,
    rollouts and random deletions are drawn from `jax.random.key(eval_cfg["seed"])`; rollouts come in rounds of
    `n_rollouts`, up to `max_rollouts` where the most important step is still uncertain (`truth.measure`): two
    16-rollout draws of the truth name the same step in 67-80% of the demo model's chains, and the rounds nearly
    reach the agreement of 64 (0.79 against 0.81 of 180 chains) with half the rollouts; `log` receives the
    table's progress lines.

    Returns:
      `{"k", "per_difficulty", "steps", "n_substitutes", "n_rollouts", "max_rollouts", "truth": truth_summary(...),
      "maps": {method: row}, "written_explanations": compare(...)}`: "sage" is Eq. 7 as the paper writes it,
      `truth.EXPLAIN_DEFAULT` the map `explain` reports by default;
      the last is the model's own explanations of the same chains, with the share of their claims that the
      counterfactual truth confirms (`claims_confirmed`; `generated.compare`).
    """
    task = eval_cfg["procedural"]
    if task not in _PROCEDURAL:
        raise ValueError(f"eval.procedural={task!r}; choose one of {_PROCEDURAL}")
    examples = procedural_by_difficulty(getattr(cfg, task), tuple(steps), per_difficulty,
                                        seed=eval_cfg["seed"]).examples
    measured = truth.measure(params, cfg.model, tokenizer, examples, key=jax.random.key(eval_cfg["seed"]), k=k,
                             methods=methods, inverse_params=inverse_params, n_substitutes=n_substitutes,
                             n_rollouts=n_rollouts, max_rollouts=max_rollouts, log=log)
    texts = generate_explanations(params, cfg.model, tokenizer, examples, max_new_tokens=explanation_tokens,
                                  batch_size=max(1, min(len(examples), eval_cfg["batch_size"])))
    encoded = measured.chains.encoded
    s = encoded.steps.mask.shape[1]
    written = compare(tokenizer, examples, texts, encoded, np.asarray(measured.maps[truth.EXPLAIN_DEFAULT])[:, :s],
                      k=k, truth=np.asarray(measured.truth.substitution.dependencies())[:, :s])
    return {"k": k, "per_difficulty": per_difficulty, "steps": list(steps), "n_substitutes": n_substitutes,
            "n_rollouts": n_rollouts, "max_rollouts": max_rollouts,
            "truth": truth.truth_summary(measured.chains, measured.truth), "maps": measured.table,
            "written_explanations": written}


def evaluate_datasets(model, params, tokenizer: Tokenizer, specs: Sequence[str], *, data_dir: Optional[str] = None,
                      limit: Optional[int] = None, max_new_tokens: int, batch_size: int) -> dict[str, dict]:
    """`{spec: dataset_accuracy(...)}` for each dataset spec (`sage_jax.evaluate.datasets.load_dataset`)."""
    return {spec: dataset_accuracy(params, model, tokenizer, load_dataset(spec, data_dir=data_dir, limit=limit),
                                   max_new_tokens=max_new_tokens, batch_size=batch_size) for spec in specs}


def format_table(results: Mapping[str, Any]) -> str:
    """A plain-text table of the results."""
    lines = [f"{'steps':>5}  {'n':>4}  {'accuracy':>8}  {'answered':>8}  {'seen in training':>16}"]
    for steps, row in results["accuracy_by_steps"].items():
        lines.append(f"{steps:>5}  {row['n']:>4}  {100 * row['accuracy']:>7.1f}%  {100 * row['answered']:>7.1f}%  "
                     f"{100 * row['seen_in_training']:>15.1f}%")
    for task, row in results["gym"].items():
        lines.append(f"gym/{task}: accuracy {100 * row['accuracy']:.1f}% of {row['n']} (its own scorer)")
    tf = results["teacher_forced"]
    lines.append(f"meta-head calibration error (ECE, 10 bins) {tf['meta_ece']:.3f} at mean confidence "
                 f"{tf['meta_confidence']:.3f}; teacher-forced token accuracy {100 * tf['reasoning_accuracy']:.1f}%")
    for spec, row in results.get("datasets", {}).items():
        accuracy = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(f"{spec}: accuracy {accuracy} of {row['n']} ({row['scorer']}); {row['too_long']} longer than "
                     "the context, not generated for")
    if "explanations" in results:
        lines.append(_format_explanations(results["explanations"]))
    if "truth" in results:
        lines.append(_format_truth(results["truth"]))
    return "\n".join(lines)


def _map_step_agreement(maps: Mapping[str, Mapping[str, Any]]) -> str:
    """The default map's own step agreement with resampling, when its step columns come from elsewhere."""
    return truth.format_value(maps.get(truth.EXPLAIN_DEFAULT, {}).get("step_agreement_resampling_map"))


def _format_truth(ex: Mapping[str, Any]) -> str:
    t, w = ex["truth"], ex["written_explanations"]
    percent = lambda share: "n/a" if share is None else f"{100 * share:.0f}%"  # noqa: E731
    return "\n".join([
        f"\nmaps against the model's counterfactual behaviour ({ex['per_difficulty']} true chains per difficulty "
        f"{ex['steps']}; {ex['n_substitutes']} substitutes per token, {truth.format_rollouts(ex)}): a token "
        "is a dependency of a step when most of its substitutes change the step's greedy tokens "
        f"({t['dependencies_per_step']:.1f} of {t['content_candidates_per_step']:.1f} content candidates per step; "
        f"{100 * t['data_dependencies_confirmed']:.0f}% of the data's dependencies confirmed, "
        f"{100 * t['counterfactual_dependencies_in_data']:.0f}% of the found ones in the data). Content tokens only "
        "(sink and format tokens are never candidates); 'del. all' is the unrestricted deletion ratio; step = the "
        "map's most important step equals resampling importance's (KL; then by the answer's accuracy, over the "
        "chains where one step has the largest drop; on the demo's model two 16-rollout draws of the truth name "
        "the same step in 67-80% of chains, 64-rollout draws in 77-93%, and rounds of 16 drawn while a chain's "
        "most important step is uncertain nearly match 64 with half the rollouts: --truth_rollouts, "
        "--truth_max_rollouts) / suppression's "
        "(chains of 2+ steps; naming the last step "
        f"always would score {truth.format_value(t['last_step_is_resampling_anchor'])} / "
        f"{truth.format_value(t['last_step_is_resampling_accuracy_anchor'])} / "
        f"{truth.format_value(t['last_step_is_suppression_anchor'])}); "
        f"'sage' is Eq. 7 as the paper writes it, '{truth.EXPLAIN_DEFAULT}' what explain() reports by default (Eq. 7 "
        "with counterfactual substitution weights: its agreement with the substitution truth is partly by "
        "construction; the deletion columns are the independent check). Its step columns rank steps by the "
        "model's own alternatives (the answer's drop under each step's most probable rewrites, each continued by "
        "sampling: "
        "partly by construction too, suppression is the check); read from its map's mass it would score "
        f"{_map_step_agreement(ex['maps'])} by resampling",
        truth.format_scores(ex["maps"], ex["k"]),
        f"model's own explanations of these chains: {w['founded_claims']} founded claims ({w['unfounded_claims']} "
        f"unfounded); confirmed by the counterfactual truth: {percent(w['claims_confirmed'])} of the "
        f"{w['tested_claims']} claims that name a content token ({w['untestable_claims']} name none), "
        f"{percent(w['counterfactual_confirmed_content'])} of the {w['claimed_content_tokens']} content tokens they "
        f"name, {percent(w['counterfactual_confirmed'])} of all {w['claimed_tokens']} tokens"])


def _format_explanations(ex: Mapping[str, Any]) -> str:
    k = ex["k"]
    lines = [f"\nexact significance on the true chains ({ex['per_difficulty']} problems per difficulty): log-prob "
             f"drop deleting each step's top-{k} tokens vs {k} random ones (mean of {ex['n_random']} draws), ratio, "
             f"AOPC vs random maps, dependency precision/recall at {k}; then the same precision/recall with format "
             "tokens (special tokens, '=?', '=', ...) excluded from the candidates, reported separately",
             format_summary(ex["by_steps"])]
    exact = ex["exact_consistency"]
    lines.append(f"exact-path consistency (attention vs rollout map agreement, explain's score): mean "
                 f"{exact['mean']:.3f}; below {exact['threshold']}: {100 * exact['below_threshold']:.0f}% of problems")
    amortised = ex["amortised"]
    if amortised["status"] == "trained":
        lines.append(f"amortised (Inverse Analysis Layer) vs exact: consistency {amortised['consistency']:.3f} "
                     f"(fidelity {amortised['fidelity']:.3f}, map agreement {amortised['map_agreement']:.3f}); "
                     f"rank correlation {amortised['rank_correlation']:.2f}; top-{k} overlap "
                     f"{amortised['top_k_overlap']:.2f}")
    else:
        lines.append(f"amortised (Inverse Analysis Layer) vs exact: {amortised['status']} ({amortised['reason']})")
    g = ex["generated_explanations"]
    rate = lambda x: "n/a" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    lines.append(f"model's own explanations (<explain> after the true chain, {g['steps']} steps): name "
                 f"{rate(g['named_exact_top_k'])} of the exact top-{k} tokens, {rate(g['named_exact_top_k_content'])} "
                 f"of the content-only top-{k}; steps with a founded claim {rate(g['steps_with_claims'])}; vs true "
                 f"dependencies precision {rate(g['true_dependency_precision'])}, recall "
                 f"{rate(g['true_dependency_recall'])}; claims founded {g['founded_claims']}, unfounded "
                 f"{g['unfounded_claims']}; not generated (no room) {g['not_generated']}")
    return "\n".join(lines)
