"""Answer accuracy (the answer parser is `sage_jax.layout`'s, tested there): batched greedy prediction against one
prompt at a time, accuracy by a key, and the per-source scorer."""

from __future__ import annotations

import dataclasses

import jax

import sage_jax as sj
from sage_jax.data import ChainSumKnobs, Tokenizer
from sage_jax.evaluate import accuracy_by, predict, procedural_by_difficulty

TOKENIZER = Tokenizer.load(512)
MODEL = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=64)


def test_batched_prediction_equals_one_prompt_at_a_time():
    params = sj.init_params(MODEL, jax.random.key(0))
    examples = procedural_by_difficulty(ChainSumKnobs(), (1, 2), 2, seed=3).examples
    together = predict(params, MODEL, TOKENIZER, examples, max_new_tokens=8, batch_size=3)
    alone = predict(params, MODEL, TOKENIZER, examples, max_new_tokens=8, batch_size=1)
    assert [p.generated for p in together] == [p.generated for p in alone]
    assert len(together) == 4 and all(p.score == 0.0 for p in together if p.answer is None)
    table = accuracy_by(together, key=lambda ex: len(ex.steps))
    assert list(table) == [1, 2] and table[1]["n"] == 2


def test_predict_scores_with_the_given_scorer():
    params = sj.init_params(MODEL, jax.random.key(0))
    examples = procedural_by_difficulty(ChainSumKnobs(), (1,), 3, seed=3).examples
    preds = predict(params, MODEL, TOKENIZER, examples, max_new_tokens=4, batch_size=4,
                    scorer=lambda ex, answer: 0.5)
    assert [p.score for p in preds] == [0.5, 0.5, 0.5]


