"""tfds builders (array_record, no TensorFlow): official files in, the example schema out, bad input reported."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sage_jax.data.builders import BadInputError, PreparedSource, example_to_record, prepare, record_to_example
from sage_jax.data.formats import read_file
from sage_jax.data.procedural import variable_chain
from sage_jax.data.schema import encode_example
from sage_jax.data.tokenizer import Tokenizer

GSM = [{"question": f"Q{i}: {i},000 apples, how many?",
        "answer": f"{i} * 1000 = <<{i}*1000={i}000>>{i},000\n#### {i},000"} for i in range(1, 5)]


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def test_gsm8k_build_reads_back_every_field_and_leaves_sources_unchanged(tmp_path):
    manual = tmp_path / "manual"
    train = _write(manual / "train.jsonl", [json.dumps(r) for r in GSM])
    test = _write(manual / "test.jsonl", [json.dumps(GSM[0]), '{"question": "broken"'])
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (train, test)}
    report = prepare("sage_gsm8k", manual, tmp_path / "data", max_bad_fraction=0.5)
    assert [(f.split, f.records, f.kept, len(f.skipped)) for f in report.files] == [("train", 4, 4, 0),
                                                                                   ("test", 2, 1, 1)]
    assert f"{test}:2: broken JSON" in str(report)
    expected = {line: example for line, example in read_file(train, "gsm8k").examples}
    source = PreparedSource("sage_gsm8k", "train", tmp_path / "data")
    assert len(source) == 4
    for i in range(4):
        example = source[i]
        line = example.metadata["line"]
        assert example == dataclasses.replace(expected[line], metadata={**expected[line].metadata, "line": line})
    assert sorted(source[i].answer for i in range(4)) == ["1000", "2000", "3000", "4000"]
    raw = tfds.data_source("sage_gsm8k", split="test", data_dir=str(tmp_path / "data"), download=False)
    assert len(raw) == 1 and raw[0]["question"].decode() == GSM[0]["question"]
    assert digest == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (train, test)}


def test_too_many_bad_records_fail_the_build_with_the_report(tmp_path):
    manual = tmp_path / "manual"
    _write(manual / "train.json", ['{"question": "q", "options": ["A)1"], "rationale": "r", "correct": "A"}',
                                   "not json"])
    with pytest.raises(BadInputError, match=r"2 of 2 records malformed \(100.0% > max_bad_fraction=1.0%\)"
                                            r"(.|\n)*train.json:1: expected 5 options \(A to E\), found 1"
                                            r"(.|\n)*train.json:2: broken JSON"):
        prepare("sage_aqua_rat", manual, tmp_path / "data")


def test_examples_longer_than_the_context_are_dropped_and_counted(tmp_path):
    manual = tmp_path / "manual"
    long_question = "word " * 80
    _write(manual / "dev.txt", [json.dumps({"text": long_question if i % 2 else "short", "question": "q?",
                                            "options": ["a", "b", "c", "d"], "answer": i % 4}) for i in range(6)])
    report = prepare("sage_logiqa2", manual, tmp_path / "data", max_length=64)
    (dev,) = report.files
    assert (dev.split, dev.records, dev.kept, dev.too_long) == ("dev", 6, 3, [2, 4, 6])
    source = PreparedSource("sage_logiqa2", "dev", tmp_path / "data")
    assert sorted(source[i].answer for i in range(3)) == ["A", "A", "C"]
    assert all(len(encode_example(source[i], Tokenizer.load())) <= 64 for i in range(3))


def test_logiqa1_splits_as_the_source_names_them(tmp_path):
    block = ["", "b", "ctx", "q?", "A.w", "B.x", "C.y", "D.z"]
    for name in ("Train.txt", "Eval.txt", "Test.txt"):
        _write(tmp_path / "manual" / name, block * 2)
    report = prepare("sage_logiqa", tmp_path / "manual", tmp_path / "data")
    assert [(f.split, f.kept) for f in report.files] == [("train", 2), ("eval", 2), ("test", 2)]
    example = PreparedSource("sage_logiqa", "eval", tmp_path / "data")[0]
    assert (example.question, example.options, example.answer) == ("ctx\nq?", ("w", "x", "y", "z"), "B")


def test_record_round_trip_keeps_dependencies():
    example = variable_chain(np.random.default_rng(0), 3, 2, 9)
    record = example_to_record(example, line=5)
    as_bytes = {k: v.encode() if isinstance(v, str) else v for k, v in record.items()}  # tfds returns bytes
    encoded = {**as_bytes, "options": [o.encode() for o in record["options"]],
               "steps": [s.encode() for s in record["steps"]]}
    back = record_to_example(encoded)
    assert back.dependencies == example.dependencies and back.steps == example.steps
    assert back.metadata == {**example.metadata, "line": 5}


def test_missing_files_and_unknown_names(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "README").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match=r"sage_gsm8k: none of \['test.jsonl', 'train.jsonl'\]"):
        prepare("sage_gsm8k", tmp_path / "manual", tmp_path / "data")
    with pytest.raises(ValueError, match="unknown dataset 'gsm8k'"):
        prepare("gsm8k", tmp_path / "manual", tmp_path / "data")
