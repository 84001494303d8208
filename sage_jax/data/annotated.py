"""Annotated explanations in JSON Lines: user-supplied stage-3 targets, and the format the curriculum writes the
model's own rendered analyses in.

Schema: one JSON object per line (blank lines are skipped), UTF-8:

    {"question": "3+1+9+8=?", "steps": ["3+1=4", "4+9=13", "13+8=21"], "answer": "21",
     "explanation": "Step 1 depends on '3' from the question, '+1' from the question. ...",
     "options": [], "source": "my_annotations", "metadata": {"annotator": "ab"}}

- required: `question` (str), `steps` (list of str, at least one: an explanation is about a chain), `answer` (str),
  `explanation` (non-empty str);
- optional: `options` (list of str; the answer is then an option letter, as in `Example`), `source` (str, default
  `"annotated/<file name>"`), `metadata` (object);
- any other key is an error (a misspelt field would otherwise vanish silently).

A line that is not valid JSON or breaks the schema is reported as `<path>:<line>: <reason>`: `on_bad_line="raise"`
raises `AnnotatedError` at the first one; `"skip"` leaves it out and lists it in `AnnotatedFile.skipped`. A file
without a single usable line is an error either way. The file is only ever opened for reading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Any, Iterable, Union

from sage_jax.data.schema import Example, SchemaError

PathLike = Union[str, os.PathLike]
ON_BAD_LINE = ("raise", "skip")
REQUIRED = {"question": str, "steps": list, "answer": str, "explanation": str}
OPTIONAL = {"options": list, "source": str, "metadata": dict}


class AnnotatedError(ValueError):
    """An annotated-explanation file is unusable; the message starts with `<path>:<line>:` where a line is to blame."""


@dataclasses.dataclass(frozen=True)
class AnnotatedFile:
    """What reading a file gave.

    Attributes:
      path: the file.
      examples: the usable lines as `Example`s, in file order.
      lines: the 1-based line number of each example.
      skipped: `(line, reason)` of every bad line that was skipped.
    """

    path: str
    examples: tuple[Example, ...]
    lines: tuple[int, ...]
    skipped: tuple[tuple[int, str], ...]


def parse_line(text: str, *, default_source: str) -> Example:
    """One JSONL line -> `Example`.

    Raises:
      ValueError: with the reason (no location; `read_annotated` adds it).
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; fields are {sorted(REQUIRED)} and optionally {sorted(OPTIONAL)}")
    for name, kind in {**REQUIRED, **OPTIONAL}.items():
        if name not in record:
            if name in REQUIRED:
                raise ValueError(f"missing field {name!r}")
            continue
        if not isinstance(record[name], kind):
            raise ValueError(f"field {name!r} must be a {_json_name(kind)}, got {_json_name(type(record[name]))}")
    if not record["steps"]:
        raise ValueError("field 'steps' is empty; an explanation needs a chain of at least one step")
    if not record["explanation"].strip():
        raise ValueError("field 'explanation' is empty")
    try:
        return Example(question=record["question"], steps=tuple(record["steps"]), answer=record["answer"],
                       options=tuple(record.get("options", ())), explanation=record["explanation"],
                       source=record.get("source", default_source), metadata=record.get("metadata", {}))
    except SchemaError as error:
        raise ValueError(str(error)) from None


def read_annotated(path: PathLike, *, on_bad_line: str = "raise") -> AnnotatedFile:
    """Reads an annotated-explanation JSONL file (module docstring).

    Args:
      path: the file.
      on_bad_line: "raise" (stop at the first bad line) or "skip" (report it in `skipped`).

    Raises:
      AnnotatedError: a bad line under "raise" (`<path>:<line>: <reason>`), an unreadable file, or no usable line.
    """
    if on_bad_line not in ON_BAD_LINE:
        raise ValueError(f"on_bad_line={on_bad_line!r}: choose one of {ON_BAD_LINE}")
    path = pathlib.Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotatedError(f"{path}: cannot read annotated explanations: {error}") from None
    default_source = f"annotated/{path.name}"
    examples, lines, skipped = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(parse_line(line, default_source=default_source))
            lines.append(number)
        except ValueError as error:
            if on_bad_line == "raise":
                raise AnnotatedError(f"{path}:{number}: {error}") from None
            skipped.append((number, str(error)))
    if not examples:
        reasons = "; ".join(f"{path}:{n}: {r}" for n, r in skipped[:3])
        raise AnnotatedError(f"{path}: no usable annotated explanation" + (f" ({reasons})" if reasons else ""))
    return AnnotatedFile(str(path), tuple(examples), tuple(lines), tuple(skipped))


def to_record(example: Example) -> dict[str, Any]:
    """The JSONL object of an `Example` with an explanation (the inverse of `parse_line`)."""
    if not example.explanation:
        raise ValueError(f"example {example.question!r} has no explanation to write")
    record: dict[str, Any] = {"question": example.question, "steps": list(example.steps), "answer": example.answer,
                              "explanation": example.explanation}
    if example.options:
        record["options"] = list(example.options)
    if example.source:
        record["source"] = example.source
    metadata = {k: v for k, v in example.metadata.items() if _is_json(v)}
    if metadata:
        record["metadata"] = metadata
    return record


def write_annotated(path: PathLike, examples: Iterable[Example]) -> None:
    """Writes examples as annotated-explanation JSONL, atomically (a temporary file renamed into place)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(to_record(example), ensure_ascii=False) for example in examples]
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=path.name, suffix=".tmp",
                                         delete=False)
    with handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(handle.name, path)


class AnnotatedSource:
    """A random-access source (`len`, `[i]`) over the usable lines of an annotated file, read once."""

    def __init__(self, path: PathLike, *, on_bad_line: str = "raise"):
        self.file = read_annotated(path, on_bad_line=on_bad_line)

    def __len__(self) -> int:
        return len(self.file.examples)

    def __getitem__(self, index: int) -> Example:
        return self.file.examples[int(index)]


def _json_name(kind: type) -> str:
    return {str: "string", list: "list", dict: "object", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(kind, kind.__name__)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
