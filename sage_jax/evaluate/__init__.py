"""Evaluation of trained models: answer accuracy by greedy generation (per source scorer, by difficulty;
GSM8K / AQUA-RAT / LogiQA files with their scorers in `datasets`), teacher-forced loss and token accuracy, the
meta-cognitive head's calibration error, the faithfulness and dependency recovery of the exact significance
maps (`explanations`, also over content tokens only), the consistency of the exact path and of the Inverse
Analysis Layer with it (`consistency`), how often the model's own generated explanations name what the exact
analysis finds (`generated`), interventions on what an explanation names (`intervene`), and every attribution
map scored against the model's own counterfactual behaviour (`truth`).

A package of its own, not part of `sage_jax.train`: it depends on training (checkpoints, the curriculum's
held-out pipelines) and not the other way round, and the explanation metrics (faithfulness, dependency
recovery) build on `sage_jax.interpret`, which training must not depend on. The teacher-forced statistics
the curriculum logs while training live in `sage_jax.train.eval_stats` and are re-exported here.
`sage_jax.evaluate.suite` runs the whole evaluation of a curriculum run.

    preds = predict(params, cfg, tokenizer, examples, max_new_tokens=32)
    table = accuracy_by(preds, key=lambda ex: ex.metadata["n_terms"] - 1)   # by number of steps
    summary = summarise(explanation_metrics(params, cfg, tokenizer, examples, k=3, key=key), k=3)
"""

from sage_jax.evaluate.accuracy import Prediction, accuracy_by, exact_match, predict, prompt_ids
from sage_jax.evaluate.explanations import ExplanationMetrics, explanation_metrics, map_metrics, summarise
from sage_jax.evaluate.heldout import HeldOut, procedural_by_difficulty
from sage_jax.train.eval_stats import (TokenStats, compile_token_stats, expected_calibration_error,
                                       reliability_sums, token_stats)

__all__ = ["ExplanationMetrics", "HeldOut", "Prediction", "TokenStats", "accuracy_by", "compile_token_stats",
           "exact_match", "expected_calibration_error", "explanation_metrics", "map_metrics",
           "predict", "procedural_by_difficulty", "prompt_ids", "reliability_sums", "summarise", "token_stats"]
