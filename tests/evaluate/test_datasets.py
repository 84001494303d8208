"""GSM8K / AQUA-RAT / LogiQA accuracy: each source's scorer on hand-written answers, loading tiny local files
in the official formats, and the context check of `dataset_accuracy`."""

from __future__ import annotations

import dataclasses
import json

import jax
import pytest

import sage_jax as sj
from sage_jax.data import Example, Tokenizer
from sage_jax.evaluate.datasets import choice_match, dataset_accuracy, load_dataset, numeric_match, scorer_for

TOKENIZER = Tokenizer.load(512)


@pytest.fixture
def files(tmp_path):
    gsm8k = tmp_path / "test.jsonl"
    gsm8k.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Tom has 3 apples and buys 4 more at the market on Monday morning. How many apples has he now?",
         "answer": "3+4=<<3+4=7>>7\n#### 7"},
        {"question": "A small shop sells 1,200 pens every day of the week. How many pens does it sell in 2 days?",
         "answer": "1200*2=2400\n#### 2,400"},
        {"question": "broken", "answer": "no final line"}]) + "\n")
    aqua = tmp_path / "dev.json"
    aqua.write_text(json.dumps({"question": "2+2?", "options": ["A)3", "B)4", "C)5", "D)6", "E)7"],
                                "rationale": "2+2=4", "correct": "B"}) + "\n")
    logiqa = tmp_path / "Eval.txt"
    logiqa.write_text("\nc\nAll cats are animals.\nTom is a cat. So?\nA. Tom is a dog\nB. Tom is a fish\n"
                      "C. Tom is an animal\nD. Nothing\n")
    logiqa2 = tmp_path / "dev.txt"
    logiqa2.write_text(json.dumps({"text": "If p then q. p.", "question": "What follows?",
                                   "options": ["not q", "q", "not p", "nothing"], "answer": 1}) + "\n")
    return {"gsm8k": gsm8k, "aqua_rat": aqua, "logiqa": logiqa, "logiqa2": logiqa2}


def test_numeric_match_reads_the_last_number():
    ex = Example(question="q", steps=(), answer="2400", source="gsm8k")
    for answer, score in (("2400", 1.0), ("$2,400", 1.0), ("2400.0", 1.0), ("it is 12 then 2400", 1.0),
                          ("2400 then 12", 0.0), ("-2400", 0.0), ("none", 0.0), (None, 0.0)):
        assert numeric_match(ex, answer) == score, answer


def test_choice_match_reads_the_first_option_letter():
    ex = Example(question="q", steps=(), answer="C", options=("1", "2", "3", "4"), source="logiqa")
    for answer, score in (("C", 1.0), ("c", 1.0), ("(C)", 1.0), ("C) 3", 1.0), ("The answer is C", 1.0),
                          ("E then C", 1.0), ("B", 0.0), ("", 0.0), (None, 0.0)):
        assert choice_match(ex, answer) == score, answer


def test_local_files_load_with_their_source_and_scorer(files):
    gsm8k = load_dataset(f"gsm8k:{files['gsm8k']}")
    assert [ex.answer for ex in gsm8k] == ["7", "2400"] and gsm8k[0].source == "gsm8k"
    assert load_dataset(f"gsm8k:{files['gsm8k']}", limit=1) == gsm8k[:1]
    aqua, = load_dataset(f"aqua_rat:{files['aqua_rat']}")
    logiqa, = load_dataset(f"logiqa:{files['logiqa']}")
    logiqa2, = load_dataset(f"logiqa2:{files['logiqa2']}")
    assert (aqua.answer, logiqa.answer, logiqa2.answer) == ("B", "C", "B")
    assert scorer_for(gsm8k[1], "$2,400") == 1.0 and scorer_for(aqua, "B)") == 1.0
    assert scorer_for(logiqa, "c") == 1.0 and scorer_for(logiqa2, "A") == 0.0
    assert scorer_for(Example(question="1+1=?", steps=(), answer="2", source="procedural/chain_sum"), "2.0") == 0.0


def test_bad_specs_name_the_spec(files):
    with pytest.raises(ValueError, match="'csv:x'.*<format>:<file>"):
        load_dataset("csv:x")
    with pytest.raises(ValueError, match="'prepared/sage_gsm8k'.*data_dir"):
        load_dataset("prepared/sage_gsm8k")


def test_accuracy_generates_only_for_what_fits_the_context(files):
    model = dataclasses.replace(sj.configs.get("test"), vocab_size=512, max_seq_len=40)
    params = sj.init_params(model, jax.random.key(0))
    examples = load_dataset(f"gsm8k:{files['gsm8k']}") + load_dataset(f"aqua_rat:{files['aqua_rat']}")
    row = dataset_accuracy(params, model, TOKENIZER, examples, max_new_tokens=4, batch_size=2)
    # The aqua question with its options (31 tokens) fits 40 - 4 tokens; both GSM8K questions do not.
    assert (row["n"], row["too_long"], row["scorer"]) == (1, 2, "choice_match, numeric_match")
    assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["answered"] <= 1.0
    none = dataset_accuracy(params, model, TOKENIZER, examples[:2], max_new_tokens=4)
    assert (none["n"], none["too_long"], none["accuracy"]) == (0, 2, None)
