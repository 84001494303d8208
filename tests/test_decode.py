"""KV-cache generation against full forward passes: logits, attention, padding, stopping, sampling.

Each distinct `generate` setting (shapes, budget, what is returned) compiles its own decoding loop, so the tests
share a few: greedy decoding of `PROMPTS` for `N_NEW` tokens, tracked and with logits (the tokens do not depend on
what else is returned), is computed once for the module, and so is the same decoding stopped at an end token.
Forward passes over the output run compiled (`jit_forward`), and results are read on the host as numpy, not
indexed element by element on the device (each distinct index is one more compiled program)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from tests.conftest import jit_forward, make_tokens

PROMPTS = [[5, 9, 3, 17, 22, 8], [40, 3, 11], [7, 7, 30, 3, 12]]
N_NEW = 8


def _decode(params, cfg, prompt, eos_id=63):
    """`prompt` decoded greedily for `N_NEW` tokens, tracked and with logits: the one compiled setting these tests
    share for `[3, 6]` prompts (`eos_id` is an argument of the program, not a constant of it)."""
    return sj.generate(params, cfg, prompt, max_new_tokens=N_NEW, track=True, return_logits=True, eos_id=eos_id)


@pytest.fixture(scope="module")
def greedy(cfg, params):
    """`PROMPTS` (left-padded to `[3, 6]`) decoded greedily; no row meets the end token 63."""
    return _decode(params, cfg, PROMPTS)


@pytest.fixture(scope="module")
def eos(greedy):
    """Row 0's second generated token, taken as the end token."""
    return int(greedy.tokens[0, 7])


@pytest.fixture(scope="module")
def stopped(cfg, params, eos):
    """`PROMPTS` decoded greedily with `eos` as the end token: row 0 stops after two tokens."""
    return _decode(params, cfg, PROMPTS, eos_id=eos)


def _check_against_forward(cfg, params, out, n_new):
    """Every generated token's logits and tracked attention equal a full forward over the final sequence (recording
    every field: the program of test_recorded_trace_is_the_forward_trace_of_the_output's forward)."""
    full = jit_forward(params, out.tokens, cfg, mask=out.mask, record="all")
    full_logits, full_attn = np.asarray(full.logits), np.asarray(full.trace.attn)
    logits, attention, tokens = np.asarray(out.logits), np.asarray(out.attention), np.asarray(out.tokens)
    p = tokens.shape[1] - n_new
    for row in range(tokens.shape[0]):
        for i in range(int(out.num_generated[row])):
            chex.assert_trees_all_close(logits[row, i], full_logits[row, p + i - 1], atol=1e-5)
            chex.assert_trees_all_close(attention[row, i], full_attn[:, row, :, p + i - 1], atol=1e-5)
            assert tokens[row, p + i] == np.argmax(full_logits[row, p + i - 1])


def test_cache_matches_forward_without_padding(cfg, params):
    prompt = make_tokens(cfg, (3, 6), seed=11)
    out = _decode(params, cfg, prompt)
    assert out.mask[:, 6:].all() and (out.num_generated == N_NEW).all()
    _check_against_forward(cfg, params, out, N_NEW)


def test_cache_matches_forward_with_padding(cfg, params, greedy):
    out = greedy
    np.testing.assert_array_equal(np.asarray(out.mask[:, :6]),
                                  [[True] * 6, [False] * 3 + [True] * 3, [False] + [True] * 5])
    _check_against_forward(cfg, params, out, N_NEW)
    # A padded row generates exactly what it generates alone.
    alone = sj.generate(params, cfg, [PROMPTS[1]], max_new_tokens=N_NEW, return_logits=True, eos_id=63)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0, 3:], np.asarray(out.tokens)[1, 6:])
    chex.assert_trees_all_close(np.asarray(alone.logits)[0], np.asarray(out.logits)[1], atol=1e-5)


def test_tracked_attention_covers_earlier_tokens_only(cfg, greedy):
    chex.assert_shape(greedy.attention, (3, N_NEW, cfg.n_layers, cfg.n_heads, 6 + N_NEW))
    att = np.asarray(greedy.attention)
    for i in range(N_NEW):
        np.testing.assert_array_equal(att[:, i, :, :, 6 + i:], 0.0)  # the token itself and later slots
    np.testing.assert_array_equal(att[1, :, :, :, :3], 0.0)  # padding
    chex.assert_trees_all_close(att.sum(-1), np.ones(att.shape[:-1]), atol=1e-5)


def test_stops_each_row_at_its_end_token(cfg, eos, stopped):
    out = jax.tree_util.tree_map(np.asarray, stopped)
    row0 = out.tokens[0, 6:]
    assert row0[1] == eos and (row0[2:] == cfg.pad_id).all()
    assert int(out.num_generated[0]) == 2
    np.testing.assert_array_equal(out.mask[0, 8:], False)
    np.testing.assert_array_equal(out.logits[0, 2:], 0.0)
    for row in (1, 2):  # other rows continue until their own end token or the budget
        gen = out.tokens[row, 6:]
        stop = np.flatnonzero(gen == eos)
        expected = N_NEW if stop.size == 0 else stop[0] + 1
        assert int(out.num_generated[row]) == expected


def test_sampling_is_deterministic_for_a_key(cfg, params, greedy):
    kw = dict(max_new_tokens=N_NEW, temperature=1.0, eos_id=63)
    a = sj.generate(params, cfg, PROMPTS, key=jax.random.key(1), **kw)
    b = sj.generate(params, cfg, PROMPTS, key=jax.random.key(1), **kw)
    c = sj.generate(params, cfg, PROMPTS, key=jax.random.key(2), **kw)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    top1 = sj.generate(params, cfg, PROMPTS, key=jax.random.key(3), top_k=1, **kw)
    np.testing.assert_array_equal(np.asarray(top1.tokens), np.asarray(greedy.tokens))


def test_top_k_restricts_samples(cfg, params):
    out = sj.generate(params, cfg, [PROMPTS[0]] * 16, max_new_tokens=1, temperature=5.0, top_k=3,
                      key=jax.random.key(4), return_logits=True, eos_id=63)
    allowed = set(np.argsort(np.asarray(out.logits[0, 0]))[-3:].tolist())
    samples = set(np.asarray(out.tokens[:, -1]).tolist())
    assert samples <= allowed and len(samples) > 1


def test_recorded_trace_is_the_forward_trace_of_the_output(cfg, params, eos, stopped):
    """Row for row, `record=` gives what a forward over the final (padded) sequence records: every field, and
    the hidden state; rows of slots after a row's end token hold zeros."""
    out = sj.generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, eos_id=eos, record="all", return_hidden=True)
    full = jit_forward(params, out.tokens, cfg, mask=out.mask, record="all")
    mask = np.asarray(out.mask)
    for name in sj.Record.all().names:
        got, want = np.asarray(getattr(out.trace, name)), np.asarray(getattr(full.trace, name))
        assert got.shape == want.shape, name
        axis = sj.trace.TRACE_QUERY_AXIS[name]
        rows = np.moveaxis(got, (1, axis), (0, 1))  # [B, T, ...]
        np.testing.assert_allclose(rows[mask], np.moveaxis(want, (1, axis), (0, 1))[mask], atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(rows[0, 8:], 0.0, err_msg=name)
    np.testing.assert_allclose(np.asarray(out.hidden)[mask], np.asarray(full.hidden)[mask], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(stopped.tokens))
    assert stopped.trace is None and stopped.hidden is None  # tracking alone records no Trace
    only_norms = sj.generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, eos_id=eos, record="value_norms")
    assert only_norms.trace.attn is None
    np.testing.assert_array_equal(np.asarray(only_norms.trace.value_norms), np.asarray(out.trace.value_norms))


def test_edited_generation_is_greedy_decoding_of_the_edited_forward(cfg, params):
    """An `Edits` sized for the final sequence, applied row by row with the cache, decodes exactly the tokens a
    loop of full edited forwards (one compiled program) picks; an empty `Edits` changes nothing."""
    prompt, n = [PROMPTS[0]], 6
    length = len(PROMPTS[0]) + n
    edge = np.ones((cfg.n_layers, 1, cfg.n_heads, length, length), bool)
    edge[:, :, :, :, 1:3] = False  # no query may read tokens 1 and 2
    head = np.ones((cfg.n_layers, 1, cfg.n_heads), np.float32)
    head[0, 0, 1] = 0.0
    edits = sj.Edits(edge_mask=jnp.asarray(edge), head_mask=jnp.asarray(head))
    out = sj.generate(params, cfg, prompt, max_new_tokens=n, eos_id=63, edits=edits, return_logits=True)
    tokens, decoded_logits, p = np.zeros((1, length), np.int32), np.asarray(out.logits), len(PROMPTS[0])
    tokens[0, :p] = PROMPTS[0]
    for i in range(n):
        logits = np.asarray(jit_forward(params, jnp.asarray(tokens), cfg, edits=edits).logits)[0, p + i - 1]
        chex.assert_trees_all_close(decoded_logits[0, i], logits, atol=1e-5)
        tokens[0, p + i] = np.argmax(logits)
    np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
    plain = sj.generate(params, cfg, prompt, max_new_tokens=n, eos_id=63)
    empty = sj.generate(params, cfg, prompt, max_new_tokens=n, eos_id=63, edits=sj.Edits())
    np.testing.assert_array_equal(np.asarray(empty.tokens), np.asarray(plain.tokens))
    assert not np.array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))


class TestBadInput:

    def test_edits_sized_for_another_sequence(self, cfg, params):
        edge = jnp.ones((cfg.n_layers, 1, cfg.n_heads, 9, 9), bool)
        with pytest.raises(ValueError, match=r"Edits.edge_mask has shape .*needs \(2, 1, 4, 10, 10\)"):
            sj.generate(params, cfg, [PROMPTS[0]], max_new_tokens=4, edits=sj.Edits(edge_mask=edge))

    def test_too_long(self, cfg, params):
        with pytest.raises(ValueError, match="exceeds cfg.max_seq_len=32"):
            sj.generate(params, cfg, [PROMPTS[0]], max_new_tokens=30)

    def test_sampling_needs_a_key(self, cfg, params):
        with pytest.raises(ValueError, match="needs a PRNG key"):
            sj.generate(params, cfg, PROMPTS, max_new_tokens=2, temperature=0.7)

    def test_bad_top_k_and_budget(self, cfg, params):
        with pytest.raises(ValueError, match="top_k"):
            sj.generate(params, cfg, PROMPTS, max_new_tokens=2, top_k=0)
        with pytest.raises(ValueError, match="max_new_tokens"):
            sj.generate(params, cfg, PROMPTS, max_new_tokens=0)

    def test_prompt_must_be_left_padded(self, cfg, params):
        tokens = jnp.asarray([[5, 6, 0], [7, 8, 9]])
        with pytest.raises(ValueError, match="end in padding"):
            sj.generate(params, cfg, tokens, prompt_mask=tokens > 0, max_new_tokens=2)
        with pytest.raises(ValueError, match="at least one token"):
            sj.generate(params, cfg, [[5], []], max_new_tokens=2)

    def test_out_of_vocabulary_prompt(self, cfg, params):
        with pytest.raises(ValueError, match=r"token id 99 at \[batch 1, position 0\]"):
            sj.generate(params, cfg, [[5, 6], [99, 7]], max_new_tokens=2)


def test_left_pad_right_aligns_each_row_and_refuses_a_longer_one():
    tokens, mask = sj.decode.left_pad([[5, 6, 7], [8]], 4, 0)
    np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(mask, [[False, True, True, True], [False, False, False, True]])
    assert tokens.dtype == np.int32
    with pytest.raises(ValueError, match="prompt row 1 has 3 tokens, more than width=2"):
        sj.decode.left_pad([[1], [1, 2, 3]], 2, 0)
