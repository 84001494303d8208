"""A pretrained chat model evaluated as the trained default is: accuracy on chained sums written in words, and
every attribution map scored against the model's own counterfactual behaviour on their true chains.

The problems are `spoken_sum`'s ("What is 3 + 4 + 5?", steps "3 + 4 = 7", "7 + 5 = 12"), posed through the
model's chat template (`sage_jax.chat.ChatLayout`: the question, the layout's instruction, the reply read one
step per line and the answer as the reply's last number). The truth table is `sage_jax.evaluate.truth.measure`
on the true chains written as the assistant's reply (one step per line, then `Answer: n`), teacher-forced, so
every map is judged on the same tokens whatever the model would have written itself.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax

from sage_jax.chat import ChatLayout
from sage_jax.config import SageConfig
from sage_jax.data.procedural import SpokenSumKnobs
from sage_jax.evaluate import truth
from sage_jax.evaluate.accuracy import accuracy_by, predict
from sage_jax.evaluate.heldout import procedural_by_difficulty


def evaluate_pretrained(params, cfg: SageConfig, layout: ChatLayout, *, steps: Sequence[int] = (1, 2, 3),
                        per_difficulty: int = 20, seed: int = 7, truth_problems: int = 2, k: int = 3,
                        n_substitutes: int = 8, n_rollouts: int = 8, max_rollouts: Optional[int] = None,
                        methods: Sequence[str] = truth.DEFAULT_METHODS, max_new_tokens: int = 128,
                        batch_size: int = 20, truth_batch_size: int = 16,
                        log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Accuracy by number of steps and the truth table of one chat model.

    Args:
      params, cfg: the model (`sage_jax.interop.load`).
      layout: its chat layout (`ChatLayout.for_pretrained`).
      steps: rationale step counts of the problems.
      per_difficulty: problems per step count for accuracy.
      seed: seeds the problems (`procedural_by_difficulty`) and the truth's draws.
      truth_problems: the first problems of each step count whose true chains the truth table measures; 0 skips it.
      k, n_substitutes, n_rollouts, max_rollouts, methods: as `truth.measure`.
      max_new_tokens, batch_size: greedy generation of the replies (at most what the context leaves after the
        longest prompt).
      truth_batch_size: forward passes the truth table runs at once (each holds `[T, V]` logits).
      log: receives progress lines (the replies generated, then the truth table's parts).

    Returns:
      `{"task", "steps", "per_difficulty", "accuracy_by_steps", "examples"}`, with `"truth"` (as
      `sage_jax.evaluate.suite.evaluate_truth`'s, without the written explanations) when `truth_problems`.
    """
    examples = procedural_by_difficulty(SpokenSumKnobs(), tuple(steps), per_difficulty, seed=seed).examples
    longest = max(len(layout.prompt(layout.codec, ex.question)) for ex in examples)
    if longest >= cfg.max_seq_len:
        raise ValueError(f"the longest prompt ({longest} tokens) leaves no room to answer in cfg.max_seq_len="
                         f"{cfg.max_seq_len}")
    predictions = predict(params, cfg, layout.codec, examples, max_new_tokens=min(max_new_tokens,
                                                                                   cfg.max_seq_len - longest),
                          batch_size=min(batch_size, len(examples)), layout=layout)
    if log is not None:
        log(f"generated {len(predictions)} replies")
    results: dict[str, Any] = {
        "task": "procedural/spoken_sum", "steps": list(steps), "per_difficulty": per_difficulty,
        "accuracy_by_steps": {int(s): row for s, row in accuracy_by(predictions, key=lambda ex: len(ex.steps)).items()},
        "examples": [{"question": p.example.question, "answer": p.example.answer, "reply": layout.codec.decode(
            [t for t in p.generated if t != layout.eos_id]), "parsed": p.answer, "score": p.score}
                     for p in predictions[::per_difficulty]]}
    if truth_problems:
        chosen = [ex for i, ex in enumerate(examples) if i % per_difficulty < truth_problems]
        measured = truth.measure(params, cfg, layout.codec, chosen, key=jax.random.key(seed), k=k, layout=layout,
                                 methods=methods, n_substitutes=n_substitutes, n_rollouts=n_rollouts,
                                 max_rollouts=max_rollouts, batch_size=truth_batch_size, log=log)
        results["truth"] = {"k": k, "per_difficulty": truth_problems, "steps": list(steps),
                            "n_substitutes": n_substitutes, "n_rollouts": n_rollouts, "max_rollouts": max_rollouts,
                            "truth": truth.truth_summary(measured.chains, measured.truth), "maps": measured.table}
    return results


def format_pretrained(results: Mapping[str, Any]) -> str:
    """A plain-text report of `evaluate_pretrained`."""
    lines = [f"{results['task']}, asked through the chat template ({results['per_difficulty']} problems per step "
             "count; greedy; the answer is the reply's last number)",
             f"{'steps':>5}  {'n':>4}  {'accuracy':>8}  {'answered':>8}"]
    for steps, row in results["accuracy_by_steps"].items():
        lines.append(f"{steps:>5}  {row['n']:>4}  {100 * row['accuracy']:>7.1f}%  {100 * row['answered']:>7.1f}%")
    for example in results["examples"]:
        lines.append(f"  {example['question']!r} -> {example['reply']!r} (parsed {example['parsed']!r}, "
                     f"right answer {example['answer']})")
    if "truth" in results:
        ex, t = results["truth"], results["truth"]["truth"]
        own = ex["maps"].get(truth.EXPLAIN_DEFAULT, {}).get("step_agreement_resampling_map")
        lines += [f"\nmaps against the model's counterfactual behaviour ({ex['per_difficulty']} true chains per step "
                  f"count {ex['steps']}; {ex['n_substitutes']} substitutes per token, {truth.format_rollouts(ex)}; "
                  f"{t['dependencies_per_step']:.1f} dependencies of {t['content_candidates_per_step']:.1f} "
                  f"content candidates per step, {100 * t['data_dependencies_confirmed']:.0f}% of the data's "
                  "dependencies confirmed; step columns: naming the last step always would score "
                  f"{truth.format_value(t['last_step_is_resampling_anchor'])} / "
                  f"{truth.format_value(t['last_step_is_resampling_accuracy_anchor'])} / "
                  f"{truth.format_value(t['last_step_is_suppression_anchor'])}; the default's by the model's own "
                  "alternatives to each step, its map's mass would score "
                  f"{truth.format_value(own)} by resampling)",
                  truth.format_scores(ex["maps"], ex["k"])]
    return "\n".join(lines)
