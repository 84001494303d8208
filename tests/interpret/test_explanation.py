"""`Explanation` views on an object built by hand: JSON round trip, Markdown content, HTML shading and escaping."""

from __future__ import annotations

import dataclasses
import json
import re

from sage_jax.interpret.explanation import (Alternative, Attempt, Explanation, StepDependency, StepExplanation,
                                            TokenDependency)

TEXT = ("<bos>", "<question>", "a", "<", "b", "<step>", "x", "<step>", "y", "<eos>")


def hand_made() -> Explanation:
    first = StepExplanation(
        index=0, text="x", start=6, end=7, loss=1.5, entropy=0.75, branch_position=6, chosen="x", confidence=0.4,
        alternatives=(Alternative("x", 0.4, "x\n", "7", False), Alternative("z", 0.3, "z\n", "8", True)),
        token_dependencies=(TokenDependency(3, "<", 1.0),), step_dependencies=(StepDependency("question", 1.0),),
        significance=(0.0, 0.0, 0.1, 1.0, 0.2, 0.05, 0.0, 0.0, 0.0, 0.0))
    second = StepExplanation(
        index=1, text="y", start=8, end=9, loss=0.5, entropy=0.25, branch_position=8, chosen="y", confidence=0.9,
        alternatives=(Alternative("y", 0.9),), token_dependencies=(TokenDependency(6, "x", 0.5),),
        step_dependencies=(StepDependency("step 1", 0.5),),
        significance=(0.0, 0.0, 0.0, 0.25, 0.0, 0.0, 0.5, 0.1, 0.0, 0.0))
    return Explanation(question="is a<b & c?", answer="7", method="exact", consistency=0.93, threshold=0.3,
                       layer=0, tokens=(1, 6, 104, 67, 105, 3, 127, 3, 128, 2), token_text=TEXT,
                       steps=(first, second),
                       attempts=(Attempt("exact", "attention", "meta", 0.7),
                                 Attempt("exact", "attention", "all", 0.93)))


def test_json_round_trip():
    explanation = hand_made()
    text = explanation.to_json()
    data = json.loads(text)
    assert data["steps"][0]["token_dependencies"] == [{"position": 3, "text": "<", "score": 1.0}]
    assert data["attempts"][1] == {"path": "exact", "weighting": "attention", "heads": "all", "score": 0.93}
    assert Explanation.from_json(text) == explanation


def test_markdown_names_steps_dependencies_decisions_and_refinement():
    md = hand_made().to_markdown()
    assert "**Question:** is a<b & c?" in md
    assert "**Method:** exact, attention over all heads, gradients at layer 0" in md
    assert "**consistency** 0.93" in md
    assert "**Refinement:** exact (attention, meta heads) 0.70 -> exact (attention, all heads) 0.93" in md
    assert "1. `x` — loss 1.50, entropy 0.75" in md
    assert "rests on: `<`@3 (1.00); question (1.00)" in md
    assert ("chose `x` with confidence 0.40; alternatives: `x` 0.40 (-> 7: same answer), "
            "`z` 0.30 (-> 8: answer changes)") in md
    assert "rests on: `x`@6 (0.50); step 1 (0.50)" in md
    assert md.rstrip().endswith("**Answer:** 7")


def test_a_step_with_nothing_above_the_threshold_still_shows_what_it_rests_on_most():
    """A confident step's Eq. 7 row is small (its entropy factor): the Markdown names its strongest tokens, labelled
    as below the threshold, instead of a bare "nothing" that reads as a step computing with nothing."""
    explanation = hand_made()
    quiet = dataclasses.replace(explanation.steps[1], token_dependencies=(), step_dependencies=())
    md = dataclasses.replace(explanation, steps=(explanation.steps[0], quiet)).to_markdown()
    assert "rests on: nothing above the threshold (strongest: `x`@6 (0.50), `<`@3 (0.25))" in md
    silent = dataclasses.replace(quiet, significance=(0.0,) * len(TEXT))
    md = dataclasses.replace(explanation, steps=(explanation.steps[0], silent)).to_markdown()
    assert "rests on: nothing above the threshold\n" in md


def test_html_shades_each_token_by_its_significance_and_escapes_text():
    page = hand_made().to_html()
    assert "is a&lt;b &amp; c?" in page and "is a<b" not in page
    spans = re.findall(r'<span class="t( own)?" style="background: rgba\(230, 80, 20, ([0-9.]+)\)" '
                       r'title="position (\d+), significance [0-9.]+">([^<]*)</span>', page)
    assert len(spans) == 2 * len(TEXT)
    first = spans[: len(TEXT)]
    assert [float(alpha) for _, alpha, _, _ in first] == [0.0, 0.0, 0.1, 1.0, 0.2, 0.05, 0.0, 0.0, 0.0, 0.0]
    assert [int(pos) for _, _, pos, _ in first] == list(range(len(TEXT)))
    assert [own for own, _, pos, _ in first if own] == [" own"] and first[6][0] == " own"
    assert first[3][3] == "&lt;" and first[0][3] == "&lt;bos&gt;"
