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

    python -m experiments.evaluate --model=smollm2-135m-instruct --truth_problems=2 --truth_rollouts=8 \
        --truth_max_rollouts=8

On a host with several devices the truth table and the explanation metrics split the chains over all of them
(`sage_jax.evaluate.parallel.over_chains`, `jax.shard_map`); the numbers are those one device computes.

With `--model`, a pretrained chat model (a name, a GGUF file or a Hugging Face directory) is asked chained sums in
words through its chat template (`sage_jax.evaluate.pretrained`): accuracy by number of steps, and with `--truth`
every map of `--truth_maps` scored against its counterfactual behaviour on the true chains. Writes
`eval_<model>.json` (or `--out`).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging

from experiments.config_file import define_config_file
import sage_jax as sj
from sage_jax.chat import ChatLayout
from sage_jax.evaluate import truth
from sage_jax.evaluate.pretrained import evaluate_pretrained, format_pretrained
from sage_jax.evaluate.suite import (evaluate_datasets, evaluate_explanations, evaluate_run, evaluate_truth,
                                    format_table, trained_steps)

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory (it holds config.json and stage<N>/ckpt).")
_MODEL = flags.DEFINE_string("model", None, "A pretrained chat model instead of --workdir: a name "
                             "(sage_jax.interop.MODELS), a GGUF file or a Hugging Face directory.")
_MODEL_PROBLEMS = flags.DEFINE_integer("model_problems", 20, "With --model: problems per step count for accuracy.")
_MODEL_STEPS = flags.DEFINE_list("model_steps", ["1", "2", "3"], "With --model: the step counts of the problems.")
_MODEL_TOKENS = flags.DEFINE_integer("model_tokens", 128, "With --model: new tokens per reply at most (and at most "
                                     "what the context leaves).")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON (default: <workdir>/eval_stage<N>.json, or "
                           "eval_<model>.json with --model).")
_CONFIG = define_config_file("config", None, "Optional config file whose `eval` section replaces the one saved "
                             "with the run.")
_STAGE = flags.DEFINE_integer("stage", None, "Evaluate this stage's final parameters (default: the last stage).")
_EXPLANATIONS = flags.DEFINE_boolean("explanations", True, "Also compute the explanation metrics.")
_METRIC_PROBLEMS = flags.DEFINE_integer("metric_problems", 5, "Problems per difficulty for the explanation metrics.")
_METRIC_K = flags.DEFINE_integer("metric_k", 3, "Tokens deleted per step; the k of precision/recall at k.")
_EXPLANATION_TOKENS = flags.DEFINE_integer("explanation_tokens", 96,
                                           "Generation budget of the model's own explanations.")
_TRUTH = flags.DEFINE_boolean("truth", True, "Also score every attribution map against the model's own "
                               "counterfactual behaviour (token substitution, step suppression, resampling).")
_TRUTH_PROBLEMS = flags.DEFINE_integer("truth_problems", 5, "Problems per trained difficulty for --truth.")
_TRUTH_ROLLOUTS = flags.DEFINE_integer("truth_rollouts", 16, "Rollouts per prefix for resampling importance, "
                                       "per round.")
_TRUTH_MAX_ROLLOUTS = flags.DEFINE_integer(
    "truth_max_rollouts", 64, "At most this many rollouts per prefix, in rounds of --truth_rollouts drawn while a "
    "chain's most important step is uncertain (the posterior of its answers); at most --truth_rollouts: one round.")
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
    if (_WORKDIR.value is None) == (_MODEL.value is None):
        raise app.UsageError("pass exactly one of --workdir (a trained run) and --model (a pretrained chat model)")
    results, text, out = evaluate_model() if _MODEL.value is not None else evaluate_workdir()
    print(text)  # first: a workdir that cannot be written loses nothing computed
    out = pathlib.Path(_OUT.value or out)
    tmp = out.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out)
    except OSError as err:
        with contextlib.suppress(OSError):  # e.g. ENOTDIR, which missing_ok does not cover
            tmp.unlink()
        sys.exit(f"could not write {out} ({err.strerror or err}); the results are printed above")
    print(f"written to {out}")


def evaluate_workdir() -> tuple[dict, str, pathlib.Path]:
    """The trained run's results, their table, and where they are written by default."""
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
            n_rollouts=_TRUTH_ROLLOUTS.value, max_rollouts=_max_rollouts(), methods=_TRUTH_MAPS.value,
            explanation_tokens=_EXPLANATION_TOKENS.value, log=_progress)
    return results, format_table(results), run.run_dir / f"eval_stage{run.stage}.json"


def _max_rollouts() -> int:
    return max(_TRUTH_ROLLOUTS.value, _TRUTH_MAX_ROLLOUTS.value)


def _progress(line: str) -> None:
    print(line, flush=True)


def evaluate_model() -> tuple[dict, str, pathlib.Path]:
    """The pretrained model's results (`sage_jax.evaluate.pretrained`), their report, and the default file."""
    from sage_jax import interop  # imported here: the readers of checkpoint formats

    loaded = interop.load(_MODEL.value)
    layout = ChatLayout.for_pretrained(loaded)
    print(f"evaluating {loaded.architecture} from {loaded.source}")
    results = evaluate_pretrained(
        loaded.params, loaded.cfg, layout, steps=[int(s) for s in _MODEL_STEPS.value],
        per_difficulty=_MODEL_PROBLEMS.value, truth_problems=_TRUTH_PROBLEMS.value if _TRUTH.value else 0,
        max_new_tokens=_MODEL_TOKENS.value,
        k=_METRIC_K.value, n_rollouts=_TRUTH_ROLLOUTS.value, max_rollouts=_max_rollouts(), methods=_TRUTH_MAPS.value,
        log=_progress)
    results["model"] = {"source": loaded.source, "architecture": loaded.architecture}
    return results, format_pretrained(results), pathlib.Path(f"eval_{pathlib.Path(_MODEL.value).stem}.json")


if __name__ == "__main__":
    app.run(main)
