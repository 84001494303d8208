"""The evaluation suite of a curriculum run: answer accuracy on held-out procedural problems by number of
steps (with how many of them the training source also held), accuracy on reasoning-gym tasks with each
task's own scorer, and the meta head's calibration error on held-out batches of the evaluated stage;
`evaluate_explanations` adds the faithfulness and dependency recovery of the exact significance map.

It reads checkpoints through `sage_jax.train.curriculum`, so it is imported as `sage_jax.evaluate.suite`
(the package `__init__` does not import it: the curriculum itself uses `sage_jax.evaluate.teacher_forced`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax

from sage_jax.data.gym import GymSource
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate.accuracy import accuracy_by, predict
from sage_jax.evaluate.explanations import explanation_metrics, format_summary, summarise
from sage_jax.evaluate.heldout import procedural_by_difficulty
from sage_jax.train.curriculum import CurriculumConfig, HeldOutEvaluator, build_sources, final_state

_PROCEDURAL = ("chain_sum", "variable_chain")


def training_questions(cfg: CurriculumConfig, task: str) -> set[str]:
    """The questions of every stage's training source of `procedural/<task>` (an upper bound of what was seen)."""
    questions: set[str] = set()
    for stage in cfg.stages:
        for spec, source in zip(stage.mixture.sources, build_sources(cfg, stage.mixture, cfg.seed)):
            if spec.name == f"procedural/{task}":
                questions.update(source[i].question for i in range(len(source)))
    return questions


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
                          per_difficulty: int, k: int, n_random: int = 4) -> dict:
    """Explanation metrics (`sage_jax.evaluate.explanations`) of `params` by number of steps.

    The problems are the first `per_difficulty` of each difficulty of the accuracy evaluation (same task,
    steps and seed as `evaluate_run`), teacher-forced on their true chains; the random deletions and maps are
    drawn with `jax.random.key(eval_cfg["seed"])`.

    Returns:
      `{"k", "n_random", "per_difficulty", "by_steps": summarise(...)}`.
    """
    task = eval_cfg["procedural"]
    if task not in _PROCEDURAL:
        raise ValueError(f"eval.procedural={task!r}; choose one of {_PROCEDURAL}")
    held_out = procedural_by_difficulty(getattr(cfg, task), tuple(eval_cfg["steps"]), per_difficulty,
                                        seed=eval_cfg["seed"])
    metrics = explanation_metrics(params, cfg.model, tokenizer, held_out.examples, k=k, n_random=n_random,
                                  key=jax.random.key(eval_cfg["seed"]))
    return {"k": k, "n_random": n_random, "per_difficulty": per_difficulty, "by_steps": summarise(metrics, k)}


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
    if "explanations" in results:
        ex = results["explanations"]
        lines.append(f"\nexact significance on the true chains ({ex['per_difficulty']} problems per difficulty): "
                     f"log-prob drop deleting each step's top-{ex['k']} tokens vs {ex['k']} random ones "
                     f"(mean of {ex['n_random']} draws), ratio, AOPC vs random maps, dependency precision/recall "
                     f"at {ex['k']}")
        lines.append(format_summary(ex["by_steps"]))
    return "\n".join(lines)
