"""The evaluation report prints every explanation metric, the content-only recovery beside the unrestricted
one, "not trained" when the run has no Inverse Analysis Layer, and dataset rows with their scorers."""

from __future__ import annotations

from sage_jax.evaluate.suite import format_table

ROW = {"problems": 2, "steps": 3, "k": 3, "drop_top_k": 2.0, "drop_random_k": 1.0, "ratio_vs_random": 2.0,
       "aopc_comprehensiveness": 1.5, "random_aopc_comprehensiveness": 0.5, "aopc_sufficiency": 0.2,
       "random_aopc_sufficiency": 0.9, "precision_at_k": 0.18, "recall_at_k": 0.17, "chance_precision_at_k": 0.25,
       "content_precision_at_k": 0.61, "content_recall_at_k": None, "content_chance_precision_at_k": 0.44}
GENERATED = {"problems": 2, "not_generated": 0, "steps": 3, "k": 3, "named_exact_top_k": 0.25,
             "named_exact_top_k_content": 0.5, "steps_with_claims": 1.0, "true_dependency_precision": 0.75,
             "true_dependency_recall": None, "founded_claims": 6, "unfounded_claims": 1, "examples": []}


def results(amortised):
    return {"accuracy_by_steps": {1: {"n": 2, "accuracy": 0.5, "answered": 1.0, "seen_in_training": 1.0}},
            "gym": {}, "teacher_forced": {"meta_ece": 0.015, "meta_confidence": 0.97, "reasoning_accuracy": 0.98},
            "datasets": {"gsm8k:/d/test.jsonl": {"n": 3, "too_long": 1, "scorer": "numeric_match",
                                                 "accuracy": 1 / 3, "answered": 1.0},
                         "logiqa:/d/Eval.txt": {"n": 0, "too_long": 2, "scorer": "choice_match",
                                                "accuracy": None, "answered": None}},
            "explanations": {"k": 3, "n_random": 4, "per_difficulty": 2, "by_steps": {1: ROW, "all": ROW},
                             "exact_consistency": {"mean": 0.91, "threshold": 0.8, "below_threshold": 0.25,
                                                   "by_steps": {1: 0.91}},
                             "amortised": amortised, "generated_explanations": GENERATED}}


def test_the_table_reports_every_metric_and_says_when_the_inverse_layer_is_not_trained():
    text = format_table(results({"status": "not trained", "reason": "the run has no Inverse Analysis Layer "
                                                                     "parameters"}))
    lines = text.splitlines()
    header = next(line for line in lines if "content P@3 (chance)" in line)
    assert "P@3 (chance)" in header.replace("content P@3 (chance)", "")
    all_row = next(line for line in lines if line.lstrip().startswith("all"))
    assert "0.18 (0.25)" in all_row and "0.61 (0.44)" in all_row and all_row.rstrip().endswith("n/a")
    assert "gsm8k:/d/test.jsonl: accuracy 33.3% of 3 (numeric_match); 1 longer than the context" in text
    assert "logiqa:/d/Eval.txt: accuracy n/a of 0 (choice_match); 2 longer" in text
    assert "exact-path consistency (attention vs rollout map agreement, explain's score): mean 0.910; below " \
           "0.8: 25% of problems" in text
    assert "amortised (Inverse Analysis Layer) vs exact: not trained (the run has no Inverse Analysis Layer " \
           "parameters)" in text
    assert "name 25% of the exact top-3 tokens, 50% of the content-only top-3" in text
    assert "precision 75%, recall n/a; claims founded 6, unfounded 1" in text
    assert "meta-head calibration error (ECE, 10 bins) 0.015" in text


def test_the_table_reports_the_trained_inverse_layer():
    text = format_table(results({"status": "trained", "consistency": 0.5, "fidelity": 0.25, "map_agreement": 0.75,
                                 "rank_correlation": -0.1, "top_k_overlap": 1 / 3}))
    assert ("amortised (Inverse Analysis Layer) vs exact: consistency 0.500 (fidelity 0.250, map agreement "
            "0.750); rank correlation -0.10; top-3 overlap 0.33") in text


def test_the_table_reports_every_map_against_the_counterfactual_truth():
    row = {"precision_at_k": 0.83, "chance_precision_at_k": 0.55, "recall_at_k": 0.69, "spearman": 0.56,
           "deletion_ratio_content": 3.2, "deletion_ratio_all": None, "aopc_content": 13.25,
           "step_agreement_resampling": 0.8, "step_agreement_resampling_accuracy": 0.75,
           "step_agreement_suppression": None}
    truth = {"k": 3, "per_difficulty": 5, "steps": [1, 2, 3], "n_substitutes": 8, "n_rollouts": 16,
             "truth": {"dependencies_per_step": 4.5, "content_candidates_per_step": 8.8,
                       "data_dependencies_confirmed": 0.78, "counterfactual_dependencies_in_data": 0.57,
                       "last_step_is_resampling_anchor": 0.6, "last_step_is_resampling_accuracy_anchor": 0.7,
                       "last_step_is_suppression_anchor": None},
             "maps": {"sage": row, "occlusion": row},
             "written_explanations": {"founded_claims": 5, "unfounded_claims": 2, "claims_confirmed": 0.75,
                                      "tested_claims": 4, "untestable_claims": 1, "claimed_content_tokens": 6,
                                      "counterfactual_confirmed_content": 5 / 6, "claimed_tokens": 12,
                                      "counterfactual_confirmed": 5 / 12}}
    text = format_table({**results({"status": "not trained", "reason": "none"}), "truth": truth})
    lines = text.splitlines()
    assert "4.5 of 8.8 content candidates per step; 78% of the data's dependencies confirmed" in text
    assert "naming the last step always would score 0.60 / 0.70 / n/a" in text
    assert "8 substitutes per token, 16 rollouts per prefix)" in text  # a table from before rounds had no maximum
    rounds = {**truth, "max_rollouts": 64, "truth": {**truth["truth"], "rollouts_per_resampled_step": 34.7}}
    assert ("16-64 rollouts per prefix (rounds of 16 while the most important step is uncertain, 35 on average)"
            in format_table({**results({"status": "not trained", "reason": "none"}), "truth": rounds}))
    occlusion = next(line for line in lines if line.startswith("occlusion"))
    assert occlusion.split() == ["occlusion", "0.83", "(0.55)", "0.69", "0.56", "3.20", "n/a", "13.25", "0.80", "0.75",
                                 "n/a"]
    assert ("5 founded claims (2 unfounded); confirmed by the counterfactual truth: 75% of the 4 claims that name a "
            "content token (1 name none), 83% of the 6 content tokens they name, 42% of all 12 tokens" in text)
