"""Annotated explanations in JSON Lines (`sage_jax.data.annotated`): schema, bad lines by file:line, round trip."""

from __future__ import annotations

import json
import os
import re

import pytest

from sage_jax.data.annotated import AnnotatedError, AnnotatedSource, read_annotated, write_annotated
from sage_jax.data.explanations import with_explanation
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource

GOOD = {"question": "3+1+9=?", "steps": ["3+1=4", "4+9=13"], "answer": "13",
        "explanation": "Step 1 depends on '3' from the question, '+1' from the question. Step 2 depends on '4' "
                       "from step 1, '+9' from the question."}
CHOICE = {"question": "2+5=?", "steps": ["2+5=7"], "answer": "B", "options": ["6", "7"],
          "explanation": "Step 1 adds 2 and 5.", "source": "mine", "metadata": {"annotator": "ab"}}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_good_file_parses_every_field_and_skips_blank_lines(tmp_path):
    path = _write(tmp_path / "good.jsonl", [json.dumps(GOOD), "", json.dumps(CHOICE)])
    read = read_annotated(path)
    assert read.lines == (1, 3) and read.skipped == ()
    first, second = read.examples
    assert (first.question, first.steps, first.answer) == (GOOD["question"], tuple(GOOD["steps"]), "13")
    assert first.explanation == GOOD["explanation"] and first.source == "annotated/good.jsonl"
    assert second.options == ("6", "7") and second.answer == "B" and second.source == "mine"
    assert second.metadata == {"annotator": "ab"}
    source = AnnotatedSource(path)
    assert len(source) == 2 and source[1] == second


@pytest.mark.parametrize("line, reason", [
    ('{"question": "1+1=?"', "not valid JSON"),
    ('["a list"]', "expected a JSON object, got list"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "answer"}), "missing field 'answer'"),
    (json.dumps({**GOOD, "steps": "3+1=4"}), "field 'steps' must be a list, got string"),
    (json.dumps({**GOOD, "steps": []}), "field 'steps' is empty"),
    (json.dumps({**GOOD, "steps": ["3+1=4", 7]}), r"Example.steps\[1\] must be a str"),
    (json.dumps({**GOOD, "explanation": "  "}), "field 'explanation' is empty"),
    (json.dumps({**GOOD, "explanaton": "x"}), r"unknown field\(s\) \['explanaton'\]"),
    (json.dumps({**CHOICE, "answer": "7"}), "Example.answer=.7. must be an option letter"),
])
def test_a_bad_line_raises_naming_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path / "bad.jsonl", [json.dumps(GOOD), line, json.dumps(CHOICE)])
    with pytest.raises(AnnotatedError, match=rf"^{re.escape(str(path))}:2: {reason}"):
        read_annotated(path)
    skipped = read_annotated(path, on_bad_line="skip")
    assert skipped.lines == (1, 3) and [n for n, _ in skipped.skipped] == [2]


def test_the_data_file_is_never_modified(tmp_path):
    path = _write(tmp_path / "mixed.jsonl", [json.dumps(GOOD), "not json", json.dumps(CHOICE)])
    before, stat = path.read_bytes(), os.stat(path)
    read_annotated(path, on_bad_line="skip")
    with pytest.raises(AnnotatedError):
        read_annotated(path)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert sorted(os.listdir(tmp_path)) == ["mixed.jsonl"]


def test_unusable_files_are_errors(tmp_path):
    with pytest.raises(AnnotatedError, match="no usable annotated explanation"):
        read_annotated(_write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(AnnotatedError, match=r"all_bad.jsonl: no usable .*all_bad.jsonl:1: not valid JSON"):
        read_annotated(_write(tmp_path / "all_bad.jsonl", ["{"]), on_bad_line="skip")
    with pytest.raises(AnnotatedError, match="cannot read"):
        read_annotated(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="on_bad_line='ignore'"):
        read_annotated(tmp_path / "missing.jsonl", on_bad_line="ignore")


def test_write_then_read_round_trips_explained_examples(tmp_path):
    source = ProceduralSource(ChainSumKnobs(n_terms=(2, 4)), size=5, seed=3)
    examples = [with_explanation(source[i]) for i in range(5)]
    path = tmp_path / "out" / "pool.jsonl"
    write_annotated(path, examples)
    back = read_annotated(path).examples
    assert [(e.question, e.steps, e.answer, e.explanation, e.source, dict(e.metadata)) for e in back] == [
        (e.question, e.steps, e.answer, e.explanation, e.source, dict(e.metadata)) for e in examples]
    assert sorted(os.listdir(path.parent)) == ["pool.jsonl"]  # the temporary file was renamed into place
