"""Attribution patching: the estimate is the metric's derivative along the patch, exact where the metric is linear,
and ranks heads like the real patching it estimates; the real patching is exact where its answer is known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.interpret import ranking
from sage_jax.interpret.patching import head_patching, step_log_probs
from sage_jax.probes import patching as ap

CORRUPTIONS = ((4, 17), (4, 5), (6, 17), (1, 9), (8, 30), (3, 11))
"""(position, shift) of each corrupted token: the clean token moved by `shift` among the text ids."""


def last_token_log_prob(tokens, out):
    """The metric of most tests (one compiled program each): the log-probability of the clean row's last token, as
    `patching.step_log_probs` scores an answer (a `Partial` of `tokens`)."""
    answer = jnp.zeros(tokens.shape[1], bool).at[-1].set(True)
    return step_log_probs(out.logits[0], tokens[0], answer[None], answer).answer


def corrupt(cfg, clean, position, shift):
    value = (clean[0, position] - 4 + shift) % (cfg.vocab_size - 4) + 4
    return clean.at[0, position].set(value)


@pytest.fixture(scope="module")
def clean(tokens):
    return tokens[:1]


@pytest.fixture(scope="module")
def metric(clean):
    return jax.tree_util.Partial(last_token_log_prob, clean)


def test_estimate_is_the_directional_derivative_along_one_site(cfg, params, clean, metric):
    """At the head and position of largest estimate, the estimate equals the central difference of the metric
    along that site's patch, `(m(clean + eps diff) - m(clean - eps diff)) / 2 eps`, with the edit built here
    (`Edits.head_delta` at that site). Float32 with eps 1e-2: a few ulps of the metric (about -4.4) over 2 eps is
    1e-4, the tolerance; measured: 0.037649 against 0.037646."""
    bad = corrupt(cfg, clean, 4, 17)
    estimate = np.asarray(ap.attribution_patching(params, cfg, clean, bad, metric))  # [L, T, H]
    head_out = jax.jit(lambda t: sj.forward(params, t, cfg, record=("head_out",)).trace.head_out)
    diff = head_out(bad) - head_out(clean)  # [L, 1, T, H, D]
    layer, position, head = np.unravel_index(np.abs(estimate).argmax(), estimate.shape)
    direction = jnp.zeros_like(diff).at[layer, 0, position, head].set(diff[layer, 0, position, head])

    @jax.jit
    def moved(eps):
        return metric(sj.forward(params, clean, cfg, edits=sj.Edits(head_delta=eps * direction)))

    eps = 1e-2
    central = float(moved(eps) - moved(-eps)) / (2 * eps)
    assert position >= 4 and abs(estimate[layer, position, head]) > 1e-3
    np.testing.assert_allclose(estimate[layer, position, head], central, rtol=1e-3, atol=1e-4)


def test_heads_sum_to_the_attention_output(cfg, params, clean, metric):
    """`head_delta`'s gradient is the attention output's for every head, and the heads' outputs sum to it: the
    per-head estimates sum over heads to the `attn_out` estimate (1e-5)."""
    bad = corrupt(cfg, clean, 4, 17)
    heads = ap.attribution_patching(params, cfg, clean, bad, metric, at="head_out")
    block = ap.attribution_patching(params, cfg, clean, bad, metric, at="attn_out")
    assert heads.shape == (cfg.n_layers, clean.shape[1], cfg.n_heads) and block.shape == heads.shape[:2]
    np.testing.assert_allclose(heads.sum(-1), block, atol=1e-5)


def test_estimate_is_exact_where_the_metric_is_linear(cfg, params, clean):
    """A metric linear in the last `resid_post` (read from the trace, summed over positions) is linear in the last
    layer's `mlp_out`, so there the estimate equals real patching (1e-5); earlier layers reach it through norms and
    differ."""
    readout = jax.random.normal(jax.random.key(3), (cfg.d_model,))

    def linear(w, out):
        return jnp.sum(out.trace.resid_post[-1, 0] @ w)

    metric = jax.tree_util.Partial(linear, readout)
    bad = corrupt(cfg, clean, 4, 17)
    options = dict(at="mlp_out", record=("resid_post",))
    estimate = np.asarray(ap.attribution_patching(params, cfg, clean, bad, metric, **options))
    real = np.asarray(ap.activation_patching(params, cfg, clean, bad, metric, **options))
    assert np.abs(real[-1]).max() > 1e-2
    np.testing.assert_allclose(estimate[-1], real[-1], atol=1e-5)
    assert np.abs(estimate[:-1] - real[:-1]).max() > 1e-3


def test_whole_stream_patch_is_the_corrupted_run(cfg, params, clean, metric):
    """Patching the whole stream entering any layer runs the corrupted input from there on: the effect is
    `m(corrupt) - m(clean)` at every layer (1e-5)."""
    bad = corrupt(cfg, clean, 4, 17)
    real = ap.activation_patching(params, cfg, clean, bad, metric, at="resid_pre", per_position=False)
    run = jax.jit(lambda t: metric(sj.forward(params, t, cfg)))
    whole = run(bad) - run(clean)
    assert real.shape == (cfg.n_layers,) and abs(float(whole)) > 1e-2
    np.testing.assert_allclose(real, np.full(cfg.n_layers, whole), atol=1e-5)


def test_whole_head_patch_matches_head_patching(cfg, params, clean, metric):
    """`per_position=False` patches a head at every position: the effect on the answer (the last token) equals
    `patching.head_patching`'s output patch (which also zeroes a meta head's readout, unread here) to 1e-5."""
    bad = corrupt(cfg, clean, 4, 17)
    answer = jnp.zeros(clean.shape[1], bool).at[-1].set(True)
    mine = ap.activation_patching(params, cfg, clean, bad, metric, per_position=False)
    theirs = head_patching(params, cfg, clean[0], answer[None], answer, source_tokens=bad[0]).effect.answer
    assert mine.shape == (cfg.n_layers, cfg.n_heads) and np.abs(theirs).max() > 1e-2
    np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_attribution_ranks_heads_like_activation_patching(cfg, params, clean, metric):
    """Over six one-token corruptions of the `test` preset (perturbed parameters), Spearman between estimate and
    real patching over the heads `[L, H]` and over every head at every position from the corrupted one on
    `[L, T, H]` (earlier ones are exactly 0 on both sides). Measured: heads 1.0, 0.98, 0.95, 1.0, 1.0, 1.0;
    heads x positions 1.0, 0.94, 0.74, 1.0, 1.0, 1.0 (mean 0.95). The estimates of all six come from one call
    vmapped over the corrupted tokens, equal to a call of its own (1e-5)."""
    bads = jnp.stack([corrupt(cfg, clean, position, shift) for position, shift in CORRUPTIONS])  # [6, 1, T]
    estimates = jax.vmap(lambda bad: ap.attribution_patching(params, cfg, clean, bad, metric))(bads)  # [6, L, T, H]
    np.testing.assert_allclose(estimates[0], ap.attribution_patching(params, cfg, clean, bads[0], metric), atol=1e-5)
    whole, each = [], []
    for (position, _), bad, estimate in zip(CORRUPTIONS, bads, estimates):
        real = ap.activation_patching(params, cfg, clean, bad, metric)
        real_heads = ap.activation_patching(params, cfg, clean, bad, metric, per_position=False)
        whole.append(float(ranking.spearman(estimate.sum(1).reshape(-1), real_heads.reshape(-1),
                                            jnp.ones(real_heads.size, bool))))
        later = jnp.broadcast_to((jnp.arange(clean.shape[1]) >= position)[None, :, None], real.shape)
        each.append(float(ranking.spearman(estimate.reshape(-1), real.reshape(-1), later.reshape(-1))))
    assert min(whole) >= 0.75, whole
    assert min(each) >= 0.5 and np.mean(each) >= 0.75, each


def test_shapes(cfg, params, clean, metric):
    """The shape of each kind of site, per position and over all positions (`eval_shape`: nothing runs). Other
    tests run `head_out` `[L, T, H]` and `[L, H]`, `attn_out` and `mlp_out` `[L, T]`, and `residual` `[L]`."""
    sizes = dict(L=cfg.n_layers, T=clean.shape[1], H=cfg.n_heads, K=cfg.n_kv_heads)
    cases = [("queries", "LTH", True), ("values", "LTK", True), ("keys", "LK", False), ("scores", "LHTT", True),
             ("scores", "LH", False), ("resid_pre", "LT", True), ("mlp_hidden", "LT", True)]
    for at, shape, per_position in cases:
        got = jax.eval_shape(lambda c: ap.attribution_patching(params, cfg, c, c, metric, at=at,
                                                               per_position=per_position), clean)
        assert got.shape == tuple(sizes[a] for a in shape), (at, per_position)


def test_errors(cfg, params, tokens, clean, metric):
    with pytest.raises(ValueError, match=r"at='attn' is not a patchable activation; choose from \["):
        ap.attribution_patching(params, cfg, clean, clean, metric, at="attn")
    with pytest.raises(ValueError, match=r"corrupt_tokens has shape \(1, 11\); expected \(1, 12\)"):
        ap.activation_patching(params, cfg, clean, clean[:, 1:], metric)
    with pytest.raises(ValueError, match=r"clean_tokens has shape \(2, 12\); expected one problem \[1, T\]"):
        ap.attribution_patching(params, cfg, tokens, tokens, metric)
    with pytest.raises(ValueError, match=r"metric must return a scalar, got shape \(12, 64\)"):
        jax.eval_shape(lambda c: ap.attribution_patching(params, cfg, c, c, lambda out: out.logits[0]), clean)
    with pytest.raises(TypeError, match="metric must be a function"):
        ap.attribution_patching(params, cfg, clean, clean, "log_prob")
