"""`sage_jax.quant`: the int4 / int8 schemes against their definitions (GGUF's block layout), the quantized forward
against the dequantise-then-run reference, every consumer of params (generate, edits, transforms, the exact and
amortised analysis, explain) on quantized params, the array operations the GGUF loader uses, and bad input.

Forward passes and gradients run compiled (`jit_forward`, `jax.jit`): op by op, each new parameter layout (every
scheme's `QTensor`s) compiles every operation of the forward anew."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import quant
from sage_jax.interpret import explain
from sage_jax.interpret.amortised import analyse
from sage_jax.layout import ByteCodec
from sage_jax.nn.inverse import init_inverse_params
from sage_jax.trace import edit_shapes
from tests.conftest import jit_forward, make_tokens, perturbed_params

SCHEMES = [(4, True), (4, False), (8, True), (8, False)]
RECORD = ("attn", "value_norms", "head_out")
"""What the forwards on `[2, 16]` tokens record: every one of them runs with it (recording does not change the
logits), so that the same params compile to the same program in every test."""


jit_dequantize = jax.jit(quant.dequantize)
"""`quant.dequantize` as one compiled program per parameter layout (op by op it compiles each operation of each
weight's shape)."""


@pytest.fixture(scope="module")
def quantized(cfg, params):
    return quant.quantize(params, cfg, bits=4, group_size=8)


@pytest.fixture(scope="module")
def dequantized(quantized):
    return jit_dequantize(quantized)


@pytest.mark.parametrize("bits,symmetric", SCHEMES)
def test_every_weight_within_half_a_step_of_its_grid(bits, symmetric):
    w = jax.random.normal(jax.random.key(0), (3, 64, 24)) * jnp.linspace(0.01, 2.0, 24)
    q = quant.quantize_array(w, bits=bits, group_size=16, axis=-2, symmetric=symmetric)
    assert q.shape == w.shape and q.scale.shape == (3, 4, 24) and q.scale.dtype == jnp.float16
    assert q.codes.shape == ((3, 32, 24) if bits == 4 else (3, 64, 24))
    scale = jnp.repeat(q.scale.astype(jnp.float32), 16, axis=1)
    # Half a step of rounding; the float16 minimum adds its own rounding (2^-11 relative) to the asymmetric grid.
    bound = jnp.abs(scale) / 2 + 1e-6
    if not symmetric:
        bound += jnp.repeat(jnp.abs(q.minimum.astype(jnp.float32)), 16, axis=1) * 2 ** -11
    elif bits == 4:  # Q4_0 maps the extreme to -8 steps; values of the other sign beyond 7 steps clip to +7
        clipped = jnp.round(w / scale) + 8 > 15
        assert 0 < float(jnp.mean(clipped)) < 0.02
        bound = jnp.where(clipped, jnp.abs(scale) + 1e-6, bound)
    assert bool(jnp.all(jnp.abs(q.dequantize() - w) <= bound))


def test_int4_codes_are_laid_out_as_gguf_blocks():
    """Byte j of a group holds code j (low nibble) and code j + 16 (high nibble); Q4_0 reads scale * (code - 8)."""
    codes = np.arange(32) % 16
    packed = (codes[:16] | (codes[16:] << 4)).astype(np.uint8)
    q = quant.QTensor(packed[None, :], np.array([[0.5]], np.float16), None, axis=-1, bits=4, group_size=32)
    chex.assert_trees_all_equal(q.dequantize(), jnp.asarray(0.5 * (codes - 8.0), jnp.float32)[None])
    q1 = quant.QTensor(packed[None, :], np.array([[0.5]], np.float16), np.array([[-1.0]], np.float16), axis=-1,
                       bits=4, group_size=32)
    chex.assert_trees_all_equal(q1.dequantize(), jnp.asarray(0.5 * codes - 1.0, jnp.float32)[None])


def test_quantize_replaces_exactly_the_listed_weights(cfg, params, quantized):
    flat = quant._flat(quantized)
    assert {path for path, leaf in flat.items() if isinstance(leaf, quant.QTensor)} == (
        set(quant.QUANTIZED_AXES) & set(flat))
    for path, leaf in flat.items():
        if not isinstance(leaf, quant.QTensor):
            chex.assert_trees_all_equal(leaf, quant._flat(params)[path])
    assert quant.is_quantized(quantized) and not quant.is_quantized(params)
    assert quant.weight_bytes(quantized) < 0.25 * quant.weight_bytes(params)


def quantized_forward_and_reference(params, cfg, tokens, bits, symmetric):
    """The forward (trace recorded) of `params` quantized in groups of 8, and of its dequantised copy."""
    q = quant.quantize(params, cfg, bits=bits, group_size=8, symmetric=symmetric)
    return jit_forward(q, tokens, cfg, record=RECORD), jit_forward(jit_dequantize(q), tokens, cfg, record=RECORD)


def test_quantized_forward_equals_the_dequantised_reference(cfg, params):
    tokens = make_tokens(cfg, (2, 16))
    full = jit_forward(params, tokens, cfg, record=RECORD).logits
    moved = {}
    for bits, symmetric in SCHEMES:
        got, want = quantized_forward_and_reference(params, cfg, tokens, bits, symmetric)
        # The same arithmetic in both programs, up to XLA fusing the dequantisation differently.
        chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
        moved[bits, symmetric] = float(jnp.max(jnp.abs(got.logits - full)))
    # The quantization itself: a 16x finer grid moves the logits far less.
    assert moved[8, True] < moved[4, True] / 4 and moved[8, False] < moved[4, False] / 4


def test_tied_quantized_forward_equals_the_dequantised_reference(cfg, params):
    """The quantized embedding also serves as the unembedding. One scheme: each one's dequantisation is the untied
    test's; asymmetric int4's unpacks nibbles and adds minimums, the most of any."""
    tied = cfg.replace(tie_embeddings=True)
    params = {name: value for name, value in params.items() if name != "unembed"}  # the tied model's tree
    got, want = quantized_forward_and_reference(params, tied, make_tokens(cfg, (2, 16)), 4, False)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_transforms_and_edits_take_quantized_params(cfg, quantized, dequantized):
    """Edits, jit, vmap and grad on quantized params, against the dequantised reference or the plain forward (its
    logits are the recording forward's: recording does not change them)."""
    tokens = make_tokens(cfg, (2, 16))
    reference = dequantized
    shapes = edit_shapes(cfg, 2, 16, 16)
    edits = sj.Edits(head_mask=jnp.ones(shapes["head_mask"]).at[0, :, 1].set(0.0),
                     edge_mask=jnp.ones(shapes["edge_mask"], bool).at[1, :, :, 5, 2].set(False))
    chex.assert_trees_all_close(jit_forward(quantized, tokens, cfg=cfg, edits=edits, record=RECORD),
                                jit_forward(reference, tokens, cfg=cfg, edits=edits, record=RECORD),
                                atol=1e-5, rtol=1e-5)
    null = sj.Edits(head_mask=jnp.ones(shapes["head_mask"]))
    plain = jit_forward(quantized, tokens, cfg=cfg, record=RECORD).logits
    chex.assert_trees_all_equal(jit_forward(quantized, tokens, cfg=cfg, edits=null, record=RECORD).logits, plain)
    batched = jax.jit(jax.vmap(lambda t: sj.forward(quantized, t, cfg).logits))(tokens[:, None])
    chex.assert_trees_all_close(batched[:, 0], plain, atol=1e-5)

    def loss(delta):
        edits = sj.Edits(residual_delta=delta)
        return jnp.sum(sj.forward(quantized, tokens, cfg, edits=edits).logits[:, -1, 0])

    grad = jax.jit(jax.grad(loss))(jnp.zeros(shapes["residual_delta"]))
    ref_grad = jax.jit(jax.grad(lambda d: jnp.sum(sj.forward(reference, tokens, cfg, edits=sj.Edits(
        residual_delta=d)).logits[:, -1, 0])))(jnp.zeros(shapes["residual_delta"]))
    chex.assert_trees_all_close(grad, ref_grad, atol=1e-5, rtol=1e-4)


def test_generate_takes_quantized_params(cfg, quantized, dequantized):
    prompt = [[1, 5, 6, 7], [1, 9, 10]]
    got = sj.generate(quantized, cfg, prompt, max_new_tokens=8, record="value_norms", track=True)
    want = sj.generate(dequantized, cfg, prompt, max_new_tokens=8, record="value_norms", track=True)
    chex.assert_trees_all_equal(got.tokens, want.tokens)
    chex.assert_trees_all_close(got.trace.value_norms, want.trace.value_norms, atol=1e-5)
    chex.assert_trees_all_close(got.attention, want.attention, atol=1e-5)


def test_exact_and_amortised_analysis_and_explain_take_quantized_params():
    codec = ByteCodec()
    cfg = sj.configs.get("test").replace(vocab_size=codec.vocab_size, max_seq_len=64)
    q = quant.quantize(perturbed_params(cfg, seed=5), cfg, bits=8, group_size=8)
    reference = jit_dequantize(q)
    # Without continuations: they are `generate` on left-padded prompts, test_generate_takes_quantized_params's case.
    got = explain(q, cfg, "2+3+4?", "2+3=5\n5+4=9\n", tokenizer=codec, answer="9")
    want = explain(reference, cfg, "2+3+4?", "2+3=5\n5+4=9\n", tokenizer=codec, answer="9")
    assert got.to_markdown() == want.to_markdown()
    chex.assert_trees_all_close([s.significance for s in got.steps], [s.significance for s in want.steps],
                                atol=1e-5, rtol=1e-4)

    inverse = init_inverse_params(cfg, jax.random.key(2))
    tokens = jnp.asarray(got.tokens)
    steps = jnp.zeros((2, tokens.shape[0]), bool).at[0, 8:12].set(True).at[1, 13:17].set(True)
    chex.assert_trees_all_close(analyse(q, inverse, cfg, tokens, steps), analyse(reference, inverse, cfg, tokens,
                                                                                steps), atol=1e-5, rtol=1e-4)


def test_array_operations_follow_the_dequantised_array():
    w = jax.random.normal(jax.random.key(3), (12, 64))  # GGUF's [out, in], groups along in
    q = quant.quantize_array(w, bits=4, group_size=32, axis=-1, symmetric=False)
    d = q.dequantize()
    chex.assert_trees_all_equal(q.T.dequantize(), d.T)
    chex.assert_trees_all_equal(q.T.reshape(64, 3, 4).dequantize(), d.T.reshape(64, 3, 4))
    chex.assert_trees_all_equal(q.reshape(3, 4, 2, 32).swapaxes(1, 2).dequantize(),
                                d.reshape(3, 4, 2, 32).swapaxes(1, 2))
    chex.assert_trees_all_equal(q.T.reshape(2, 32, 12).dequantize(), d.T.reshape(2, 32, 12))  # [H * d, D] -> [H, d, D]
    stacked = quant.stack([q.T, q.T])
    assert stacked.axis == -2 and stacked.shape == (2, 64, 12)
    chex.assert_trees_all_equal(stacked.dequantize(), jnp.stack([d.T, d.T]))
    with pytest.raises(ValueError, match="cut through groups"):
        q.reshape(12, 4, 16)
    with pytest.raises(ValueError, match="different layouts"):
        quant.stack([q, quant.quantize_array(w, bits=8, group_size=32)])


def test_embedding_rows_are_read_without_dequantising_the_table(cfg, quantized):
    ids = jnp.array([[0, 5, cfg.vocab_size - 1], [3, cfg.vocab_size, cfg.vocab_size + 7]])
    got = quant.embed_rows(quantized["embed"], ids, jnp.float32)
    want = jnp.take(quantized["embed"].dequantize(), ids, axis=0, mode="fill", fill_value=jnp.nan)
    chex.assert_trees_all_equal(got, want)
    assert bool(jnp.all(jnp.isnan(got[1, 1:])))


def test_group_sizes_divide_every_quantized_axis():
    assert quant.group_sizes(sj.configs.get("tiny")) == (2, 4, 8, 16)  # d_ff 688 = 43 x 16
    assert quant.group_sizes(sj.configs.get("tiny"), bits=8) == (1, 2, 4, 8, 16)
    assert 32 in quant.group_sizes(sj.configs.get("nano_4b"))


def test_bad_input_is_refused_by_name(cfg, params, quantized):
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        quant.quantize(params, cfg, bits=3)
    with pytest.raises(ValueError, match=r"group_size=16 does not divide axis -2 \(size 8\) of params/layers/attn/o .*"
                                         r"axis of 'test': \(2, 4, 8\)"):
        quant.quantize(params, cfg, group_size=16)
    with pytest.raises(ValueError, match="even"):
        quant.quantize(params, cfg, bits=4, group_size=3)
    with pytest.raises(ValueError, match="params/embed is already quantized"):
        quant.quantize(quantized, cfg)
    with pytest.raises(ValueError, match="do not match config 'tiny'"):
        quant.quantize(params, sj.configs.get("tiny"))
    wrong = {**params, "embed": params["embed"][:, :16]}
    with pytest.raises(ValueError, match=r"params/embed has shape \(64, 16\)"):
        quant.quantize(wrong, cfg)


def test_a_group_size_per_weight(cfg, params):
    sizes = quant.largest_group_sizes(cfg)
    assert sizes == {**{path: 32 for path in sizes}, "layers/attn/o": 8}  # the test preset's heads are 8 wide
    assert quant.largest_group_sizes(sj.configs.get("tiny"))["layers/ffn/wo/kernel"] == 16  # 688 = 43 x 16
    mixed = quant.quantize(params, cfg, bits=4, group_size=sizes)
    assert mixed["layers"]["attn"]["o"].group_size == 8 and mixed["embed"].group_size == 32
    chex.assert_trees_all_equal(mixed["layers"]["attn"]["q"]["kernel"], quant.quantize_array(
        params["layers"]["attn"]["q"]["kernel"], bits=4, group_size=32, axis=-3))
    assert quant.describe_groups(sizes) == "groups of 32 (8: layers/attn/o)"
    with pytest.raises(ValueError, match="gives no size for 'layers/attn/o'"):
        quant.quantize(params, cfg, group_size={k: v for k, v in sizes.items() if k != "layers/attn/o"})
    with pytest.raises(ValueError, match="names 'layers/attn/gate'"):
        quant.quantize(params, cfg, group_size={**sizes, "layers/attn/gate": 8})


def test_a_quantized_model_is_not_written_as_a_float_checkpoint(cfg, quantized, tmp_path):
    from sage_jax.interop.hf import save_hf

    with pytest.raises(ValueError, match="quantized .* save quant.dequantize"):
        save_hf(cfg, quantized, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
