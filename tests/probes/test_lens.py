"""The logit lens: its last depth is `forward`'s logits, every depth is the final norm and unembedding of the
stream there (numpy, by hand), its readouts match numpy, and missing or partial traces fail naming the record."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.probes import lens
from tests.probes.helpers import TIED, tied

RECORD = ("residual", "resid_post")
forward = jax.jit(sj.forward, static_argnames=("cfg", "record"))
logit_lens = jax.jit(lens.logit_lens, static_argnums=1)


@pytest.fixture(scope="module")
def run(cfg, params, tokens):
    out = forward(params, tokens, cfg=cfg, record=RECORD)
    return out, logit_lens(params, cfg, out.trace)


def by_hand(stream, scale, unembedding, eps):
    """numpy float64: `stream / rms * scale @ unembedding`."""
    x = np.asarray(stream, np.float64)
    normed = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * np.asarray(scale, np.float64)
    return normed @ np.asarray(unembedding, np.float64)


def test_last_depth_is_forwards_logits(run):
    out, lens_logits = run
    assert lens_logits.shape == (3,) + out.logits.shape  # L + 1 depths of the 2-layer test preset
    chex.assert_trees_all_close(lens_logits[-1], out.logits, atol=1e-5, rtol=0)


def test_every_depth_decodes_the_stream_there(cfg, params, run):
    out, lens_logits = run
    streams = [out.trace.residual[0], out.trace.residual[1], out.trace.resid_post[-1]]
    for depth, stream in enumerate(streams):
        want = by_hand(stream, params["final_norm"]["scale"], params["unembed"]["kernel"], cfg.norm_eps)
        chex.assert_trees_all_close(lens_logits[depth], want.astype(np.float32), atol=1e-5, rtol=1e-5)


def test_tied_embeddings_decode_through_the_embedding(params, tokens):
    cfg, params = TIED, tied(params)
    out = forward(params, tokens, cfg=cfg, record=RECORD)
    lens_logits = lens.logit_lens(params, cfg, out.trace)
    chex.assert_trees_all_close(lens_logits[-1], out.logits, atol=1e-5, rtol=0)
    want = by_hand(out.trace.residual[0], params["final_norm"]["scale"], np.asarray(params["embed"]).T, cfg.norm_eps)
    chex.assert_trees_all_close(lens_logits[0], want.astype(np.float32), atol=1e-5, rtol=1e-5)


def test_readouts_match_numpy(tokens, run):
    _, lens_logits = run
    targets = jnp.roll(tokens, -1, axis=1)
    logits = np.asarray(lens_logits, np.float64)
    index = np.broadcast_to(np.asarray(targets), logits.shape[:-1])[..., None]
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    want = np.take_along_axis(logp, index, -1)[..., 0]
    chex.assert_trees_all_close(lens.lens_log_probs(lens_logits, targets), want.astype(np.float32), atol=1e-5,
                                rtol=1e-5)
    ranks = np.sum(logits > np.take_along_axis(logits, index, -1), axis=-1)
    np.testing.assert_array_equal(lens.lens_ranks(lens_logits, targets), ranks)
    kl = np.sum(np.exp(logp[-1]) * (logp[-1] - logp), axis=-1)
    chex.assert_trees_all_close(lens.lens_kl(lens_logits), kl.astype(np.float32), atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(lens.lens_kl(lens_logits)[-1], 0.0)


def test_the_top_token_has_rank_zero(run):
    _, lens_logits = run
    top = jnp.argmax(lens_logits[-1], axis=-1)
    np.testing.assert_array_equal(lens.lens_ranks(lens_logits, top)[-1], 0)


class TestErrors:
    def test_missing_fields_name_the_record(self, cfg, params, tokens):
        trace = forward(params, tokens, cfg=cfg, record=("residual",)).trace
        with pytest.raises(ValueError, match=r'Trace.resid_post.*record=\("residual", "resid_post"\)'):
            lens.logit_lens(params, cfg, trace)

    def test_selected_layers_are_refused(self, cfg, params, tokens):
        trace = sj.Trace(residual=jnp.zeros((1, 2, 12, cfg.d_model)), resid_post=jnp.zeros((1, 2, 12, cfg.d_model)))
        with pytest.raises(ValueError, match="all 2 layers.*Record.layers"):
            lens.logit_lens(params, cfg, trace)

    def test_targets_of_the_wrong_shape(self, run):
        _, lens_logits = run
        with pytest.raises(ValueError, match=r"targets has shape \(2, 11\); expected \[batch, positions\]"):
            lens.lens_ranks(lens_logits, jnp.zeros((2, 11), jnp.int32))
