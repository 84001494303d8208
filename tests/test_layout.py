"""The layout: encoding a problem (tokens, segments, step index, step spans, answer mask, dependencies), steps
from markers, from a step index and from character offsets, finding the answer, and the explanation grammar."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax import layout
from sage_jax.data import Tokenizer
from sage_jax.layout import QUESTION_PART, SAGE, ByteCodec, Claim, LayoutError, Segment, Span

TOK = Tokenizer.load(512)
S, A, E = layout.STEP, layout.ANSWER, layout.EOS
# positions:      0            1                 2   3   4  5   6   7  8   9  10  11 12  13
LAYOUT = np.array([layout.BOS, layout.QUESTION, 10, 11, S, 20, 21, 22, S, 30, A, 40, E, 0], np.int32)


def test_encode_tokens_segments_step_index_spans_and_answer():
    q, s1, s2, a, e = "1+2+3=?", "1+2=3", "3+3=6", "6", "Step 2 used 3."
    out = SAGE.encode(TOK, q, [s1, s2], a, e)
    enc = TOK.encode
    expected = ([layout.BOS, layout.QUESTION] + enc(q) + [S] + enc(s1) + [S] + enc(s2)
                + [A] + enc(a) + [E, layout.EXPLAIN] + enc(e) + [E])
    np.testing.assert_array_equal(out.tokens, expected)
    n_q, n_s1, n_s2, n_a, n_e = (len(enc(x)) for x in (q, s1, s2, a, e))
    segments = ([Segment.PROMPT] * (2 + n_q) + [Segment.RATIONALE] * (2 + n_s1 + n_s2)
                + [Segment.ANSWER] * (2 + n_a) + [Segment.EXPLANATION] * (2 + n_e))
    np.testing.assert_array_equal(out.segments, segments)
    steps = [-1] * (2 + n_q) + [0] * (1 + n_s1) + [1] * (1 + n_s2) + [-1] * (4 + n_a + n_e)
    np.testing.assert_array_equal(out.step_index, steps)
    assert out.step_deps is None and out.num_steps == 2
    first = 2 + n_q + 1
    assert out.step_spans == ((first, first + n_s1), (first + n_s1 + 1, first + n_s1 + 1 + n_s2))
    assert out.step_spans == tuple(SAGE.step_spans(out.tokens))
    assert TOK.render(out.tokens[out.answer_mask]) == "6"
    np.testing.assert_array_equal(out.answer_mask, layout.answer_mask(out.tokens))
    assert TOK.render(out.tokens) == ("<bos><question>1+2+3=?<step>1+2=3<step>3+3=6<answer>6<eos>"
                                      "<explain>Step 2 used 3.<eos>")


def test_options_are_rendered_after_the_question_and_the_prompt_is_its_segment():
    out = SAGE.encode(TOK, "Pick one", [], "B", options=["1 (one)", "2"])
    assert TOK.render(out.tokens) == "<bos><question>Pick one\nA) 1 (one)\nB) 2<answer>B<eos>"
    prompt = SAGE.prompt(TOK, "Pick one", ["1 (one)", "2"])
    np.testing.assert_array_equal(prompt, out.tokens[out.segments == Segment.PROMPT])


def test_a_chain_without_answer_ends_at_eos():
    out = SAGE.encode(TOK, "q", ["a"])
    assert TOK.render(out.tokens) == "<bos><question>q<step>a<eos>" and not out.answer_mask.any()
    assert layout.parse_answer(TOK, out.tokens) is None


def test_dependency_spans_become_token_indices():
    deps = ((Span(QUESTION_PART, 0, 3),), (Span(0, 4, 5), Span(QUESTION_PART, 3, 5)))
    out = SAGE.encode(TOK, "1+2+3=?", ["1+2=3", "3+3=6"], "6", dependencies=deps)
    assert out.step_deps.shape == (2, len(out))
    assert TOK.render(out.tokens[out.step_deps[0]]) == "1+2"
    assert TOK.render(out.tokens[out.step_deps[1]]) == "+33"  # "+3" of the question, then "3" of step 1
    q_start = 2
    np.testing.assert_array_equal(out.dependencies_of(0), [q_start, q_start + 1, q_start + 2])
    with pytest.raises(LayoutError, match=r"dependencies\[0\] points at part 0"):
        SAGE.encode(TOK, "q", ["a"], "b", dependencies=((Span(0, 0, 1),),))


def test_byte_codec_offsets_place_spans_on_every_byte_of_a_character():
    codec = ByteCodec()
    ids, offsets = codec.encode_with_offsets("aé1")
    assert ids == codec.encode("aé1") and offsets == [(0, 1), (1, 2), (1, 2), (2, 3)]
    out = SAGE.encode(codec, "aé1", ["x"], dependencies=((Span(QUESTION_PART, 1, 2),),))
    np.testing.assert_array_equal(out.dependencies_of(0), [3, 4])


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=[]), "rationale is empty"),
    (dict(steps=[""]), r"step 0 \(''\) encodes to no tokens"),
    (dict(steps=["a"], answer="\x03"), r"the answer encodes to special id\(s\) \[3\]"),
])
def test_strict_encoding_names_the_bad_piece(kwargs, message):
    with pytest.raises(LayoutError, match=message):
        SAGE.encode(ByteCodec(offset=0), "q", strict=True, **kwargs)


def test_answer_is_read_after_the_first_marker_up_to_the_next_special_token():
    ids = [S] + TOK.encode("3+4=7") + [A] + TOK.encode(" 7") + [E]
    assert layout.parse_answer(TOK, ids) == "7"
    assert layout.parse_answer(TOK, ids[:-1] + [S, 9]) == "7"
    assert layout.parse_answer(TOK, [S] + TOK.encode("3+4=7")) is None
    assert SAGE.answer_span([1, 3, 20, A, 50, 51, E, 0]) == (4, 6)
    assert SAGE.answer_span([1, 3, 20, A, 50]) == (4, 5)
    np.testing.assert_array_equal(layout.answer_mask([1, 3, 20, A, 50, 51, E, 0]),
                                  [0, 0, 0, 0, 1, 1, 0, 0])


def test_steps_from_index_equal_the_marker_steps_under_jit():
    rows = [SAGE.encode(TOK, "1+2+3=?", ["1+2=3", "3+3=6"], "6"), SAGE.encode(TOK, "4+4=?", ["4+4=8"], "8")]
    length = max(len(r) for r in rows)
    tokens = np.stack([np.pad(r.tokens, (0, length - len(r))) for r in rows])
    index = np.stack([np.pad(r.step_index, (0, length - len(r)), constant_values=-1) for r in rows])
    steps = jax.jit(layout.steps_from_index, static_argnums=2)(jnp.asarray(tokens), jnp.asarray(index), 3)
    for row, item in enumerate(rows):
        expected = layout.find_steps(tokens[row])
        n = expected.n_steps
        np.testing.assert_array_equal(steps.mask[row, :n], expected.mask)
        np.testing.assert_array_equal(steps.starts[row, :n], expected.starts)
        np.testing.assert_array_equal(steps.ends[row, :n], expected.ends)
        assert not np.asarray(steps.mask[row, n:]).any() and not np.asarray(steps.sources[row, n:]).any()


def test_free_text_lines_map_onto_token_spans_through_offsets():
    text = "  3+1=4\n\n4+9=13  \n13+8=21"
    chars = layout.line_spans(text)
    assert [text[s:e] for s, e in chars] == layout.split_lines(text) == ["3+1=4", "4+9=13", "13+8=21"]
    ids, offsets = TOK.encode_with_offsets(text)
    spans = layout.token_spans(offsets, chars, first=5)
    assert [TOK.decode(ids[s - 5:e - 5]) for s, e in spans] == ["3+1=4", "4+9=13", "13+8=21"]
    steps = layout.from_spans(spans, 5 + len(ids))
    assert steps.n_steps == 3
    with pytest.raises(LayoutError, match="overlap no token"):
        layout.token_spans(offsets, [(len(text) + 1, len(text) + 2)])


def test_explanation_grammar_round_trips():
    claims = [[Claim("3", QUESTION_PART), Claim("+1", QUESTION_PART)], [Claim("4", 0)], []]
    text = layout.render_explanation(claims)
    assert text == ("Step 1 depends on '3' from the question, '+1' from the question. Step 2 depends on '4' "
                    "from step 1. Step 3 depends on no earlier token.")
    assert layout.parse_explanation(text) == {0: tuple(claims[0]), 1: tuple(claims[1])}
    assert layout.parse_explanation("Step 0 depends on '9' from the question.") == {-1: (Claim("9", -1),)}


def test_find_steps_owns_tokens_between_markers():
    steps = layout.find_steps(LAYOUT)
    np.testing.assert_array_equal(steps.starts, [5, 9])
    np.testing.assert_array_equal(steps.ends, [8, 10])
    expected = np.zeros((2, 14), bool)
    expected[0, 5:8] = True
    expected[1, 9:10] = True
    np.testing.assert_array_equal(steps.mask, expected)
    assert steps.mask.dtype == jnp.bool_ and steps.starts.dtype == jnp.int32


def test_queries_are_the_step_shifted_left_and_sources_precede_it():
    steps = layout.find_steps(LAYOUT)
    expected = np.zeros((2, 14), bool)
    expected[0, 4:7] = True  # the <step> marker at 4 predicts token 5
    expected[1, 8:9] = True
    np.testing.assert_array_equal(steps.queries, expected)
    np.testing.assert_array_equal(steps.sources[1], np.arange(14) < 9)


def test_pluggable_splitter():
    split_at_22 = lambda tokens: [(2, 6), (7, 10)]  # noqa: E731
    steps = layout.find_steps(LAYOUT, splitter=split_at_22)
    np.testing.assert_array_equal(steps.starts, [2, 7])
    np.testing.assert_array_equal(steps.ends, [6, 10])


@pytest.mark.parametrize("spans, message", [
    ([(5, 20)], "outside the sequence"),
    ([(-1, 3)], "outside the sequence"),
    ([(5, 5)], "or is empty"),
    ([(0, 3)], "starts at token 0"),
    ([(5, 8), (7, 9)], "overlaps step 0"),
    ([], "rationale is empty"),
])
def test_bad_spans_are_rejected(spans, message):
    with pytest.raises(LayoutError, match=message):
        layout.from_spans(spans, 14)


def test_no_marker_means_empty_rationale():
    with pytest.raises(LayoutError, match="empty rationale"):
        layout.find_steps(np.array([layout.BOS, layout.QUESTION, 10, A, 40, E]))


def test_empty_step_is_rejected_with_its_position():
    with pytest.raises(LayoutError, match="marker at position 2 is followed directly by <answer> at position 3"):
        layout.find_steps(np.array([layout.BOS, 10, S, A, 40, E]))


def test_step_spans_can_skip_empty_steps():
    tokens = np.array([layout.BOS, 10, S, S, 11, S, E])
    assert layout.SAGE.step_spans(tokens, skip_empty=True) == [(4, 5)]
    with pytest.raises(LayoutError, match="marker at position 2 is followed directly by <step> at position 3"):
        layout.SAGE.step_spans(tokens)


def test_find_steps_wants_one_sequence():
    with pytest.raises(LayoutError, match=r"\[T\] tokens"):
        layout.find_steps(LAYOUT[None])
