"""A chat model evaluated as the trained default is, on a random `test`-sized model with a ChatML tokenizer:
the chains in the chat layout carry the right dependencies, and the report has every number it promises."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import sage_jax as sj
from sage_jax.chat import ChatLayout, TextCodec
from sage_jax.data.procedural import spoken_sum
from sage_jax.evaluate import truth
from sage_jax.evaluate.explanations import encode_true_chains
from sage_jax.evaluate.pretrained import evaluate_pretrained, format_pretrained
from tests.test_chat import CHATML, chatml_tokenizer


@pytest.fixture(scope="module")
def chat():
    return ChatLayout.for_codec(TextCodec(chatml_tokenizer()), CHATML)


@pytest.fixture(scope="module")
def model(chat):
    cfg = sj.configs.get("test", vocab_size=chat.codec.vocab_size, max_seq_len=160)
    return cfg, sj.init_params(cfg, jax.random.key(0))


def test_true_chains_in_the_chat_layout_mark_the_numbers_each_step_adds(chat):
    examples = [spoken_sum(np.random.default_rng(seed), n, 9) for seed, n in [(0, 2), (1, 4)]]
    encoded = encode_true_chains(chat.codec, examples, chat)
    assert encoded.n_steps.tolist() == [1, 3]
    for i, example in enumerate(examples):
        assert chat.is_special(encoded.tokens[i, len(chat.encode(chat.codec, example.question, example.steps,
                                                                  example.answer).tokens):]).all()  # padding
        for k, step in enumerate(example.steps):
            named = chat.codec.decode(encoded.tokens[i][encoded.deps[i, k]].tolist())
            running, term = step.split(" = ")[0].split(" + ")
            assert sorted(named.replace(" ", "")) == sorted(running + term), (step, named)  # in token order
            span = np.asarray(encoded.steps.mask[i, k])
            assert chat.codec.decode(encoded.tokens[i][span].tolist()).strip() == step


def test_evaluate_pretrained_reports_accuracy_and_every_map(chat, model):
    cfg, params = model
    progress = []
    results = evaluate_pretrained(params, cfg, chat, steps=(2,), per_difficulty=3, truth_problems=1,
                                  n_substitutes=2, n_rollouts=2, methods=("sage",), max_new_tokens=12, batch_size=3,
                                  log=progress.append)
    assert progress[0] == "generated 3 replies" and progress[-2].startswith("truth: scored ")
    assert progress[-1].startswith("truth: steps ranked by their alternatives")
    assert sum("resampling importance, chain" in line for line in progress) == 1
    assert results["task"] == "procedural/spoken_sum"
    row, = results["accuracy_by_steps"].values()
    assert list(results["accuracy_by_steps"]) == [2] and row["n"] == 3 and 0 <= row["accuracy"] <= row["answered"] <= 1
    assert results["examples"][0]["question"].startswith("What is ")
    table = results["truth"]["maps"]
    assert set(table) == {"sage", truth.EXPLAIN_DEFAULT}
    assert all(row["steps"] == 2 and row["chains_multi_step"] == 1 for row in table.values())
    assert all(0 <= row["precision_at_k"] <= 1 for row in table.values())
    assert "step_agreement_resampling_map" in table[truth.EXPLAIN_DEFAULT]  # its step columns: the alternatives'
    report = format_pretrained(results)
    assert "procedural/spoken_sum" in report and "sage" in report and truth.EXPLAIN_DEFAULT in report
