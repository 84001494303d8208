"""Parsers of the official GSM8K, AQUA-RAT and LogiQA (1.0 and 2.0) files, with a report of what was skipped.

Formats (the files are read, never changed):
- GSM8K (`train.jsonl`, `test.jsonl`): JSON lines `{"question", "answer"}`. The answer's lines before `#### `
  are the rationale steps; calculator annotations `<<48/2=24>>` are removed from the text and kept per step in
  `metadata["calculations"]`; the final answer follows `#### ` with thousands separators removed.
- AQUA-RAT (`train.json`, `dev.json`, `test.json`, JSON lines despite the name): `{"question", "options":
  ["A)..", .., "E).."], "rationale", "correct"}`; options lose their `"A)"` prefix, the rationale's non-empty
  lines are the steps, the answer is the letter.
- LogiQA 1.0 (`Train.txt`, `Eval.txt`, `Test.txt`): blocks of a blank line, a lower-case answer letter, the
  context, the question and four options, one per line; options are taken by position (a leading `"A."` is
  removed). The question field is `context + "\\n" + question`.
- LogiQA 2.0 (`train.txt`, `dev.txt`, `test.txt`): JSON lines `{"text", "question", "options", "answer"}` with
  a 0-based answer index; mapped like LogiQA 1.0.

A malformed record becomes a `Skipped(file, line, reason)` entry of the `ReadReport`; blank lines between
records are not records. Files are decoded line by line, so one line of invalid UTF-8, JSON nested too deeply
for Python's parser, or a JSON-escaped lone surrogate (`"\\ud800"`, valid JSON but not text any tokenizer can
encode) spoils its own record only.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Callable, Iterator

from sage_jax.data.schema import Example
from sage_jax.layout import LETTERS

_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)")
_CALCULATION = re.compile(r"<<([^<>]*)>>")


class BadRecord(ValueError):
    """A record that does not follow its format; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A skipped record: where it starts and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclasses.dataclass
class ReadReport:
    """What reading one file gave: record count, parsed examples by line, skipped records."""

    file: str
    records: int = 0
    examples: list[tuple[int, Example]] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)

    @property
    def bad_fraction(self) -> float:
        return len(self.skipped) / self.records if self.records else 0.0


def _field(record: Any, name: str, kind: type) -> Any:
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if name not in record:
        raise BadRecord(f"missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRecord(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _text_lines(path: pathlib.Path) -> Iterator[tuple[int, str | BadRecord]]:
    """`(line number, text)` of every line of `path`, or `(line number, BadRecord)` for a line that is not UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, BadRecord(f"invalid UTF-8 at byte {err.start} of the line ({raw[err.start:err.end]!r})")


def _check_text(example: Example) -> Example:
    """Rejects strings that cannot be encoded, such as the lone surrogates JSON escapes can spell."""
    fields = {"question": example.question, "answer": example.answer,
              **{f"step {i + 1}": step for i, step in enumerate(example.steps)},
              **{f"option {i + 1}": option for i, option in enumerate(example.options)}}
    for name, text in fields.items():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise BadRecord(f"{name} holds a lone surrogate {text[err.start]!r} at character {err.start}: "
                            "not Unicode text") from None
    return example


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def parse_gsm8k(record: Any) -> Example:
    """One GSM8K record (see the module docstring)."""
    question = _field(record, "question", str)
    lines = _lines(_field(record, "answer", str))
    if not lines or not lines[-1].startswith("####"):
        raise BadRecord("the answer has no final '#### <number>' line")
    final = lines[-1][4:].strip().replace(",", "")
    if not _NUMBER.fullmatch(final):
        raise BadRecord(f"unparseable '####' line {lines[-1]!r}: not a number")
    steps = lines[:-1]
    calculations = [_CALCULATION.findall(step) for step in steps]
    steps = tuple(re.sub(r"\s+", " ", _CALCULATION.sub("", step)).strip() for step in steps)
    return Example(question=question.strip(), steps=steps, answer=final, source="gsm8k",
                   metadata={"calculations": calculations})


def parse_aqua_rat(record: Any) -> Example:
    """One AQUA-RAT record (see the module docstring)."""
    question = _field(record, "question", str)
    options = _field(record, "options", list)
    if len(options) != 5:
        raise BadRecord(f"expected 5 options (A to E), found {len(options)}")
    texts = []
    for i, option in enumerate(options):
        prefix = f"{LETTERS[i]})"
        if not isinstance(option, str) or not option.lstrip().startswith(prefix):
            raise BadRecord(f"option {i + 1} {option!r} does not start with {prefix!r}")
        texts.append(option.lstrip()[len(prefix):].strip())
    correct = _field(record, "correct", str).strip()
    if len(correct) != 1 or correct not in LETTERS[:5]:
        raise BadRecord(f"answer letter {correct!r} is outside A-E")
    rationale = _field(record, "rationale", str)
    return Example(question=question.strip(), steps=_lines(rationale), answer=correct, options=tuple(texts),
                   source="aqua_rat")


def _logiqa_example(context: str, question: str, options: list[str], answer: str, source: str) -> Example:
    for name, text in (("context", context), ("question", question)):
        if not text.strip():
            raise BadRecord(f"the {name} is empty")
    return Example(question=f"{context.strip()}\n{question.strip()}", steps=(), answer=answer,
                   options=tuple(o.strip() for o in options), source=source)


def parse_logiqa2(record: Any) -> Example:
    """One LogiQA 2.0 record (see the module docstring)."""
    context = _field(record, "text", str)
    question = _field(record, "question", str)
    options = _field(record, "options", list)
    if len(options) != 4 or not all(isinstance(o, str) for o in options):
        raise BadRecord(f"expected 4 option strings, found {len(options)} options")
    answer = _field(record, "answer", int)
    if not 0 <= answer < 4:
        raise BadRecord(f"answer index {answer} is outside 0-3")
    return _logiqa_example(context, question, options, LETTERS[answer], "logiqa2")


def _strip_option_letter(option: str, index: int) -> str:
    match = re.match(rf"\s*{LETTERS[index]}\s*[.)．]\s*", option)
    return option[match.end():] if match else option


def parse_logiqa_block(lines: list[str]) -> Example:
    """One LogiQA 1.0 block without its blank line: answer letter, context, question, four options."""
    if len(lines) != 7:
        raise BadRecord(f"expected 7 lines (answer letter, context, question, 4 options), found {len(lines)}")
    letter = lines[0].strip()
    if len(letter) != 1 or letter.upper() not in LETTERS[:4]:
        raise BadRecord(f"answer letter {letter!r} is outside a-d")
    options = [_strip_option_letter(line, i) for i, line in enumerate(lines[3:])]
    return _logiqa_example(lines[1], lines[2], options, letter.upper(), "logiqa")


def _read_jsonl(path: pathlib.Path, parse: Callable[[Any], Example]) -> ReadReport:
    report = ReadReport(file=str(path))
    for number, line in _text_lines(path):
        if isinstance(line, str) and not line.strip():
            continue
        report.records += 1
        try:
            if isinstance(line, BadRecord):
                raise line
            report.examples.append((number, _check_text(parse(json.loads(line)))))
        except json.JSONDecodeError as err:
            report.skipped.append(Skipped(str(path), number, f"broken JSON: {err.msg} at column {err.colno}"))
        except RecursionError:
            report.skipped.append(Skipped(str(path), number, "JSON nested too deeply to parse"))
        except BadRecord as err:
            report.skipped.append(Skipped(str(path), number, str(err)))
    return report


def _blocks(path: pathlib.Path) -> Iterator[tuple[int, list[str | BadRecord]]]:
    block, start = [], 0
    for number, line in _text_lines(path):
        if isinstance(line, BadRecord):
            line = BadRecord(f"line {number}: {line}")
        else:
            line = line.rstrip("\r\n")
        if isinstance(line, BadRecord) or line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def _read_logiqa(path: pathlib.Path) -> ReadReport:
    report = ReadReport(file=str(path))
    for start, block in _blocks(path):
        report.records += 1
        try:
            for line in block:
                if isinstance(line, BadRecord):
                    raise line
            report.examples.append((start, _check_text(parse_logiqa_block(block))))
        except BadRecord as err:
            report.skipped.append(Skipped(str(path), start, str(err)))
    return report


READERS: dict[str, Callable[[pathlib.Path], ReadReport]] = {
    "gsm8k": lambda path: _read_jsonl(path, parse_gsm8k),
    "aqua_rat": lambda path: _read_jsonl(path, parse_aqua_rat),
    "logiqa": _read_logiqa,
    "logiqa2": lambda path: _read_jsonl(path, parse_logiqa2),
}
"""Format name -> reader of one file."""


def read_file(path: str | pathlib.Path, fmt: str) -> ReadReport:
    """Parse every record of `path` in format `fmt` (a key of `READERS`)."""
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(READERS)}")
    return READERS[fmt](pathlib.Path(path))
