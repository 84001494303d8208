"""The shipped tokenizer: special ids, digits, lossless round trip, clear errors, the example layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import sage_jax as sj
from sage_jax import special
from sage_jax.data import train_tokenizer
from sage_jax.data.schema import QUESTION_PART, Segment, Span
from sage_jax.data.tokenizer import Tokenizer, TokenizerError, asset_path


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(512)


def test_vocabulary_matches_tiny_and_special_ids(tok):
    assert tok.vocab_size == sj.configs.get("tiny").vocab_size == 512
    added = {t["id"]: t["content"] for t in json.loads(tok.to_str())["added_tokens"]}
    assert added == special.NAMES


def test_no_token_holds_a_digit_with_anything_else(tok):
    for token_id in range(special.NUM_SPECIAL, tok.vocab_size):
        text = tok.decode([token_id])
        if any(c.isdigit() for c in text):
            assert len(text) == 1, (token_id, text)
    assert [tok.decode([i]) for i in tok.encode("x=12345")][-5:] == list("12345")


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(alphabet=st.characters(codec="ascii"), min_size=1))
def test_offsets_cover_the_text(tok, text):
    ids, offsets = tok.encode_with_offsets(text)
    assert len(ids) == len(offsets)
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)


def test_special_token_text_is_plain_text(tok):
    ids = tok.encode("<step> and <eos>")
    assert min(ids) >= special.NUM_SPECIAL
    assert tok.decode(ids) == "<step> and <eos>"


def test_clear_errors(tok):
    with pytest.raises(TokenizerError, match=r"'\\ud800' at character 3"):
        tok.encode("abc\ud800")
    with pytest.raises(TokenizerError, match="can only encode str, got bytes"):
        tok.encode(b"abc")
    with pytest.raises(TokenizerError, match=r"id 3 at position 1 is the special token <step>"):
        tok.decode([40, special.STEP])
    with pytest.raises(TokenizerError, match=r"id 512 at position 0 is outside the vocabulary"):
        tok.decode([512])
    with pytest.raises(TokenizerError, match="no shipped tokenizer of vocab_size=7"):
        Tokenizer.load(7)


def test_encode_example_layout_segments_and_steps(tok):
    q, s1, s2, a, e = "1+2+3=?", "1+2=3", "3+3=6", "6", "Step 2 used 3."
    out = tok.encode_example(q, [s1, s2], a, e)
    enc = tok.encode
    expected = ([special.BOS, special.QUESTION] + enc(q) + [special.STEP] + enc(s1) + [special.STEP] + enc(s2)
                + [special.ANSWER] + enc(a) + [special.EOS, special.EXPLAIN] + enc(e) + [special.EOS])
    np.testing.assert_array_equal(out.tokens, expected)
    n_q, n_s1, n_s2, n_a, n_e = (len(enc(x)) for x in (q, s1, s2, a, e))
    segments = ([Segment.PROMPT] * (2 + n_q) + [Segment.RATIONALE] * (2 + n_s1 + n_s2)
                + [Segment.ANSWER] * (2 + n_a) + [Segment.EXPLANATION] * (2 + n_e))
    np.testing.assert_array_equal(out.segments, segments)
    steps = [-1] * (2 + n_q) + [0] * (1 + n_s1) + [1] * (1 + n_s2) + [-1] * (4 + n_a + n_e)
    np.testing.assert_array_equal(out.step_index, steps)
    assert out.step_deps is None and out.num_steps == 2
    assert tok.render(out.tokens) == ("<bos><question>1+2+3=?<step>1+2=3<step>3+3=6<answer>6<eos>"
                                      "<explain>Step 2 used 3.<eos>")


def test_options_are_rendered_after_the_question(tok):
    out = tok.encode_example("Pick one", [], "B", options=["1 (one)", "2"])
    assert tok.render(out.tokens) == "<bos><question>Pick one\nA) 1 (one)\nB) 2<answer>B<eos>"


def test_dependency_spans_become_token_indices(tok):
    deps = ((Span(QUESTION_PART, 0, 3),), (Span(0, 4, 5), Span(QUESTION_PART, 3, 5)))
    out = tok.encode_example("1+2+3=?", ["1+2=3", "3+3=6"], "6", dependencies=deps)
    assert out.step_deps.shape == (2, len(out))
    assert tok.render(out.tokens[out.step_deps[0]]) == "1+2"
    assert tok.render(out.tokens[out.step_deps[1]]) == "+33"  # "+3" of the question, then "3" of step 1
    q_start = 2
    np.testing.assert_array_equal(out.dependencies_of(0), [q_start, q_start + 1, q_start + 2])
    with pytest.raises(TokenizerError, match=r"dependencies\[0\] points at part 0"):
        tok.encode_example("q", ["a"], "b", dependencies=((Span(0, 0, 1),),))


def test_retraining_reproduces_the_shipped_file():
    trained = train_tokenizer.train(512, train_tokenizer.corpus())
    assert trained.to_str() == asset_path(512).read_text()
