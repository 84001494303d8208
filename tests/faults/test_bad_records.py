"""One bad record in an official file (issue 17, failure 5): it is skipped and reported with its file and line,
and the build goes on; a file with nothing to build from is an error naming the file. The files are written
here and never changed by the build."""

from __future__ import annotations

import hashlib
import json

import pytest

from sage_jax.data.builders import BadInputError, PreparedSource, prepare
from sage_jax.data.formats import read_file


def _gsm8k_line(i: int) -> bytes:
    return json.dumps({"question": f"Q{i}: {i} apples?", "answer": f"{i} + 0 = {i}\n#### {i}"}).encode()


def test_invalid_utf8_on_one_line_of_201_is_skipped_with_its_line(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    lines = [_gsm8k_line(i) for i in range(201)]
    lines[136] = lines[136].replace(b"apples", b"appl\xff\xfees")  # line 137
    path = manual / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    report = prepare("sage_gsm8k", manual, tmp_path / "data", max_bad_fraction=0.01)
    (file,) = report.files
    assert (file.records, file.kept) == (201, 200)
    assert [str(s) for s in file.skipped] == [f"{path}:137: invalid UTF-8 at byte 28 of the line (b'\\xff')"]
    assert len(PreparedSource("sage_gsm8k", "train", tmp_path / "data")) == 200
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_deep_nesting_and_lone_surrogates_are_skipped_with_their_lines(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_bytes(b"\n".join([
        _gsm8k_line(1),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"question": "Q \\ud800?", "answer": "1 + 1 = 2\\n#### 2"}',
        _gsm8k_line(4),
    ]))
    report = read_file(path, "gsm8k")
    assert [line for line, _ in report.examples] == [1, 4]
    assert [str(s) for s in report.skipped] == [
        f"{path}:2: JSON nested too deeply to parse",
        f"{path}:3: question holds a lone surrogate '\\ud800' at character 2: not Unicode text"]


def test_logiqa_bad_utf8_spoils_only_its_block(tmp_path):
    block = ["a", "Context.", "Question?", "A. one", "B. two", "C. three", "D. four"]
    path = tmp_path / "Test.txt"
    text = "\n" + "\n".join(block) + "\n\n" + "\n".join(block) + "\n"
    path.write_bytes(text.encode().replace(b"Question?", b"Quest\xc3ion?", 1))
    report = read_file(path, "logiqa")
    assert [line for line, _ in report.examples] == [10]
    assert [str(s) for s in report.skipped] == [f"{path}:2: line 4: invalid UTF-8 at byte 5 of the line (b'\\xc3')"]


def test_logiqa2_rejects_an_empty_context_or_question(tmp_path):
    record = {"text": "All cats sleep.", "question": "Which follows?", "options": ["a", "b", "c", "d"], "answer": 1}
    path = tmp_path / "test.txt"
    path.write_text("\n".join(json.dumps(r) for r in [record, {**record, "text": " "}, {**record, "question": ""}]))
    report = read_file(path, "logiqa2")
    assert [line for line, _ in report.examples] == [1]
    assert [str(s) for s in report.skipped] == [f"{path}:2: the context is empty", f"{path}:3: the question is empty"]


def test_an_empty_file_fails_the_build_naming_the_file(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "train.jsonl").write_bytes(b"")
    message = rf"{manual / 'train.jsonl'}: no examples to write \(0 records, 0 malformed"
    with pytest.raises(BadInputError, match=message):
        prepare("sage_gsm8k", manual, tmp_path / "data")
