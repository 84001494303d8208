"""Head detectors: planted heads score what they were built to (previous-token, duplicate, induction: 1; a
uniform head: its known share), every score equals a numpy loop written from the definitions (with padding),
and receiver-head scores equal Thought Anchors' recipe in numpy and scipy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import sage_jax as sj
from sage_jax.layout import from_spans
from sage_jax.probes import detectors as dt

previous_token_scores = jax.jit(dt.previous_token_scores)  # one compile per shape, not one per operation
duplicate_token_scores = jax.jit(dt.duplicate_token_scores)
induction_scores = jax.jit(dt.induction_scores)
receiver_head_scores = jax.jit(dt.receiver_head_scores, static_argnames="proximity")
step_attention = jax.jit(dt.step_attention)
detect_heads = jax.jit(dt.detect_heads, static_argnames="proximity")
T, N = 10, 5  # a sequence of 5 distinct tokens, repeated: [x, x]
REPEATED = np.array([[11, 12, 13, 14, 15] * 2])


def uniform(length):
    """`[T, T]` causal attention spread evenly over each query's keys."""
    return np.tril(np.ones((length, length))) / np.arange(1, length + 1)[:, None]


def one_hot_rows(keys, length):
    """`[T, T]` attention where query `t` attends only to `keys[t]`."""
    return np.eye(length)[np.asarray(keys)]


def planted():
    """`[1, 1, 5, T, T]`: previous-token, uniform, induction, duplicate, self-attention heads over `REPEATED`."""
    t = np.arange(T)
    heads = [one_hot_rows(np.maximum(t - 1, 0), T), uniform(T),
             one_hot_rows(np.where(t >= N, t - N + 1, t), T), one_hot_rows(np.where(t >= N, t - N, t), T),
             np.eye(T)]
    return jnp.asarray(np.stack(heads)[None, None], jnp.float32)


def test_planted_heads_score_their_job():
    attn = planted()
    tokens = jnp.asarray(REPEATED)
    uniform_previous = np.mean(1.0 / np.arange(2, T + 1))  # queries 1..T-1, each 1/(t+1) on its previous key
    uniform_second_half = np.mean(1.0 / np.arange(N + 1, T + 1))  # one target among t+1 keys, queries N..T-1
    chex.assert_trees_all_close(previous_token_scores(attn)[0], np.array([1.0, uniform_previous, 0.0, 0.0, 0.0]),
                                atol=1e-6, rtol=0)
    chex.assert_trees_all_close(induction_scores(attn, tokens)[0], np.array([0.0, uniform_second_half, 1.0, 0.0, 0.0]),
                                atol=1e-6, rtol=0)
    chex.assert_trees_all_close(duplicate_token_scores(attn, tokens)[0],
                                np.array([0.0, uniform_second_half, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def loop_scores(attn, tokens, real, kind):
    """`[L, H]` from the definitions, one query at a time (numpy float64)."""
    attn = np.asarray(attn, np.float64)
    n_layers, batch, heads, length, _ = attn.shape
    wanted = dict(
        previous=lambda b, t, s: s == t - 1 and real[b, s],
        duplicate=lambda b, t, s: s < t and tokens[b, s] == tokens[b, t] and real[b, s],
        induction=lambda b, t, s: 1 <= s <= t and tokens[b, s - 1] == tokens[b, t] and real[b, s] and real[b, s - 1],
    )[kind]
    scores = np.zeros((n_layers, heads))
    for layer in range(n_layers):
        for head in range(heads):
            masses = [attn[layer, b, head, t, [s for s in range(length) if wanted(b, t, s)]].sum()
                      for b in range(batch) for t in range(length)
                      if real[b, t] and any(wanted(b, t, s) for s in range(length))]
            scores[layer, head] = np.mean(masses) if masses else 0.0
    return scores


def random_attention(key, shape):
    """Causal softmax attention `[L, B, H, T, T]` of random logits."""
    logits = 2.0 * jax.random.normal(key, shape)
    causal = np.tril(np.ones(shape[-2:], bool))
    return jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)


def test_scores_equal_the_definitions_with_padding():
    """A repeated sequence with chance repeats (ids 0..3) and a left-padded second row."""
    rng = np.random.default_rng(0)
    half = rng.integers(0, 4, size=(2, N))
    tokens = np.concatenate([half, half], axis=1)
    real = np.ones((2, T), bool)
    real[1, :2] = False
    attn = random_attention(jax.random.key(0), (2, 2, 3, T, T))
    for kind, score in (("previous", lambda: previous_token_scores(attn, real)),
                        ("duplicate", lambda: duplicate_token_scores(attn, tokens, real)),
                        ("induction", lambda: induction_scores(attn, tokens, real))):
        chex.assert_trees_all_close(score(), loop_scores(attn, tokens, real, kind), atol=1e-6, rtol=1e-6)


def test_no_query_with_a_target_scores_zero():
    tokens = jnp.arange(T)[None]  # no repeats: no duplicate, no induction target
    attn = planted()
    np.testing.assert_array_equal(duplicate_token_scores(attn, tokens), 0.0)
    np.testing.assert_array_equal(induction_scores(attn, tokens), 0.0)


def receiver_by_hand(attn, step_masks, proximity):
    """Thought Anchors' recipe per row and head: mean step-to-step attention, vertical scores over steps at least
    `proximity` later (NaN where none), scipy's excess kurtosis with NaNs omitted; the kurtosis averaged over rows."""
    attn = np.asarray(attn, np.float64)
    n_layers, batch, heads = attn.shape[:3]
    n = step_masks.shape[-2]
    vertical = np.full((n_layers, batch, heads, n), np.nan)
    kurtosis = np.full((n_layers, batch, heads), np.nan)
    for layer in range(n_layers):
        for b in range(batch):
            owned = [np.flatnonzero(m) for m in step_masks[b]]
            for head in range(heads):
                for j in range(n):
                    senders = [i for i in range(n) if i >= j + proximity and owned[i].size and owned[j].size]
                    if senders:
                        a = attn[layer, b, head]
                        vertical[layer, b, head, j] = np.mean([a[np.ix_(owned[i], owned[j])].mean() for i in senders])
                kurtosis[layer, b, head] = stats.kurtosis(vertical[layer, b, head], fisher=True, bias=True,
                                                          nan_policy="omit")
    return np.nanmean(kurtosis, axis=1), vertical


STEPS = np.stack([from_spans([(1, 3), (3, 5), (5, 7), (7, 9), (9, 10)], T).mask,
                  # the second row has 4 steps and an empty padding step
                  np.pad(from_spans([(2, 4), (4, 7), (7, 8), (8, 10)], T).mask, ((0, 1), (0, 0)))])


@pytest.mark.parametrize("proximity", [0, 1, 2])
def test_receiver_scores_equal_the_recipe(proximity):
    attn = random_attention(jax.random.key(1), (2, 2, 3, T, T))
    got = receiver_head_scores(attn, STEPS, proximity)
    kurtosis, vertical = receiver_by_hand(attn, np.asarray(STEPS), proximity)
    chex.assert_trees_all_close(got.vertical, vertical, atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(got.kurtosis, kurtosis, atol=1e-4, rtol=1e-4)


def test_a_head_that_looks_back_at_one_step_is_a_receiver():
    """Head 0 attends from every query after step 0 to step 0's tokens only; head 1 is uniform."""
    steps = np.asarray(STEPS[:1])
    anchor = np.flatnonzero(steps[0, 0])
    looks_back = np.eye(T)
    looks_back[anchor.max() + 1:] = 0.0
    looks_back[anchor.max() + 1:, anchor] = 1.0 / anchor.size
    attn = jnp.asarray(np.stack([looks_back, uniform(T)])[None, None], jnp.float32)
    got = receiver_head_scores(attn, steps, proximity=1)
    kurtosis, _ = receiver_by_hand(attn, steps, 1)
    chex.assert_trees_all_close(got.kurtosis, kurtosis, atol=1e-5, rtol=1e-5)
    # vertical scores [0.5, 0, 0, 0] (the last step has no later step): one spike in four, kurtosis
    # (1 - 3 p (1 - p)) / (p (1 - p)) = 7 / 3 at p = 1 / 4, excess -2 / 3
    chex.assert_trees_all_close(got.vertical[0, 0, 0], np.array([0.5, 0.0, 0.0, 0.0, np.nan]), atol=1e-7, rtol=0)
    chex.assert_trees_all_close(got.kurtosis[0, 0], -2.0 / 3.0, atol=1e-5, rtol=0)
    assert got.kurtosis[0, 0] > got.kurtosis[0, 1]


def test_step_attention_is_the_mean_over_token_pairs():
    attn = random_attention(jax.random.key(2), (1, 2, 3, T, T))
    matrix = np.asarray(step_attention(attn, STEPS))
    a = np.asarray(attn, np.float64)
    rows, cols = np.flatnonzero(STEPS[1, 1]), np.flatnonzero(STEPS[1, 0])
    chex.assert_trees_all_close(matrix[0, 1, 2, 1, 0], a[0, 1, 2][np.ix_(rows, cols)].mean(), atol=1e-7, rtol=1e-6)
    np.testing.assert_array_equal(matrix[:, 1, :, 4], 0.0)  # the empty padding step
    one_row = step_attention(attn, STEPS[0])  # [n, T] broadcast over the batch
    chex.assert_trees_all_close(one_row[:, 0], matrix[:, 0], atol=0, rtol=0)


def test_jit_equals_eager():
    attn = random_attention(jax.random.key(3), (2, 2, 3, T, T))
    tokens = jnp.asarray(np.repeat(REPEATED, 2, axis=0))
    trace = sj.Trace(attn=attn)
    chex.assert_trees_all_close(detect_heads(trace, tokens, step_masks=STEPS, proximity=2),
                                dt.detect_heads(trace, tokens, step_masks=STEPS, proximity=2), atol=1e-6, rtol=1e-6)


def test_detect_heads_on_a_forward(cfg, params, tokens):
    trace = jax.jit(sj.forward, static_argnames=("cfg", "record"))(params, tokens, cfg=cfg, record=("attn",)).trace
    steps = from_spans([(1, 4), (4, 8), (8, 12)], tokens.shape[1]).mask
    scores = detect_heads(trace, tokens, step_masks=steps)
    real = np.ones(tokens.shape, bool)
    chex.assert_trees_all_close(scores.previous_token, loop_scores(trace.attn, np.asarray(tokens), real, "previous"),
                                atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(scores.induction, loop_scores(trace.attn, np.asarray(tokens), real, "induction"),
                                atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(scores.receiver.kurtosis,
                                receiver_by_hand(trace.attn, np.broadcast_to(steps, (2, 3, 12)), 1)[0],
                                atol=1e-4, rtol=1e-4)
    assert scores.previous_token.shape == (cfg.n_layers, cfg.n_heads)


class TestErrors:
    def test_missing_attn_names_the_record(self):
        with pytest.raises(ValueError, match=r'Trace.attn: run forward with record=\("attn",\)'):
            dt.detect_heads(sj.Trace(), jnp.zeros((1, T), jnp.int32))

    def test_selected_query_positions(self):
        with pytest.raises(ValueError, match="3 query rows and 10 keys.*Record.positions"):
            dt.previous_token_scores(jnp.zeros((1, 1, 2, 3, T)))

    def test_tokens_of_the_wrong_shape(self):
        with pytest.raises(ValueError, match=r"tokens has shape \(1, 9\); expected \[batch, positions\] = \(1, 10\)"):
            dt.induction_scores(planted(), jnp.zeros((1, 9), jnp.int32))

    def test_step_masks_of_the_wrong_length(self):
        with pytest.raises(ValueError, match="step_masks covers 9 positions; attn has 10"):
            dt.receiver_head_scores(planted(), jnp.zeros((2, 9), bool))

    def test_negative_proximity(self):
        with pytest.raises(ValueError, match="proximity must be a non-negative int"):
            dt.receiver_head_scores(planted(), STEPS[:1], proximity=-1)
