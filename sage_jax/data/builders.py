"""tfds builders for GSM8K, AQUA-RAT and LogiQA 1.0 / 2.0 from the official files in a `manual_dir`.

They write array_record files and need no TensorFlow (checked: tensorflow-datasets 4.9.10 with no TensorFlow
installed builds and reads them); read them back with `tfds.data_source(name, split=.., data_dir=..)` or
`PreparedSource`. Names carry a `sage_` prefix so they never collide with tfds' own catalogue.

    prepare("sage_gsm8k", manual_dir, data_dir, max_length=256)  # -> PrepareReport

Every record becomes the `Example` schema (`sage_jax.data.formats` parses it). Bad records are skipped and listed
(file, line, reason); a file whose bad fraction exceeds `max_bad_fraction` fails the build with that list.
Examples whose encoding is longer than `max_length` tokens are dropped and counted, never truncated.
Splits are named as the sources name them (GSM8K train/test; AQUA-RAT train/dev/test; LogiQA 1.0
train/eval/test; LogiQA 2.0 train/dev/test); a split whose file is absent is not built.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from sage_jax.data.formats import ReadReport, Skipped, read_file
from sage_jax.data.schema import Example, encode_example
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.layout import Span


class BadInputError(ValueError):
    """A source file with too many malformed records; the message lists them (file, line, reason)."""


@dataclasses.dataclass
class FileReport:
    """What preparing one split file did."""

    split: str
    file: str
    records: int
    kept: int
    skipped: list[Skipped]
    too_long: list[int]

    @property
    def bad_fraction(self) -> float:
        return len(self.skipped) / self.records if self.records else 0.0


@dataclasses.dataclass
class PrepareReport:
    """The report of one build: per split file, counts and every skipped record."""

    builder: str
    files: list[FileReport]

    def __str__(self) -> str:
        lines = [f"{self.builder}:"]
        for f in self.files:
            lines.append(f"  {f.split}: {f.records} records in {f.file}: kept {f.kept}, skipped {len(f.skipped)} "
                         f"malformed ({f.bad_fraction:.1%}), dropped {len(f.too_long)} longer than the context")
            lines.extend(f"    skipped {s}" for s in f.skipped)
            if f.too_long:
                lines.append(f"    too long at lines {f.too_long[:20]}" + (" ..." if len(f.too_long) > 20 else ""))
        return "\n".join(lines)


def _features() -> tfds.features.FeaturesDict:
    text = tfds.features.Text()
    ints = tfds.features.Sequence(np.int32)
    return tfds.features.FeaturesDict({
        "question": text, "options": tfds.features.Sequence(text), "steps": tfds.features.Sequence(text),
        "answer": text, "explanation": text, "has_explanation": np.bool_, "has_dependencies": np.bool_,
        "dep_step": ints, "dep_part": ints, "dep_start": ints, "dep_end": ints,
        "source": text, "metadata": text, "line": np.int32})


def example_to_record(example: Example, line: int) -> dict[str, Any]:
    """An `Example` as a flat tfds record (dependencies as four aligned int arrays)."""
    spans = [(k, s) for k, step in enumerate(example.dependencies or ()) for s in step]
    return {"question": example.question, "options": list(example.options), "steps": list(example.steps),
            "answer": example.answer, "explanation": example.explanation or "",
            "has_explanation": example.explanation is not None,
            "has_dependencies": example.dependencies is not None,
            "dep_step": [k for k, _ in spans], "dep_part": [s.part for _, s in spans],
            "dep_start": [s.start for _, s in spans], "dep_end": [s.end for _, s in spans],
            "source": example.source, "metadata": json.dumps(dict(example.metadata)), "line": line}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_to_example(record: dict[str, Any]) -> Example:
    """Inverse of `example_to_record` (tfds returns text as bytes)."""
    steps = tuple(_text(s) for s in record["steps"])
    dependencies = None
    if bool(record["has_dependencies"]):
        per_step: list[list[Span]] = [[] for _ in steps]
        for k, part, start, end in zip(record["dep_step"], record["dep_part"], record["dep_start"],
                                       record["dep_end"]):
            per_step[int(k)].append(Span(int(part), int(start), int(end)))
        dependencies = tuple(tuple(spans) for spans in per_step)
    return Example(question=_text(record["question"]), steps=steps, answer=_text(record["answer"]),
                   options=tuple(_text(o) for o in record["options"]),
                   explanation=_text(record["explanation"]) if bool(record["has_explanation"]) else None,
                   dependencies=dependencies, source=_text(record["source"]),
                   metadata={**json.loads(_text(record["metadata"])), "line": int(record["line"])})


class _SageBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared logic: read each split file, enforce the bad fraction, drop over-long examples, write records."""

    VERSION = tfds.core.Version("1.0.0")
    FORMAT = ""
    SPLIT_FILES: dict[str, str] = {}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. tfds 4.9.10 otherwise probes `importlib_resources` (a zipapp helper it does not install)."""
        return epath.Path(__file__)

    def __init__(self, *, max_bad_fraction: float = 0.01, max_length: Optional[int] = None,
                 vocab_size: int = 512, **kwargs):
        """Builder settings beyond tfds' own.

        Args:
          max_bad_fraction: the largest tolerated fraction of malformed records per file.
          max_length: drop examples longer than this many tokens; None keeps all.
          vocab_size: the shipped tokenizer that measures length.
          **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (`data_dir`, ...).
        """
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self.max_bad_fraction = max_bad_fraction
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.report = PrepareReport(builder=self.name, files=[])

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=_features())

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual = pathlib.Path(dl_manager.manual_dir)
        present = {split: manual / name for split, name in self.SPLIT_FILES.items() if (manual / name).exists()}
        if not present:
            raise FileNotFoundError(f"{self.name}: none of {sorted(self.SPLIT_FILES.values())} in {manual}")
        tokenizer = Tokenizer.load(self.vocab_size) if self.max_length is not None else None
        self.report = PrepareReport(builder=self.name, files=[])
        generators = {}
        for split, path in present.items():
            read = read_file(path, self.FORMAT)
            kept, too_long = self._fit(read, tokenizer)
            self.report.files.append(FileReport(split=split, file=str(path), records=read.records, kept=len(kept),
                                                skipped=read.skipped, too_long=too_long))
            if read.bad_fraction > self.max_bad_fraction:
                raise BadInputError(f"{path}: {len(read.skipped)} of {read.records} records malformed "
                                    f"({read.bad_fraction:.1%} > max_bad_fraction={self.max_bad_fraction:.1%}):\n"
                                    + "\n".join(str(s) for s in read.skipped))
            if not kept:  # tfds would say only "No examples were yielded", naming no file
                raise BadInputError(f"{path}: no examples to write ({read.records} records, {len(read.skipped)} "
                                    f"malformed, {len(too_long)} longer than the context)")
            generators[split] = self._generate_examples(kept)
        return generators

    def _fit(self, read: ReadReport, tokenizer: Optional[Tokenizer]) -> tuple[list[tuple[int, Example]], list[int]]:
        if tokenizer is None:
            return read.examples, []
        kept, too_long = [], []
        for line, example in read.examples:
            if len(encode_example(example, tokenizer)) > self.max_length:
                too_long.append(line)
            else:
                kept.append((line, example))
        return kept, too_long

    def _generate_examples(self, examples: list[tuple[int, Example]]) -> Iterator[tuple[int, dict[str, Any]]]:
        for line, example in examples:
            yield line, example_to_record(example, line)


class SageGsm8k(_SageBuilder):
    """GSM8K (grade-school math) with rationale steps and calculator annotations as metadata."""

    name = "sage_gsm8k"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the official train.jsonl and test.jsonl (from openai/grade-school-math, "
                                    "grade_school_math/data) in manual_dir.")
    FORMAT = "gsm8k"
    SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}


class SageAquaRat(_SageBuilder):
    """AQUA-RAT: algebra word problems with five options and a rationale."""

    name = "sage_aqua_rat"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the official files train.json, dev.json, test.json (deepmind/AQuA) "
                                    "in manual_dir.")
    FORMAT = "aqua_rat"
    SPLIT_FILES = {"train": "train.json", "dev": "dev.json", "test": "test.json"}


class SageLogiqa(_SageBuilder):
    """LogiQA 1.0 (English text release): four-option logical reading comprehension."""

    name = "sage_logiqa"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the official files Train.txt, Eval.txt, Test.txt (LogiQA-dataset, English) "
                                    "in manual_dir.")
    FORMAT = "logiqa"
    SPLIT_FILES = {"train": "Train.txt", "eval": "Eval.txt", "test": "Test.txt"}


class SageLogiqa2(_SageBuilder):
    """LogiQA 2.0: JSON lines with a 0-based answer index."""

    name = "sage_logiqa2"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the official train.txt, dev.txt and test.txt (from LogiQA2.0, "
                                    "logiqa/DATA/LOGIQA) in manual_dir.")
    FORMAT = "logiqa2"
    SPLIT_FILES = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}


BUILDERS = {cls.name: cls for cls in (SageGsm8k, SageAquaRat, SageLogiqa, SageLogiqa2)}


def prepare(name: str, manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *,
            max_bad_fraction: float = 0.01, max_length: Optional[int] = None, vocab_size: int = 512,
            overwrite: bool = False) -> PrepareReport:
    """Build dataset `name` (a key of `BUILDERS`) from `manual_dir` into `data_dir`; return its report.

    An already prepared dataset is kept (its report then lists no files) unless `overwrite`.

    Raises:
      BadInputError: a file has more malformed records than `max_bad_fraction` allows.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    builder = BUILDERS[name](data_dir=str(data_dir), max_bad_fraction=max_bad_fraction, max_length=max_length,
                             vocab_size=vocab_size)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir), download_mode=mode))
    return builder.report


class PreparedSource:
    """A split of a prepared dataset as a random-access source of `Example`s (via `tfds.data_source`)."""

    def __init__(self, name: str, split: str, data_dir: str | pathlib.Path):
        if name not in BUILDERS:
            raise ValueError(f"unknown prepared dataset {name!r}; choose one of {sorted(BUILDERS)}")
        self._source = tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Example:
        return record_to_example(self._source[int(index)])
