"""Parsers of the official formats: every field of hand-written records, awkward ones included, and the
report of malformed ones (file, line, reason)."""

from __future__ import annotations

import json

import pytest

from sage_jax.data.formats import read_file
from sage_jax.data.schema import Example


def _write(path, lines):
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_gsm8k_fields_and_bad_records(tmp_path):
    good = [
        {"question": "Natalia sold 48 clips in April and half as many in May. How many?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 in all.\n#### 72"},
        {"question": "A café sells 1,200 cups at €2. Revenue?",
         "answer": "1,200 * 2 = <<1200*2=2400>>2,400\n#### 2,400"},
        {"question": "It was 4 degrees and fell 7. Now?", "answer": "4 - 7 = <<4-7=-3>>-3\n#### -3"},
        {"question": "Half of one?", "answer": "1 / 2 = <<1/2=0.5>>0.5\n\n#### 0.5"},
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in good]
    lines[1:1] = ['{"question": "broken", "answer": ']  # line 2
    lines += ['{"question": "no answer field"}', json.dumps({"question": "q", "answer": "1+1=2\n#### two"}), "", ""]
    report = read_file(_write(tmp_path / "train.jsonl", lines), "gsm8k")
    assert report.records == 7
    assert [line for line, _ in report.examples] == [1, 3, 4, 5]
    examples = [e for _, e in report.examples]
    assert examples[0] == Example(
        question=good[0]["question"], steps=("Natalia sold 48/2 = 24 clips in May.", "She sold 48+24 = 72 in all."),
        answer="72", source="gsm8k", metadata={"calculations": [["48/2=24"], ["48+24=72"]]})
    assert examples[1].question == "A café sells 1,200 cups at €2. Revenue?"
    assert examples[1].steps == ("1,200 * 2 = 2,400",) and examples[1].answer == "2400"
    assert examples[2].answer == "-3" and examples[2].metadata["calculations"] == [["4-7=-3"]]
    assert examples[3].answer == "0.5" and examples[3].steps == ("1 / 2 = 0.5",)
    reasons = [(s.line, s.reason) for s in report.skipped]
    assert reasons[0][0] == 2 and reasons[0][1].startswith("broken JSON")
    assert reasons[1:] == [(6, "missing field 'answer'"),
                           (7, "unparseable '####' line '#### two': not a number")]
    assert str(report.skipped[1]) == f"{tmp_path / 'train.jsonl'}:6: missing field 'answer'"


def test_aqua_rat_fields_and_bad_records(tmp_path):
    good = {"question": "What is 1/2 of (4+2)?", "options": ["A)(1/2)", "B)3", "C)6 (six)", "D)2", "E)ünï"],
            "rationale": "(4+2) = 6\n6/2 = 3\nAnswer B", "correct": "B"}
    four = {**good, "options": good["options"][:4]}
    letter = {**good, "correct": "F"}
    unprefixed = {**good, "options": ["(1/2)"] + good["options"][1:]}
    path = _write(tmp_path / "dev.json", [json.dumps(r, ensure_ascii=False) for r in (good, four, letter, unprefixed)]
                  + [""])
    report = read_file(path, "aqua_rat")
    assert report.examples == [(1, Example(question="What is 1/2 of (4+2)?",
                                           steps=("(4+2) = 6", "6/2 = 3", "Answer B"), answer="B",
                                           options=("(1/2)", "3", "6 (six)", "2", "ünï"), source="aqua_rat"))]
    assert [(s.line, s.reason) for s in report.skipped] == [
        (2, "expected 5 options (A to E), found 4"), (3, "answer letter 'F' is outside A-E"),
        (4, "option 1 '(1/2)' does not start with 'A)'")]
    assert report.bad_fraction == pytest.approx(0.75)


def test_logiqa_blocks(tmp_path):
    lines = ["", "c", "Every cat in the house is grey; Tom is a cat in the house.", "Which must be true?",
             "A.Tom is black.", "B.Tom is white (mostly).", "C.Tom is grey.", "D.Tom is not a cat.",
             "", "a", "Only context", "Question?", "A.one", "B.two", "C.three",  # a missing option
             "", "e", "ctx", "q?", "A.1", "B.2", "C.3", "D.4", "", "", ""]
    report = read_file(_write(tmp_path / "Train.txt", lines), "logiqa")
    assert report.records == 3
    assert report.examples == [(2, Example(
        question="Every cat in the house is grey; Tom is a cat in the house.\nWhich must be true?", steps=(),
        answer="C", options=("Tom is black.", "Tom is white (mostly).", "Tom is grey.", "Tom is not a cat."),
        source="logiqa"))]
    assert [(s.line, s.reason) for s in report.skipped] == [
        (10, "expected 7 lines (answer letter, context, question, 4 options), found 6"),
        (17, "answer letter 'e' is outside a-d")]


def test_logiqa2_json_lines(tmp_path):
    good = {"id": 7, "answer": 2, "text": "Ärzte say X.", "question": "So?", "options": ["a", "b", "c (c)", "d"],
            "type": {"Categorical": True}}
    path = _write(tmp_path / "test.txt", [json.dumps(good, ensure_ascii=False),
                                          json.dumps({**good, "answer": 4}), json.dumps({**good, "answer": "2"})])
    report = read_file(path, "logiqa2")
    assert report.examples == [(1, Example(question="Ärzte say X.\nSo?", steps=(), answer="C",
                                           options=("a", "b", "c (c)", "d"), source="logiqa2"))]
    assert [(s.line, s.reason) for s in report.skipped] == [
        (2, "answer index 4 is outside 0-3"), (3, "field 'answer' must be int, got str")]


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_file("x", "csv")
