"""The shipped tokenizer: special ids, digits, lossless round trip, clear errors, the example layout."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

import sage_jax as sj
from sage_jax import layout
from sage_jax.data import train_tokenizer
from sage_jax.data.tokenizer import Tokenizer, TokenizerError, asset_path


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(512)


def test_vocabulary_matches_tiny_and_special_ids(tok):
    assert tok.vocab_size == sj.configs.get("tiny").vocab_size == 512
    added = {t["id"]: t["content"] for t in json.loads(tok.to_str())["added_tokens"]}
    assert added == layout.NAMES


def test_no_token_holds_a_digit_with_anything_else(tok):
    for token_id in range(layout.NUM_SPECIAL, tok.vocab_size):
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
    assert min(ids) >= layout.NUM_SPECIAL
    assert tok.decode(ids) == "<step> and <eos>"


def test_clear_errors(tok):
    with pytest.raises(TokenizerError, match=r"'\\ud800' at character 3"):
        tok.encode("abc\ud800")
    with pytest.raises(TokenizerError, match="can only encode str, got bytes"):
        tok.encode(b"abc")
    with pytest.raises(TokenizerError, match=r"id 3 at position 1 is the special token <step>"):
        tok.decode([40, layout.STEP])
    with pytest.raises(TokenizerError, match=r"id 512 at position 0 is outside the vocabulary"):
        tok.decode([512])
    with pytest.raises(TokenizerError, match="no shipped tokenizer of vocab_size=7"):
        Tokenizer.load(7)


def test_retraining_reproduces_the_shipped_file():
    trained = train_tokenizer.train(512, train_tokenizer.corpus())
    assert trained.to_str() == asset_path(512).read_text()
