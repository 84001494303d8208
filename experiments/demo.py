r"""`make demo`: train `tiny` through the three-stage curriculum on offline chained sums, evaluate it on held-out
problems by number of steps, measure how faithful its exact significance maps are and whether they recover the
true step dependencies, and explain a few of its own chains (decision points, alternatives, dependencies).

    python -m experiments.demo                                   # the whole run (resumes when re-run)
    python -m experiments.demo --config.stage2.steps=300         # any config field can be overridden

Everything goes under `--workdir` (default `runs/demo/`): `config.json` (the config, so that
`sage_jax.load_run(workdir)` loads the run), `stage<N>/ckpt` and `stage<N>/logs` (metrics.jsonl and TensorBoard
events), and `report/` (`metrics.json`, `report.md`, `explanation_<i>.{md,html,json}` and the figures of
`sage_jax.viz.save_report_figures`). A re-run resumes unfinished stages from their
latest checkpoints, skips finished ones, and evaluates again.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
from absl import app, flags
from absl import logging as absl_logging

from experiments.config_file import define_config_file
import sage_jax as sj
from sage_jax.evaluate import procedural_by_difficulty
from sage_jax.evaluate.suite import (evaluate_explanations, evaluate_run, evaluate_truth, format_table,
                                    trained_steps)
from sage_jax.interpret import ExplainConfig, Explanation, explain
from sage_jax.train import curriculum_from_dict
from sage_jax.train.run import train_run
from sage_jax.viz import save_report_figures

_CONFIG = define_config_file("config", "experiments/configs/tiny.py", "Curriculum config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where checkpoints, logs and the report go.")
_EXPLAIN = flags.DEFINE_integer("explain", 2, "Held-out problems to explain (hardest trained difficulties first).")
_METRIC_PROBLEMS = flags.DEFINE_integer("metric_problems", 5, "Problems per difficulty for the explanation metrics.")
_METRIC_K = flags.DEFINE_integer(
    "metric_k", 3, "Tokens deleted per step, and the k of dependency precision/recall at k (3: the fewest true "
    "dependencies a chained-sum step has, so precision 1 is attainable at every step).")


def explain_problems(cfg, params, tokenizer, examples, report: pathlib.Path) -> list[Explanation]:
    """Generates each problem's chain, explains it (`sage_jax.interpret.explain`, exact path, with the greedy
    continuation of every alternative and, where the chain reaches an answer, its anchor step measured by
    resampling beside the analysis's most important step), and writes `explanation_<i>.{md,html,json}` into
    `report`."""
    explanations = []
    for i, example in enumerate(examples):
        explanation = explain(params, cfg, example.question, None, tokenizer=tokenizer,
                              config=ExplainConfig(continuations=True, anchors=True))
        for suffix, text in (("md", explanation.to_markdown()), ("html", explanation.to_html()),
                             ("json", explanation.to_json())):
            (report / f"explanation_{i}.{suffix}").write_text(text)
        explanations.append(explanation)
    return explanations


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    start = time.perf_counter()
    config = _CONFIG.value
    config.workdir = _WORKDIR.value
    cfg = curriculum_from_dict(config.to_dict())
    print(f"SAGE-nano {cfg.model.name!r}: {sj.param_count(cfg.model):,} parameters; curriculum "
          + ", ".join(f"stage {s.stage} {s.steps} steps (B{s.batch_size} x T{s.seq_len})" for s in cfg.stages)
          + f" on {jax.device_count()} {jax.devices()[0].platform} device(s); writing to {cfg.workdir}/")
    train_run(config.to_dict())
    trained = time.perf_counter() - start
    phases = {"train (this invocation)": trained}

    def finished(phase: str) -> None:
        phases[phase] = time.perf_counter() - start - sum(phases.values())

    results = evaluate_run(cfg, config.eval.to_dict())
    finished("held-out accuracy")
    run = sj.load_run(cfg.workdir)
    params, tokenizer = run.params, run.tokenizer
    results["explanations"] = evaluate_explanations(cfg, params, tokenizer, config.eval.to_dict(),
                                                    inverse_params=run.inverse,
                                                    per_difficulty=_METRIC_PROBLEMS.value, k=_METRIC_K.value)
    finished("explanation metrics")
    difficulties = trained_steps(cfg, config.eval.to_dict())
    results["truth"] = evaluate_truth(cfg, params, tokenizer, config.eval.to_dict(), steps=difficulties,
                                      per_difficulty=_METRIC_PROBLEMS.value, k=_METRIC_K.value,
                                      inverse_params=run.inverse, log=lambda line: print(line, flush=True))
    finished("truth table")
    examples = [procedural_by_difficulty(cfg.chain_sum, (steps,), 1, seed=config.eval.seed + 1).examples[0]
                for steps in sorted(difficulties, reverse=True)[: _EXPLAIN.value]]
    report = pathlib.Path(cfg.workdir) / "report"
    report.mkdir(parents=True, exist_ok=True)
    explanations = explain_problems(cfg.model, params, tokenizer, examples, report)
    explained = [f"true chain: {' | '.join(example.steps)} -> {example.answer}\n\n" + explanation.to_markdown()
                 for example, explanation in zip(examples, explanations)]
    figures = save_report_figures(report, params, cfg.model, tokenizer, explanations)
    finished("explained problems and figures")
    total = time.perf_counter() - start
    results["wall_seconds"] = {**phases, "total (this invocation)": total}

    (report / "metrics.json").write_text(json.dumps(results, indent=2))
    table = format_table(results)
    (report / "report.md").write_text(
        "# SAGE-nano demo\n\n## Held-out accuracy (greedy generation, exact answer), calibration and explanation "
        "metrics\n\n```\n" + table
        + "\n```\n\n## Explained problems (also as HTML and JSON beside this file)\n\n"
        + "\n\n".join(explained) + "\n\n## Figures (beside this file)\n\n"
        + "\n".join(f"- `{path.name}`" for path in figures)
        + f"\n\nWall time of this invocation: {total:.0f} s (training {trained:.0f} s).\n")
    print("\n" + table + "\n")
    print("\n\n".join(explained))
    print(f"\nreport: {report}/report.md  metrics: {report}/metrics.json  logs: {cfg.workdir}/stage*/logs "
          f"(tensorboard --logdir {cfg.workdir})  wall time {total:.0f} s ("
          + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items()) + ")")


if __name__ == "__main__":
    app.run(main)
