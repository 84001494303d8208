r"""Evaluate a trained run: answer accuracy on held-out procedural problems by number of steps, on
reasoning-gym tasks and on GSM8K / AQUA-RAT / LogiQA data (each with its own scorer), the meta head's
calibration error, and the explanation metrics (faithfulness vs random, dependency recovery over all and over
content-only candidates, exact-path consistency, amortised-vs-exact agreement, and how often the model's own
generated explanations name what the exact analysis finds).

    python -m experiments.evaluate --workdir=runs/demo \
        --datasets=gsm8k:/data/gsm8k/test.jsonl,prepared/sage_aqua_rat/test --data_dir=/data/prepared
    python -m experiments.evaluate --workdir=runs/demo --config=experiments/configs/tiny.py \
        --config.eval.gym_tasks=chain_sum,basic_arithmetic       # other evaluation settings

Loads the run with `sage_jax.load_run` (its `config.json` says which curriculum trained it) and evaluates the
final parameters of `--stage` (default: the curriculum's last stage) with the `eval` section saved with the run,
or with the `eval` section of `--config` when one is given (nothing else of that file is read). Writes
`<workdir>/eval_stage<N>.json`.
"""

from __future__ import annotations

import json

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import sage_jax as sj
from sage_jax.evaluate import truth
from sage_jax.evaluate.suite import (evaluate_datasets, evaluate_explanations, evaluate_run, evaluate_truth,
                                    format_table, trained_steps)

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory (it holds config.json and stage<N>/ckpt).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional config file whose `eval` section replaces the "
                                          "one saved with the run.")
_STAGE = flags.DEFINE_integer("stage", None, "Evaluate this stage's final parameters (default: the last stage).")
_EXPLANATIONS = flags.DEFINE_boolean("explanations", True, "Also compute the explanation metrics.")
_METRIC_PROBLEMS = flags.DEFINE_integer("metric_problems", 5, "Problems per difficulty for the explanation metrics.")
_METRIC_K = flags.DEFINE_integer("metric_k", 3, "Tokens deleted per step; the k of precision/recall at k.")
_EXPLANATION_TOKENS = flags.DEFINE_integer("explanation_tokens", 96,
                                           "Generation budget of the model's own explanations.")
_TRUTH = flags.DEFINE_boolean("truth", True, "Also score every attribution map against the model's own "
                               "counterfactual behaviour (token substitution, step suppression, resampling).")
_TRUTH_PROBLEMS = flags.DEFINE_integer("truth_problems", 5, "Problems per trained difficulty for --truth.")
_TRUTH_ROLLOUTS = flags.DEFINE_integer("truth_rollouts", 16, "Rollouts per prefix for resampling importance.")
_TRUTH_MAPS = flags.DEFINE_multi_enum("truth_maps", list(truth.DEFAULT_METHODS), list(truth.DEFAULT_METHODS),
                                      "Registered maps that --truth scores (repeat the flag); explain's default "
                                      "and the trained IAL are always scored.")
_DATASETS = flags.DEFINE_list("datasets", [], "Datasets to score: '<format>:<file>' (gsm8k, aqua_rat, logiqa, "
                              "logiqa2 official files) or 'prepared/<builder>/<split>' (with --data_dir).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where prepared datasets live (experiments.data --data_dir).")
_DATASET_LIMIT = flags.DEFINE_integer("dataset_limit", 200, "Problems per dataset at most.")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    run = sj.load_run(_WORKDIR.value, stage=_STAGE.value)
    if _CONFIG.value is not None:
        eval_cfg = _CONFIG.value.eval.to_dict()
    elif "eval" in run.config:
        eval_cfg = run.config["eval"]
    else:
        raise app.UsageError(f"{run.run_dir}/config.json has no `eval` section: pass --config with one "
                             "(e.g. --config=experiments/configs/tiny.py)")
    results = evaluate_run(run.curriculum, eval_cfg, run.stage)
    if _DATASETS.value:
        results["datasets"] = evaluate_datasets(
            run.cfg, run.params, run.tokenizer, _DATASETS.value, data_dir=_DATA_DIR.value,
            limit=_DATASET_LIMIT.value, max_new_tokens=eval_cfg["max_new_tokens"], batch_size=eval_cfg["batch_size"])
    if _EXPLANATIONS.value:
        results["explanations"] = evaluate_explanations(
            run.curriculum, run.params, run.tokenizer, eval_cfg, per_difficulty=_METRIC_PROBLEMS.value,
            k=_METRIC_K.value, inverse_params=run.inverse, explanation_tokens=_EXPLANATION_TOKENS.value)
    if _TRUTH.value:
        results["truth"] = evaluate_truth(
            run.curriculum, run.params, run.tokenizer, eval_cfg, steps=trained_steps(run.curriculum, eval_cfg),
            per_difficulty=_TRUTH_PROBLEMS.value, k=_METRIC_K.value, inverse_params=run.inverse,
            n_rollouts=_TRUTH_ROLLOUTS.value, methods=_TRUTH_MAPS.value, explanation_tokens=_EXPLANATION_TOKENS.value)
    out = run.run_dir / f"eval_stage{run.stage}.json"
    out.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"written to {out}")


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
