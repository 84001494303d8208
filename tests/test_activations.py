"""The named activations (`queries` ... `resid_post`): recorded values against the numpy reference, their `Edit`s
(null edits bitwise, each edit landing where it names), recording only some layers / positions / a mean, decoding
with the KV cache, and bad input.

Forward passes run compiled (`jit_forward`: one program each instead of ~100 operations compiled one by one at
every new shape or edit); the null edits' forwards run together, as one program."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.trace import ACTIVATIONS, TRACE_QUERY_AXIS, edit_shapes, trace_shapes
from tests import reference
from tests.conftest import jit_forward, perturbed_params
from tests.test_decode import PROMPTS


@pytest.fixture(scope="module")
def full(cfg, params, tokens):
    return jit_forward(params, tokens, cfg, record="all")


def test_every_field_equals_the_numpy_reference(cfg, params, tokens, full):
    """Each layer's activations, row by row, from the float64 reference written from the math (tests/reference.py;
    its `scores` are 0 at the keys a head may not see, as the `Trace`'s)."""
    for row in range(tokens.shape[0]):
        acts = []
        reference.forward(cfg, params, np.asarray(tokens[row]), activations=acts)
        for name in ("residual", "head_out") + ACTIVATIONS:
            got = np.asarray(getattr(full.trace, name))[:, row]
            want = np.stack([layer[name] for layer in acts]).astype(np.float32)
            chex.assert_trees_all_close(got, want, atol=5e-5, rtol=1e-4, custom_message=f"{name}, row {row}")


def test_the_fields_fit_together_on_a_qwen3_style_model(cfg):
    """Relations that hold on any model (here with Qwen's q/k/v biases and Qwen3's q/k norms, no gate, tied
    embeddings): scores are the queries' and keys' scaled products over each head's key/value head, attention
    is their masked softmax, the stream adds up, and the last stream is what the final norm reads."""
    qcfg = dataclasses.replace(cfg, qkv_bias=True, qk_norm=True, reasoning_gate=False, tie_embeddings=True,
                               name="test-qwen3-style")
    qparams = perturbed_params(qcfg, 3)
    toks = jnp.asarray(PROMPTS[0] + PROMPTS[0][:3])[None]
    out = jit_forward(qparams, toks, qcfg, record="all")
    t = jax.tree_util.tree_map(np.asarray, out.trace)
    g = qcfg.n_heads // qcfg.n_kv_heads
    keys = np.repeat(t.keys, g, axis=3)  # [L, B, T, H, d]
    scores = np.einsum("lbthd,lbshd->lbhts", t.queries, keys) / np.sqrt(qcfg.head_dim)
    chex.assert_trees_all_close(t.scores, np.where(t.attn > 0, scores, 0.0), atol=1e-5)  # attn is 0 where hidden
    masked = np.where(t.attn > 0, t.scores, -np.inf)
    probs = np.exp(masked - masked.max(-1, keepdims=True))
    chex.assert_trees_all_close(t.attn, probs / probs.sum(-1, keepdims=True), atol=1e-6)
    chex.assert_trees_all_close(t.attn_out, t.head_out.sum(-2), atol=1e-5)
    chex.assert_trees_all_close(t.resid_mid, t.residual + t.attn_out, atol=1e-6)
    chex.assert_trees_all_close(t.resid_post, t.resid_mid + t.mlp_out, atol=1e-6)
    np.testing.assert_array_equal(t.resid_post[:-1], t.residual[1:])
    scale = np.asarray(qparams["final_norm"]["scale"])
    last = t.resid_post[-1]
    normed = last / np.sqrt(np.mean(last ** 2, -1, keepdims=True) + qcfg.norm_eps) * scale
    chex.assert_trees_all_close(normed, np.asarray(out.hidden), atol=1e-5)


def _identity(name: str, shape) -> dict[str, sj.Edit]:
    return dict(scale=sj.Edit(scale=jnp.ones(shape)), add=sj.Edit(add=jnp.zeros(shape)),
                where=sj.Edit(where=jnp.zeros(shape, bool), value=jnp.ones(shape)))


@functools.partial(jax.jit, static_argnames="cfg")
def _edited_logits(params, tokens, cfg, edits: list[sj.Edits]) -> list[jax.Array]:
    """The logits of a forward under each of `edits`, compiled as one program."""
    return [sj.forward(params, tokens, cfg, edits=e).logits for e in edits]


def test_null_edits_are_bitwise(cfg, params, tokens):
    """`None`, an `Edit` with nothing set, and (on CPU, under the suite's compile flags) an identity `Edit` of
    every kind leave the logits bit for bit, on every named activation. The edited forwards are compiled together
    (one program: half the time of one program per activation and kind), the plain forward alone."""
    plain = np.asarray(jit_forward(params, tokens, cfg).logits)
    edits = []
    for name in ACTIVATIONS:
        shape = edit_shapes(cfg, *tokens.shape, tokens.shape[1])[name]
        edits += [(name, sj.Edits(**{name: sj.Edit()}))]
        if jax.default_backend() == "cpu":
            edits += [(name, sj.Edits(**{name: edit})) for edit in _identity(name, shape).values()]
    logits = _edited_logits(params, tokens, cfg, [e for _, e in edits])
    for (name, e), got in zip(edits, logits):
        np.testing.assert_array_equal(np.asarray(got), plain, err_msg=f"{name}: {e}")


def test_a_replacement_lands_where_it_says_and_nowhere_before(cfg, params, tokens, full):
    """Replacing `mlp_hidden` at layer 0 and one position: the recorded value is the replacement there; what that
    layer computed before its FFN, and every earlier position, is unchanged (causality); a later position's
    logits change (through layer 1's attention)."""
    layer, pos = 0, 5
    shape = edit_shapes(cfg, *tokens.shape, tokens.shape[1])["mlp_hidden"]
    where = np.zeros(shape, bool)
    where[layer, :, pos] = True
    value = jnp.full(shape, 0.5)
    out = jit_forward(params, tokens, cfg, record="all", edits=sj.Edits(mlp_hidden=sj.Edit(where=where, value=value)))
    np.testing.assert_array_equal(np.asarray(out.trace.mlp_hidden)[layer, :, pos], 0.5)
    for name in ("residual",) + ACTIVATIONS:
        got, want = np.asarray(getattr(out.trace, name)), np.asarray(getattr(full.trace, name))
        axis = TRACE_QUERY_AXIS[name]
        np.testing.assert_array_equal(np.take(got, range(pos), axis=axis), np.take(want, range(pos), axis=axis),
                                      err_msg=name)
        if name in ("queries", "keys", "values", "scores", "attn_out", "resid_mid"):  # before the FFN of `layer`
            np.testing.assert_array_equal(got[:layer + 1], want[:layer + 1], err_msg=name)
    assert not np.allclose(np.asarray(out.logits)[:, pos + 1:], np.asarray(full.logits)[:, pos + 1:])


def test_edits_agree_with_the_edits_they_generalise(cfg, params, tokens):
    """Scaling every value of a layer by 0 is ablating all its heads (`head_mask` 0); changing the stream
    leaving block l is changing the stream entering block l + 1 (`residual_delta`); and the gradient of the
    `add` probe of `mlp_out` at layer l is the gradient of the `residual_delta` probe at layer l + 1."""
    b, t = tokens.shape
    shapes = edit_shapes(cfg, b, t, t)
    at0 = (jnp.arange(cfg.n_layers) == 0)
    values = sj.Edit(scale=jnp.where(at0[:, None, None, None, None], 0.0, 1.0))
    heads = jnp.where(at0[:, None, None], 0.0, 1.0) * jnp.ones(shapes["head_mask"])
    chex.assert_trees_all_close(jit_forward(params, tokens, cfg, edits=sj.Edits(values=values)).logits,
                                jit_forward(params, tokens, cfg, edits=sj.Edits(head_mask=heads)).logits, atol=1e-6)
    delta = 0.1 * jax.random.normal(jax.random.key(0), shapes["resid_post"])
    post = jnp.zeros(shapes["resid_post"]).at[0].set(delta[0])
    pre = jnp.zeros(shapes["residual_delta"]).at[1].set(delta[0])
    chex.assert_trees_all_close(jit_forward(params, tokens, cfg, edits=sj.Edits(resid_post=sj.Edit(add=post))).logits,
                                jit_forward(params, tokens, cfg, edits=sj.Edits(residual_delta=pre)).logits, atol=1e-5)

    def loss(edits):
        return jnp.sum(jax.nn.log_softmax(sj.forward(params, tokens, cfg, edits=edits).logits)[..., 7])

    zero = jnp.zeros(shapes["mlp_out"])
    by_mlp_out = jax.jit(jax.grad(lambda z: loss(sj.Edits(mlp_out=sj.Edit(add=z)))))(zero)
    by_residual = jax.jit(jax.grad(lambda z: loss(sj.Edits(residual_delta=z))))(zero)
    chex.assert_trees_all_close(by_mlp_out[0], by_residual[1], atol=1e-6)
    assert float(jnp.abs(by_mlp_out[0]).max()) > 0


def test_only_the_layers_and_positions_asked_for(cfg, params, tokens, full):
    """Selected layers (in the order given) and positions (negative from the end) are exactly those rows of the
    full record; a mean is their mean; the output is shaped as `trace_shapes` says and holds nothing else."""
    layers, positions = (1, 0), (2, -1)
    picked = jit_forward(params, tokens, cfg, record=sj.Record.all(layers=layers, positions=positions)).trace
    mean = jit_forward(params, tokens, cfg, record=sj.Record.all(layers=(1,), reduce="mean")).trace
    b, t = tokens.shape
    shapes = trace_shapes(cfg, sj.Record.all(layers=layers, positions=positions), b, t, t)
    for name in sj.Record.all().names:
        want = np.asarray(getattr(full.trace, name))
        axis = TRACE_QUERY_AXIS[name]
        got = np.asarray(getattr(picked, name))
        assert got.shape == (len(layers),) + shapes[name].shape and got.dtype == shapes[name].dtype, name
        np.testing.assert_array_equal(got, np.take(want[list(layers)], [2, t - 1], axis=axis), err_msg=name)
        chex.assert_trees_all_close(np.asarray(getattr(mean, name)),
                                    want[1:2].mean(axis=axis, keepdims=True), atol=1e-6, custom_message=name)
    assert picked.attn_rows is None


def test_selected_layers_cost_only_their_buffers(cfg, params, tokens):
    """The compiled forward's outputs hold one layer's `mlp_hidden` row, not the stack of every layer."""
    def output_bytes(record):
        fn = jax.jit(lambda p, x: sj.forward(p, x, cfg, record=record).trace)
        return fn.lower(params, tokens).compile().memory_analysis().output_size_in_bytes

    one = output_bytes(sj.Record(mlp_hidden=True, layers=(1,), positions=(4,)))
    every = output_bytes(sj.Record(mlp_hidden=True))
    assert one == tokens.shape[0] * cfg.d_ff * 4
    assert every == cfg.n_layers * tokens.shape[0] * tokens.shape[1] * cfg.d_ff * 4


def test_decoding_records_and_edits_them_as_a_forward_does(cfg, params):
    """With the KV cache: the rows of every named activation (and a position selection of them) are those a
    forward over the output records, and an `Edit` sized for the final sequence decodes exactly the greedy
    tokens of the edited forward. One compiled edited forward, recording as `generate` does (recording does not
    change the logits), serves both the greedy loop and the recorded rows."""
    prompt, n = [PROMPTS[0]], 6  # as in test_decode: one compiled plain decoding (persistent cache) serves both
    length = len(PROMPTS[0]) + n
    record = sj.Record.of(ACTIVATIONS, layers=(1,), positions=(3, -2))
    shape = edit_shapes(cfg, 1, length, length)["mlp_out"]
    edit = sj.Edit(scale=jnp.full(shape, 1.5), add=jnp.full(shape, 0.05))
    out = sj.generate(params, cfg, prompt, max_new_tokens=n, eos_id=63, record=record,
                      edits=sj.Edits(mlp_out=edit))
    tokens, p = np.zeros((1, length), np.int32), len(PROMPTS[0])
    tokens[0, :p] = PROMPTS[0]
    for i in range(n):
        logits = np.asarray(jit_forward(params, jnp.asarray(tokens), cfg, record=record,
                                        edits=sj.Edits(mlp_out=edit)).logits)
        tokens[0, p + i] = np.argmax(logits[0, p + i - 1])
    np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
    plain = sj.generate(params, cfg, prompt, max_new_tokens=n, eos_id=63)
    assert not np.array_equal(np.asarray(plain.tokens), tokens)
    want = jit_forward(params, out.tokens, cfg, record=record, edits=sj.Edits(mlp_out=edit)).trace
    for name in ACTIVATIONS:
        chex.assert_trees_all_close(getattr(out.trace, name), getattr(want, name), atol=1e-5, custom_message=name)


class TestBadInput:

    def test_a_part_of_the_wrong_shape_is_named(self, cfg, params, tokens):
        with pytest.raises(ValueError, match=r"Edits.mlp_hidden.add has shape \(2, 2, 12, 5\).*\[layers, batch, "
                                             r"query, d_ff\]"):
            sj.forward(params, tokens, cfg, edits=sj.Edits(mlp_hidden=sj.Edit(add=jnp.zeros((2, 2, 12, 5)))))

    def test_an_array_where_an_edit_belongs(self, cfg, params, tokens):
        with pytest.raises(TypeError, match=r"Edits.queries must be a sage_jax.Edit"):
            sj.forward(params, tokens, cfg, edits=sj.Edits(queries=jnp.zeros((1,))))

    def test_where_without_value_and_a_float_where(self, cfg, params, tokens):
        with pytest.raises(ValueError, match=r"Edits.keys.where and Edits.keys.value must be set together"):
            sj.forward(params, tokens, cfg, edits=sj.Edits(keys=sj.Edit(where=jnp.zeros((1,) * 5, bool))))
        with pytest.raises(ValueError, match=r"Edits.keys.where must be boolean"):
            sj.forward(params, tokens, cfg,
                       edits=sj.Edits(keys=sj.Edit(where=jnp.zeros((1,) * 5), value=jnp.zeros((1,) * 5))))

    def test_records_outside_the_model_or_the_sequence(self, cfg, params, tokens):
        with pytest.raises(ValueError, match=r"Record.layers \[2\] outside \[0, 2\)"):
            sj.forward(params, tokens, cfg, record=sj.Record(resid_mid=True, layers=(0, 2)))
        with pytest.raises(ValueError, match=r"Record.positions \[12\] outside \[-12, 12\)"):
            sj.forward(params, tokens, cfg, record=sj.Record(resid_mid=True, positions=(12,)))
        with pytest.raises(ValueError, match=r"name one position twice"):
            sj.forward(params, tokens, cfg, record=sj.Record(resid_mid=True, positions=(0, -12)))
        with pytest.raises(ValueError, match=r"Record.layers must be a non-empty tuple of distinct ints"):
            sj.Record(resid_mid=True, layers=(1, 1))
        with pytest.raises(ValueError, match=r"Record.reduce must be None or 'mean'"):
            sj.Record(resid_mid=True, reduce="sum")
        with pytest.raises(ValueError, match=r"unknown Trace field\(s\) \['mlp_post'\]"):
            sj.Record.of(["mlp_post"])

    def test_tracking_refuses_a_layer_selection(self, cfg, params):
        with pytest.raises(ValueError, match="track=True returns every layer's attention"):
            sj.generate(params, cfg, PROMPTS, max_new_tokens=2, track=True, record=sj.Record(attn=True, layers=(0,)))

    def test_merging_two_replacements_of_one_activation(self, cfg):
        from sage_jax.interpret.interventions import merge_edits
        first = sj.Edits(resid_mid=sj.Edit(scale=jnp.full((1,) * 4, 2.0), add=jnp.full((1,) * 4, 1.0)))
        then = sj.Edits(resid_mid=sj.Edit(scale=jnp.full((1,) * 4, 3.0), add=jnp.full((1,) * 4, 0.5)))
        merged = merge_edits(first, then).resid_mid
        x = jnp.full((1,) * 4, 0.25)
        chex.assert_trees_all_close(merged.apply(x), then.resid_mid.apply(first.resid_mid.apply(x)))
        replacing = sj.Edits(resid_mid=sj.Edit(where=jnp.ones((1,) * 4, bool), value=jnp.zeros((1,) * 4)))
        with pytest.raises(ValueError, match="more than one Edits changes resid_mid"):
            merge_edits(first, replacing)
