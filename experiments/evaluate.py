r"""Evaluate a curriculum run: answer accuracy on held-out procedural problems by number of steps, on
reasoning-gym tasks and on GSM8K / AQUA-RAT / LogiQA data (each with its own scorer), the meta head's
calibration error, and the explanation metrics (faithfulness vs random, dependency recovery over all and over
content-only candidates, exact-path consistency, amortised-vs-exact agreement, and how often the model's own
generated explanations name what the exact analysis finds).

    python -m experiments.evaluate --config=experiments/configs/tiny.py --config.workdir=runs/demo \
        --datasets=gsm8k:/data/gsm8k/test.jsonl,prepared/sage_aqua_rat/test --data_dir=/data/prepared

Reads the final parameters of `--stage` (default: the curriculum's last stage) from the run's `workdir` and
writes `<workdir>/eval_stage<N>.json`.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate.suite import evaluate_datasets, evaluate_explanations, evaluate_run, format_table
from sage_jax.train import curriculum_from_dict, final_state

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/tiny.py", "Curriculum config file.")
_STAGE = flags.DEFINE_integer("stage", None, "Evaluate this stage's final parameters (default: the last stage).")
_EXPLANATIONS = flags.DEFINE_boolean("explanations", True, "Also compute the explanation metrics.")
_METRIC_PROBLEMS = flags.DEFINE_integer("metric_problems", 5, "Problems per difficulty for the explanation metrics.")
_METRIC_K = flags.DEFINE_integer("metric_k", 3, "Tokens deleted per step; the k of precision/recall at k.")
_EXPLANATION_TOKENS = flags.DEFINE_integer("explanation_tokens", 96,
                                           "Generation budget of the model's own explanations.")
_DATASETS = flags.DEFINE_list("datasets", [], "Datasets to score: '<format>:<file>' (gsm8k, aqua_rat, logiqa, "
                              "logiqa2 official files) or 'prepared/<builder>/<split>' (with --data_dir).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where prepared datasets live (experiments.data --data_dir).")
_DATASET_LIMIT = flags.DEFINE_integer("dataset_limit", 200, "Problems per dataset at most.")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    cfg = curriculum_from_dict(config.to_dict())
    eval_cfg = config.eval.to_dict()
    results = evaluate_run(cfg, eval_cfg, _STAGE.value)
    state = final_state(cfg, results["stage"])
    tokenizer = Tokenizer.load(cfg.model.vocab_size)
    if _DATASETS.value:
        results["datasets"] = evaluate_datasets(
            cfg.model, state.params, tokenizer, _DATASETS.value, data_dir=_DATA_DIR.value,
            limit=_DATASET_LIMIT.value, max_new_tokens=eval_cfg["max_new_tokens"], batch_size=eval_cfg["batch_size"])
    if _EXPLANATIONS.value:
        results["explanations"] = evaluate_explanations(
            cfg, state.params, tokenizer, eval_cfg, per_difficulty=_METRIC_PROBLEMS.value, k=_METRIC_K.value,
            inverse_params=getattr(state, "inverse", None), explanation_tokens=_EXPLANATION_TOKENS.value)
    out = pathlib.Path(cfg.workdir) / f"eval_stage{results['stage']}.json"
    out.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"written to {out}")


if __name__ == "__main__":
    app.run(main)
