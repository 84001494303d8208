"""Inverse reasoning: which earlier tokens and steps each reasoning step rested on, and where it could branch.

The exact path (this package's core; every map is `[n_steps, T]` over source tokens):

- `steps`: step losses `L_i` and entropies `H_i` (which tokens a step owns is `sage_jax.layout`'s: `Steps`,
  `find_steps`, re-exported here);
- `significance`: Eq. 7, `Sig(t_j, i) = w_ij * ||dL_i/dh_j|| * H_i`, from one batched vjp;
- `attribution`: a registry of attribution methods with one signature, and their agreement;
- `decisions`: Algorithm S1, decision points, alternatives and confidences;
- `explanation` / `pipeline`: the `Explanation` object and
  `explain(params, cfg, question, ..., config=ExplainConfig())`.

The amortised path (`amortised`, `consistency`) and the causal tools (`interventions`, `patching`,
`faithfulness`, and `counterfactual`: the ground truth every map is judged against, token substitution, step
suppression and resampling importance) live beside them; `ranking` holds the rank statistics (ranks,
Spearman, top-k selection and overlap) that every comparison of maps uses. Submodules keep their names:
`sage_jax.interpret.significance` is the module, its function is `sage_jax.interpret.significance.significance`.
"""

from sage_jax.interpret import (amortised, consistency, counterfactual, faithfulness, interventions, patching,
                                ranking, significance, steps)
from sage_jax.interpret.attribution import AgreementReport, agreement, attribute, methods, register
from sage_jax.interpret.decisions import Decisions, decision_points, with_continuations
from sage_jax.interpret.explanation import Anchors, Explanation
from sage_jax.interpret.pipeline import ExplainConfig, explain
from sage_jax.layout import Steps, find_steps, from_spans, stack_steps

__all__ = ["AgreementReport", "Anchors", "Decisions", "ExplainConfig", "Explanation", "Steps", "agreement",
           "amortised", "attribute", "consistency", "counterfactual", "decision_points", "explain", "faithfulness",
           "find_steps", "from_spans", "interventions", "methods", "patching", "ranking", "register", "significance",
           "stack_steps", "steps", "with_continuations"]
