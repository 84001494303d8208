"""HTML token views: the explanation with every token shaded by significance and alternatives on hover.

`explanation_html` extends `Explanation.to_html` (which shades tokens only): per step, tokens are shaded by
the step's significance, the step's own tokens are underlined, decision points (significance above the
threshold) are outlined, and hovering the branching token shows its alternatives with their probabilities
and, when continuations were generated, where each leads and whether the answer changes. The page is
standalone (inline CSS, no script), so it opens from disk and embeds in a notebook with
`IPython.display.HTML`.
"""

from __future__ import annotations

import html

from sage_jax.interpret.explanation import Explanation, StepExplanation

SHADE = "rgba(230, 80, 20, {alpha:.3f})"


def _alternatives(step: StepExplanation) -> str:
    rows = []
    for a in step.alternatives:
        outcome = ""
        if a.answer_changed is not None:
            answer = "no answer" if a.answer is None else html.escape(a.answer)
            outcome = (f" → {html.escape(a.continuation or '')} <b>(answer {answer}: "
                       f"{'changes' if a.answer_changed else 'same'})</b>")
        chosen = " chosen" if a.token == step.chosen else ""
        rows.append(f'<li class="alt{chosen}"><code>{html.escape(a.token)}</code> p={a.prob:.3f}{outcome}</li>')
    return f'<span class="alts"><b>alternatives at position {step.branch_position}</b><ul>{"".join(rows)}</ul></span>'


def _token(step: StepExplanation, position: int, text: str, decision: set[int]) -> str:
    score = step.significance[position]
    classes = ["t"]
    if step.start <= position < step.end:
        classes.append("own")
    if position in decision:
        classes.append("decision")
    note = f"position {position}, significance {score:.3f}"
    inner = html.escape(text)
    if position == step.branch_position:
        classes.append("branch")
        note += f"; branching token, confidence {step.confidence:.2f}"
        inner += _alternatives(step)
    return (f'<span class="{" ".join(classes)}" data-position="{position}" data-significance="{score:.6f}" '
            f'style="background: {SHADE.format(alpha=score)}" title="{html.escape(note)}">{inner}</span>')


def explanation_html(explanation: Explanation) -> str:
    """A standalone HTML page of `explanation` (see the module docstring)."""
    rows = []
    for s in explanation.steps:
        decision = {d.position for d in s.token_dependencies}
        cells = "".join(_token(s, j, text, decision) for j, text in enumerate(explanation.token_text))
        rests = ", ".join(f"{html.escape(d.source)} ({d.score:.2f})" for d in s.step_dependencies) or "nothing"
        rows.append(f'<div class="step"><h3>Step {s.index + 1}: <code>{html.escape(s.text)}</code> '
                    f'<small>confidence {s.confidence:.2f} · entropy {s.entropy:.2f} · loss {s.loss:.2f} · '
                    f'rests on {rests}</small></h3><div class="tokens">{cells}</div></div>')
    answer = "(none)" if explanation.answer is None else html.escape(explanation.answer)
    return _PAGE.format(question=html.escape(explanation.question), method=html.escape(explanation.method),
                        consistency=explanation.consistency, threshold=explanation.threshold, answer=answer,
                        rows="\n".join(rows))


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>SAGE explanation: {question}</title>
<style>
.sage-explanation {{ font-family: sans-serif; }}
.sage-explanation .tokens {{ font-family: monospace; white-space: pre-wrap; line-height: 2.2; }}
.sage-explanation .t {{ padding: 2px 1px; position: relative; }}
.sage-explanation .own {{ border-bottom: 2px solid #333; }}
.sage-explanation .decision {{ outline: 2px solid #111; }}
.sage-explanation .branch {{ box-shadow: 0 0 0 2px #1f77b4; cursor: help; }}
.sage-explanation .alts {{ display: none; position: absolute; left: 0; top: 1.8em; z-index: 10; background: #fff;
  border: 1px solid #888; padding: 4px 8px; white-space: nowrap; font-size: 0.85em; }}
.sage-explanation .branch:hover .alts {{ display: block; }}
.sage-explanation .alt.chosen {{ font-weight: bold; }}
</style></head>
<body><div class="sage-explanation">
<h2>{question}</h2>
<p>method: {method} · consistency {consistency:.2f} · answer: <b>{answer}</b></p>
<p>Shading: how much each step depended on each token (significance, darker = more). Outlined: decision points
(significance above {threshold:.2f}). Underlined: the step's own tokens. Blue ring: the branching token; hover it
for the alternatives.</p>
{rows}
</div></body></html>
"""
