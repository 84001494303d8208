"""The figures and views of `sage_jax.viz`: titles, axis labels, token tick labels, marked cells and shaded
tokens are asserted from the artists (behaviour, not pixels)."""

from __future__ import annotations

import html.parser
import math

import jax
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

import sage_jax as sj
from sage_jax import layout, viz
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.interpret import decision_points, explain, find_steps
from sage_jax.interpret.attribution import AgreementReport
from sage_jax.interpret.faithfulness import Faithfulness
from sage_jax.interpret.patching import LogProbs, PatchingResult
from sage_jax.interpret.significance import significance
from sage_jax.layout import SAGE
from sage_jax.model import forward
from tests.conftest import perturbed_params

QUESTION, STEPS, ANSWER = "7+5+2=?", ("7+5=12", "12+2=14"), "14"


@pytest.fixture(scope="module")
def model():
    cfg = sj.configs.get("test", vocab_size=512, max_seq_len=64)
    return cfg, perturbed_params(cfg, seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.load(512)


@pytest.fixture(scope="module")
def tokens(tokenizer):
    return SAGE.encode(tokenizer, QUESTION, STEPS, ANSWER).tokens


@pytest.fixture(scope="module")
def labels(tokens, tokenizer):
    return viz.token_labels(tokens, tokenizer)


@pytest.fixture(scope="module")
def explanation(model, tokenizer):
    cfg, params = model
    return explain(params, cfg, QUESTION, "\n".join(STEPS), tokenizer=tokenizer, answer=ANSWER)


def tick_texts(ticks) -> list[str]:
    return [t.get_text() for t in ticks]


def scatter_points(ax, label: str) -> set[tuple[int, int]]:
    """(row, column) cells of the scatter whose legend label starts with `label`."""
    found = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label().startswith(label)]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return {(int(round(y)), int(round(x))) for x, y in found[0].get_offsets()}


def test_token_labels_name_special_tokens_and_show_spaces(tokens, tokenizer, labels):
    assert len(labels) == len(tokens)
    assert labels[:2] == ["<bos>", "<question>"] and labels[-1] == "<eos>"
    assert [labels[i] for i in np.flatnonzero(tokens == layout.STEP)] == ["<step>", "<step>"]
    assert labels[int(np.flatnonzero(tokens == layout.ANSWER)[0])] == "<answer>"
    text_ids = [i for i, t in enumerate(tokens) if t >= layout.NUM_SPECIAL]
    assert "".join(labels[i] for i in text_ids) == QUESTION + "".join(STEPS) + ANSWER
    assert viz.token_labels(np.asarray(tokenizer.encode("a b")), tokenizer)[1] == "\u2423b"


def test_attention_figure_has_one_cell_per_layer_and_group_with_token_ticks(model, tokens, labels):
    cfg, params = model
    attn = np.asarray(forward(params, tokens[None], cfg, record=("attn",)).trace.attn[:, 0])
    fig = viz.attention_figure(attn, cfg, labels)
    assert isinstance(fig, Figure) and fig.get_suptitle()
    assert fig._repr_png_().startswith(b"\x89PNG")  # what Jupyter shows, without pyplot
    cells = [ax for ax in fig.axes if ax.images]
    groups = viz.head_groups(cfg)
    assert len(cells) == cfg.n_layers * len(groups)
    grid = [(l, c, g) for l in range(cfg.n_layers) for c, g in enumerate(groups)]
    for ax, (layer, column, (name, heads, _)) in zip(cells, grid):
        assert ax.get_title().startswith(f"layer {layer} · {name} heads")
        assert ax.get_xlabel() == "key (attended token)" and ax.get_ylabel() == "query (attending token)"
        # Token tick labels on the outer cells (bottom row, left column); every cell has the same tokens.
        assert tick_texts(ax.get_xticklabels()) == (labels if layer == cfg.n_layers - 1 else [])
        assert tick_texts(ax.get_yticklabels()) == (labels if column == 0 else [])
        np.testing.assert_allclose(ax.images[0].get_array(), attn[layer, list(heads)].mean(0), rtol=1e-6)
    per_head = viz.attention_figure(attn, cfg, labels, layers=[1], per_head=True)
    titles = [ax.get_title() for ax in per_head.axes if ax.images]
    assert titles == [f"layer 1 · {name}" for name in viz.head_labels(cfg)]
    assert all(tick_texts(ax.get_xticklabels()) == labels for ax in per_head.axes if ax.images)


def test_attention_figure_rejects_a_batched_or_mislabelled_array(model, labels):
    cfg, _ = model
    with pytest.raises(ValueError, match=r"trace.attn\[:, b\]"):
        viz.attention_figure(np.zeros((cfg.n_layers, 1, cfg.n_heads, len(labels), len(labels))), cfg, labels)
    with pytest.raises(ValueError, match="token labels"):
        viz.attention_figure(np.zeros((cfg.n_layers, cfg.n_heads, 3, 3)), cfg, labels)
    with pytest.raises(ValueError, match="layers"):
        viz.attention_figure(np.zeros((cfg.n_layers, cfg.n_heads, len(labels), len(labels))), cfg, labels,
                             layers=[cfg.n_layers])


def test_significance_figure_marks_the_decision_points_and_branching_tokens(model, tokens, labels):
    cfg, params = model
    steps = find_steps(tokens)
    sig = significance(params, cfg, tokens, steps)
    logits = forward(params, tokens[None], cfg).logits[0]
    decisions = decision_points(sig.score, logits, tokens, steps, threshold=0.2)
    assert decisions.points, "the normalised map peaks at 1, so some pair is above 0.2"
    fig = viz.significance_figure(sig.score, labels, decisions=decisions)
    (ax,) = [a for a in fig.axes if a.images]
    assert ax.get_title() and ax.get_xlabel() == "source token" and ax.get_ylabel() == "reasoning step"
    assert tick_texts(ax.get_xticklabels()) == labels
    assert tick_texts(ax.get_yticklabels()) == ["step 1", "step 2"]
    np.testing.assert_allclose(ax.images[0].get_array(), np.asarray(sig.score), rtol=1e-6)
    assert scatter_points(ax, "decision point (significance > 0.20)") == {(s, j) for s, j, _ in decisions.points}
    assert scatter_points(ax, "branching token") == {(d.step, d.position) for d in decisions.steps}


def test_explanation_figure_shows_its_rows_points_and_step_texts(explanation):
    fig = viz.explanation_figure(explanation)
    (ax,) = [a for a in fig.axes if a.images]
    assert explanation.question in ax.get_title()
    assert tick_texts(ax.get_yticklabels()) == [f"step {s.index + 1}: {s.text}" for s in explanation.steps]
    assert tick_texts(ax.get_xticklabels()) == [t.replace(" ", "\u2423") for t in explanation.token_text]
    np.testing.assert_allclose(ax.images[0].get_array(), [s.significance for s in explanation.steps], rtol=1e-6)
    points = {(s.index, d.position) for s in explanation.steps for d in s.token_dependencies}
    assert points and scatter_points(ax, "decision point") == points
    assert scatter_points(ax, "branching token") == {(s.index, s.branch_position) for s in explanation.steps}
    outlined = [(p.get_x() + 0.5, p.get_width()) for p in ax.patches]
    assert outlined == [(s.start, s.end - s.start) for s in explanation.steps]


class _SpanParser(html.parser.HTMLParser):
    """Collects the token spans of `explanation_html`: (step, attributes, text inside)."""

    def __init__(self):
        super().__init__()
        self.tokens, self.step, self.depth, self.current = [], -1, 0, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "step":
            self.step += 1
        if tag == "span" and "data-position" in attrs:
            self.current = [self.step, attrs, ""]
            self.depth = 0
        elif tag == "span" and self.current is not None:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "span" and self.current is not None:
            if self.depth == 0:
                self.tokens.append(tuple(self.current))
                self.current = None
            else:
                self.depth -= 1

    def handle_data(self, data):
        if self.current is not None:
            self.current[2] += data


def test_explanation_html_shades_every_token_by_its_significance(explanation):
    page = viz.explanation_html(explanation)
    parser = _SpanParser()
    parser.feed(page)
    n_tokens = len(explanation.token_text)
    assert len(parser.tokens) == len(explanation.steps) * n_tokens
    for step, attrs, text in parser.tokens:
        s = explanation.steps[step]
        j = int(attrs["data-position"])
        assert float(attrs["data-significance"]) == pytest.approx(s.significance[j], abs=1e-6)
        assert f"rgba(230, 80, 20, {s.significance[j]:.3f})" in attrs["style"]
        classes = set(attrs["class"].split())
        assert ("decision" in classes) == (j in {d.position for d in s.token_dependencies})
        assert ("own" in classes) == (s.start <= j < s.end)
        assert ("branch" in classes) == (j == s.branch_position)
        assert text.startswith(explanation.token_text[j])
        if j == s.branch_position:
            for a in s.alternatives:
                assert f"{a.token} p={a.prob:.3f}" in text
    assert "&lt;step&gt;" in page and "<step>" not in page.replace("<step", "")


def test_faithfulness_figure_draws_the_mean_curves_and_the_dashed_random_baseline():
    fractions = (0.1, 0.5, 1.0)
    comp = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    method = Faithfulness(comp, comp / 2, comp.mean(-1), (comp / 2).mean(-1), np.zeros(2))
    rand = Faithfulness(comp / 4, comp, (comp / 4).mean(-1), comp.mean(-1), np.zeros(2))
    fig = viz.faithfulness_figure({"significance": method, "random": rand}, fractions)
    left, right = fig.axes
    assert "Deletion" in left.get_title() and "Insufficiency" in right.get_title()
    for ax in (left, right):
        assert ax.get_xlabel().startswith("fraction") and ax.get_ylabel().startswith("step log-prob drop")
    lines = {line.get_label(): line for line in left.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"significance (AOPC 3.00)", "random (AOPC 0.75)"}
    np.testing.assert_allclose(lines["significance (AOPC 3.00)"].get_ydata(), [2.0, 3.0, 4.0])
    np.testing.assert_allclose(lines["significance (AOPC 3.00)"].get_xdata(), [10.0, 50.0, 100.0])
    assert lines["random (AOPC 0.75)"].get_linestyle() == "--"
    with pytest.raises(ValueError, match="fractions"):
        viz.faithfulness_figure({"random": rand}, (0.1, 0.5))


def test_patching_figures_show_the_chosen_effect_with_token_and_head_labels(model, labels):
    cfg, _ = model
    rng = np.random.default_rng(0)
    step, answer = rng.normal(size=(cfg.n_layers, len(labels), 2)), rng.normal(size=(cfg.n_layers, len(labels)))
    result = PatchingResult(LogProbs(step, answer), LogProbs(np.zeros(2), np.zeros(())))
    fig = viz.residual_patching_figure(result, labels, target=1)
    (ax,) = [a for a in fig.axes if a.images]
    np.testing.assert_allclose(ax.images[0].get_array(), step[..., 1], rtol=1e-6)
    assert "step 2" in ax.get_title() and ax.get_ylabel() == "layer"
    assert tick_texts(ax.get_xticklabels()) == labels
    assert tick_texts(ax.get_yticklabels()) == [f"layer {l}" for l in range(cfg.n_layers)]
    low, high = ax.images[0].get_clim()
    assert low == -high  # a symmetric diverging scale: 0 is white
    assert high == pytest.approx(np.abs(step[..., 1]).max(), rel=1e-6)  # the figure draws in float32
    heads = PatchingResult(LogProbs(rng.normal(size=(cfg.n_layers, cfg.n_heads, 2)),
                                    rng.normal(size=(cfg.n_layers, cfg.n_heads))), result.baseline)
    (hax,) = [a for a in viz.head_patching_figure(heads, cfg).axes if a.images]
    np.testing.assert_allclose(hax.images[0].get_array(), heads.effect.answer, rtol=1e-6)
    assert tick_texts(hax.get_xticklabels()) == viz.head_labels(cfg) == ["h0 reasoning", "h1 reasoning",
                                                                          "h2 memory", "h3 meta"]
    with pytest.raises(ValueError, match="target"):
        viz.residual_patching_figure(result, labels, target=2)
    with pytest.raises(ValueError, match=r"\[layers, heads\]"):
        viz.head_patching_figure(result, cfg)


def test_agreement_figure_writes_every_pair_and_marks_missing_ones():
    report = AgreementReport(("a", "b"), np.array([[1.0, 0.25], [0.25, 1.0]]),
                             np.array([[1.0, math.nan], [math.nan, 1.0]]), 3)
    left, right = viz.agreement_figure(report).axes
    assert [t.get_text() for t in left.texts] == ["1.00", "0.25", "0.25", "1.00"]
    assert [t.get_text() for t in right.texts] == ["1.00", "n/a", "n/a", "1.00"]
    assert right.get_title() == "top-3 overlap" and tick_texts(left.get_xticklabels()) == ["a", "b"]


def test_tree_html_names_the_axes_of_trace_and_edits_fields(model, tokens, labels):
    cfg, params = model
    trace = forward(params, tokens[None], cfg, record=("attn", "gate")).trace
    page = viz.tree_html(trace, token_labels=labels, cfg=cfg, compressed=False)
    for name in ("layer", "batch", "head", "query", "key", "attn", "gate", "h3 meta"):
        assert name in page, name
    edits = sj.Edits(head_mask=np.ones((cfg.n_layers, 1, cfg.n_heads)))
    assert "head_mask" in viz.tree_html(edits, cfg=cfg, compressed=False)
    with pytest.raises(TypeError, match="Trace or Edits"):
        viz.tree_html({"attn": trace.attn})
    with pytest.raises(ValueError, match=r"expected 5 axes"):
        viz.field_figure("attn", np.zeros((2, 3)))


def test_swap_first_digit_changes_one_question_digit(tokens, tokenizer, labels):
    corrupted, position = viz.swap_first_digit(tokens, tokenizer)
    assert position == labels.index("7") and np.flatnonzero(corrupted != tokens).tolist() == [position]
    assert viz.token_labels(corrupted, tokenizer)[position] == "8"
    with pytest.raises(ValueError, match="no digit"):
        viz.swap_first_digit(SAGE.encode(tokenizer, "x=?", ["1"], "1").tokens, tokenizer)


def test_explanation_masks_cover_the_steps_and_the_answer(explanation, tokens):
    step_mask, answer_mask = viz.explanation_masks(explanation)
    np.testing.assert_array_equal(step_mask, np.asarray(find_steps(tokens).mask))
    answer_at = int(np.flatnonzero(tokens == layout.ANSWER)[0])
    assert np.flatnonzero(answer_mask).tolist() == list(range(answer_at + 1, len(tokens) - 1))


def test_save_report_figures_writes_every_figure(model, tokenizer, explanation, tmp_path):
    cfg, params = model
    paths = viz.save_report_figures(tmp_path / "report", params, cfg, tokenizer, [explanation, explanation],
                                    key=jax.random.key(1), n_random=2)
    names = [p.name for p in paths]
    assert names == ["significance_0.png", "explanation_0_view.html", "significance_1.png",
                     "explanation_1_view.html", "attention_0.png", "trace_0.html", "faithfulness_0.png",
                     "patching_residual_0.png", "patching_heads_0.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") if path.suffix == ".png" else data.lstrip().startswith(b"<")
    with pytest.raises(ValueError, match="at least one"):
        viz.save_report_figures(tmp_path, params, cfg, tokenizer, [])
