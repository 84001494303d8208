"""`Explanation`: the structured result of an analysis, and its JSON, Markdown and HTML views.

Everything here is plain Python data (built by `sage_jax.interpret.explain`), so an explanation can be
saved, diffed and rendered without the model. Positions index the laid-out token sequence
(`Explanation.tokens`); significance rows are over all of its tokens.
"""

from __future__ import annotations

import dataclasses
import html
import json
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Alternative:
    """An alternative next token at a step's branching position.

    Attributes:
      token: its text.
      prob: its probability.
      continuation: the greedy text it leads to, when continuations were asked for.
      answer: the final answer of that continuation (`None`: it reached none, or none was asked for).
      answer_changed: whether that answer differs from the chain's, when continuations were asked for.
    """

    token: str
    prob: float
    continuation: Optional[str] = None
    answer: Optional[str] = None
    answer_changed: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class TokenDependency:
    """A source token a step rests on: its position, text and significance (above the threshold)."""

    position: int
    text: str
    score: float


@dataclasses.dataclass(frozen=True)
class StepDependency:
    """An earlier region a step rests on ("question" or "step k"), scored by its most significant token."""

    source: str
    score: float


@dataclasses.dataclass(frozen=True)
class StepExplanation:
    """One step of the chain.

    Attributes:
      index: the step number (0-based).
      text: the step's text.
      start, end: its token span `[start, end)` in the sequence.
      loss: `L_i`, its summed token NLL.
      entropy: `H_i`, its mean predictive entropy.
      branch_position: the position of its highest-entropy token (where it could most easily have gone
        another way).
      chosen: the token chosen there.
      confidence: the chosen token's probability.
      alternatives: the top-k tokens there, most likely first.
      token_dependencies: source tokens with significance above the threshold, most significant first.
      step_dependencies: the question and earlier steps holding such tokens, most significant first.
      significance: the significance of every token of the sequence for this step.
    """

    index: int
    text: str
    start: int
    end: int
    loss: float
    entropy: float
    branch_position: int
    chosen: str
    confidence: float
    alternatives: tuple[Alternative, ...]
    token_dependencies: tuple[TokenDependency, ...]
    step_dependencies: tuple[StepDependency, ...]
    significance: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One pass of the refinement loop: the path, its aggregation and its consistency score."""

    path: str
    weighting: Optional[str]
    heads: Optional[str]
    score: float


@dataclasses.dataclass(frozen=True)
class Anchors:
    """The chain's anchor step, measured by resampling, beside the step the analysis ranks first.

    A decision point is the analysis's claim about where the chain could have gone another way; an anchor is
    the step whose rewriting moves the final answer most (Thought Anchors' resampling importance, Bogdan et al.
    2025, `sage_jax.interpret.counterfactual.resampling_importance`). Placing both side by side says whether
    the analysis points at the step that matters to the model's behaviour.

    Attributes:
      resampling_importance: per step, the KL between the answers reached with the step kept and with it
        rewritten (a different step drawn from the model); `None` where the model gives the step probability
        one (nothing to rewrite it by).
      replaced: per step, how many rollouts rewrote it (all of them, or 0 where it cannot be rewritten).
      analysis_importance: per step, the analysis's importance: by default how much less likely the answer
        becomes under the model's own alternatives to the step (`alternatives.alternative_importance`), else
        `significance.step_importance` of a map of the same kind as the explanation's, over the steps and the
        answer (`ExplainConfig.step_alternatives`).
      anchor_step: the step of highest resampling importance (first on ties); `None` when none was measured.
      analysis_step: the step of highest analysis importance (first on ties).
      found: whether the two agree; `None` without an anchor.
      rollouts: rollouts sampled per prefix (every round's: `ExplainConfig.anchor_max_rollouts`).
    """

    resampling_importance: tuple[Optional[float], ...]
    replaced: tuple[int, ...]
    analysis_importance: tuple[float, ...]
    anchor_step: Optional[int]
    analysis_step: int
    found: Optional[bool]
    rollouts: int

    def summary(self) -> str:
        """One sentence: which step is the anchor and whether the analysis found it."""
        if self.anchor_step is None:
            return (f"No anchor: the model gives every step probability one, so no step could be rewritten "
                    f"(the analysis ranks step {self.analysis_step + 1} first).")
        measured = (f"Step {self.anchor_step + 1} is the anchor (resampling importance "
                    f"{self.resampling_importance[self.anchor_step]:.2f}, {self.rollouts} rollouts per prefix)")
        if self.found:
            return f"{measured}, and the analysis found it: it ranks that step first."
        return f"{measured}; the analysis missed it: it ranks step {self.analysis_step + 1} first."


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why a chain of thought went the way it did.

    Attributes:
      question: the question text.
      answer: the chain's final answer text, or `None` when the chain has none.
      method: the analysis path that produced the maps ("exact" or "amortised").
      consistency: the consistency score in [0, 1] of that analysis (see `explain`).
      threshold: the significance threshold of the dependencies.
      layer: the layer whose hidden states the exact path differentiated.
      tokens: the laid-out token ids.
      token_text: each token as text (special tokens by name).
      steps: one `StepExplanation` per step.
      attempts: every pass of the refinement loop, in order; the last one produced this explanation.
      anchors: the anchor step against the analysis's most important step, when asked for and the chain has
        an answer (`ExplainConfig.anchors`); `None` otherwise.
    """

    question: str
    answer: Optional[str]
    method: str
    consistency: float
    threshold: float
    layer: int
    tokens: tuple[int, ...]
    token_text: tuple[str, ...]
    steps: tuple[StepExplanation, ...]
    attempts: tuple[Attempt, ...]
    anchors: Optional[Anchors] = None

    def to_dict(self) -> dict:
        """Nested plain dicts and lists; without anchors the key is left out, so such JSON reads as before."""
        d = dataclasses.asdict(self)
        if self.anchors is None:
            del d["anchors"]
        return d

    def to_json(self, indent: Optional[int] = 2) -> str:
        """The explanation as JSON (`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Explanation":
        """Reads what `to_json` wrote."""
        d = json.loads(text)
        steps = tuple(StepExplanation(**{
            **s, "alternatives": tuple(Alternative(**a) for a in s["alternatives"]),
            "token_dependencies": tuple(TokenDependency(**t) for t in s["token_dependencies"]),
            "step_dependencies": tuple(StepDependency(**t) for t in s["step_dependencies"]),
            "significance": tuple(s["significance"])}) for s in d["steps"])
        anchors = d.get("anchors")
        if anchors is not None:
            anchors = Anchors(**{**anchors, **{k: tuple(anchors[k]) for k in
                                                ("resampling_importance", "replaced", "analysis_importance")}})
        return cls(**{**d, "tokens": tuple(d["tokens"]), "token_text": tuple(d["token_text"]), "steps": steps,
                      "attempts": tuple(Attempt(**a) for a in d["attempts"]), "anchors": anchors})

    def to_markdown(self) -> str:
        """A report for people: steps, what each rested on, where it could have branched, and how sure."""
        last = self.attempts[-1]
        aggregation = ("" if last.weighting is None else ", counterfactual substitution weights"
                       if last.weighting == "substitution" else f", {last.weighting} over {last.heads or 'all'} heads")
        lines = [
            "# Explanation", "",
            f"**Question:** {self.question}", "",
            f"**Method:** {self.method}{aggregation}, gradients at layer {self.layer} · "
            f"**consistency** {self.consistency:.2f} · threshold {self.threshold:.2f}",
        ]
        if len(self.attempts) > 1:
            path = " -> ".join(f"{a.path}" + (f" ({a.weighting}, {a.heads or 'all'} heads)" if a.weighting else "")
                               + f" {a.score:.2f}" for a in self.attempts)
            lines.append(f"**Refinement:** {path}")
        lines += ["", "## Steps", ""]
        for s in self.steps:
            lines.append(f"{s.index + 1}. `{_inline(s.text)}` — loss {s.loss:.2f}, entropy {s.entropy:.2f}")
            tokens = ", ".join(f"`{_inline(d.text)}`@{d.position} ({d.score:.2f})" for d in s.token_dependencies)
            regions = ", ".join(f"{d.source} ({d.score:.2f})" for d in s.step_dependencies)
            lines.append(f"   - rests on: {tokens or _below_threshold(s, self.token_text)}"
                         + (f"; {regions}" if regions else ""))
            alternatives = ", ".join(_alternative(a) for a in s.alternatives)
            lines.append(f"   - decision at position {s.branch_position}: chose `{_inline(s.chosen)}` with "
                         f"confidence {s.confidence:.2f}; alternatives: {alternatives}")
            if self.anchors is not None:
                lines.append(_anchor_line(self.anchors, s.index))
        lines += ["", f"**Answer:** {self.answer if self.answer is not None else '(none)'}"]
        if self.anchors is not None:
            lines += ["", f"**Anchor:** {self.anchors.summary()}"]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A standalone page: per step, every token shaded by how much the step depended on it."""
        rows = []
        for s in self.steps:
            cells = []
            for j, text in enumerate(self.token_text):
                score = s.significance[j]
                own = " own" if s.start <= j < s.end else ""
                cells.append(f'<span class="t{own}" style="background: rgba(230, 80, 20, {score:.3f})" '
                             f'title="position {j}, significance {score:.3f}">{html.escape(text)}</span>')
            heading = f'<h3>Step {s.index + 1}: '
            if self.anchors is not None and self.anchors.anchor_step == s.index:
                heading = (f'<h3 class="anchor" style="{_ANCHOR_STYLE}">Anchor step (resampling importance '
                           f'{self.anchors.resampling_importance[s.index]:.2f}) · Step {s.index + 1}: ')
            rows.append(f'<div class="step">{heading}{html.escape(s.text)} '
                        f'<small>(confidence {s.confidence:.2f}, entropy {s.entropy:.2f})</small></h3>'
                        f'<div class="tokens">{"".join(cells)}</div></div>')
        summary = "" if self.anchors is None else f'\n<p class="anchor">{html.escape(self.anchors.summary())}</p>'
        return _PAGE.format(question=html.escape(self.question), method=html.escape(self.method),
                            consistency=self.consistency, anchors=summary, rows="\n".join(rows))


def _below_threshold(step: StepExplanation, texts: Sequence[str], n: int = 2) -> str:
    """What a step with no dependency above the threshold still rests on most: a confident step's row of Eq. 7 is
    small (its entropy factor), so "nothing" alone would read as a step that computes with nothing."""
    significance = np.asarray(step.significance)
    strongest = [j for j in np.argsort(-significance, kind="stable")[:n] if significance[j] > 0]
    named = ", ".join(f"`{_inline(texts[j])}`@{j} ({significance[j]:.2f})" for j in strongest)
    return "nothing above the threshold" + (f" (strongest: {named})" if named else "")


def _inline(text: str) -> str:
    return text.replace("\n", "\\n").replace("`", "'")


def _anchor_line(anchors: Anchors, step: int) -> str:
    """The step's resampling importance beside its analysis importance, the anchor step marked."""
    kl = anchors.resampling_importance[step]
    measured = ("resampling importance not measured (the step has probability one)" if kl is None else
                f"resampling importance {kl:.2f} ({anchors.replaced[step]}/{anchors.rollouts} rollouts rewrote it)")
    mark = "**anchor step**: " if anchors.anchor_step == step else ""
    return f"   - {mark}{measured}; analysis importance {_small(anchors.analysis_importance[step])}"


def _small(value: float) -> str:
    """Two decimals, or two significant digits below 0.005: an importance near 0 (a map's mass on an early step,
    an alternatives' share weighted by their probability) still ranks the steps by its order of magnitude, and
    `0.00` on every step would read as a tie."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.005 else f"{value:.1e}"


def _alternative(a: Alternative) -> str:
    text = f"`{_inline(a.token)}` {a.prob:.2f}"
    if a.answer_changed is not None:
        outcome = "answer changes" if a.answer_changed else "same answer"
        text += f" (-> {_inline(a.answer) if a.answer is not None else 'no answer'}: {outcome})"
    return text


_ANCHOR_STYLE = "border-left: 6px solid #1f6fd0; padding-left: 0.4em"
"""How the anchor step's heading stands out (inline, so that a page without anchors reads as before)."""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>SAGE explanation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
.tokens {{ font-family: monospace; white-space: pre-wrap; line-height: 1.8; }}
.t {{ padding: 1px 0; }}
.own {{ border-bottom: 2px solid #333; }}
</style></head>
<body>
<h2>{question}</h2>
<p>method: {method} · consistency {consistency:.2f} · shading: significance of each token for the step
(underlined: the step's own tokens)</p>{anchors}
{rows}
</body></html>
"""
