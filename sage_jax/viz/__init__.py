"""Pictures of what the model did: attention, significance, explanations, faithfulness, patching, pytrees.

- `figures`: matplotlib figures (pure: each call builds and returns a new `Figure`, never through pyplot);
- `probes`: the same for the standard probes (`sage_jax.probes`): logit lens, direct logit attribution, head scores;
- `html`: the explanation as an HTML token view (significance shading, alternatives on hover);
- `tree`: treescope renderings of `Trace` and `Edits` with named axes;
- `labels`: token, head and group labels every view shares;
- `report`: `save_report_figures`, what `make demo` writes into its report folder.

It only draws: the model it is given comes from the caller (`sage_jax.load_run` for a trained run).
"""

from sage_jax.viz.figures import (SageFigure, agreement_figure, attention_figure, explanation_decisions,
                                  explanation_figure, faithfulness_figure, head_patching_figure,
                                  residual_patching_figure, significance_figure)
from sage_jax.viz.html import explanation_html
from sage_jax.viz.probes import direct_logit_attribution_figure, head_scores_figure, logit_lens_figure
from sage_jax.viz.labels import head_groups, head_labels, token_labels
from sage_jax.viz.report import explanation_masks, save_report_figures, swap_first_digit
from sage_jax.viz.tree import AXES, field_figure, tree_html

__all__ = ["AXES", "SageFigure", "agreement_figure", "attention_figure", "direct_logit_attribution_figure",
           "explanation_decisions", "explanation_figure", "explanation_html", "explanation_masks",
           "faithfulness_figure", "field_figure", "head_groups", "head_labels", "head_patching_figure",
           "head_scores_figure", "logit_lens_figure", "residual_patching_figure", "save_report_figures",
           "significance_figure", "swap_first_digit", "token_labels", "tree_html"]
