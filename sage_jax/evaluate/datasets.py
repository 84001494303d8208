"""Answer accuracy on GSM8K, AQUA-RAT and LogiQA data, each with its source's scorer.

Data comes either from the official files (`"gsm8k:/path/test.jsonl"`, parsed by `sage_jax.data.formats`)
or from a dataset prepared by `experiments.data` (`"prepared/sage_gsm8k/test"` with a `data_dir`). Nothing
is downloaded.

Scorers (by `Example.source`):
- GSM8K (`numeric_match`): the last number in the predicted answer (thousands separators and a leading `$`
  removed) equals the reference number (GSM8K's own convention: the number after `####`);
- AQUA-RAT, LogiQA 1.0 and 2.0 (`choice_match`): the first option letter in the predicted answer (`"C"`,
  `"C)"`, `"(C)"`, `"c"`) equals the reference letter;
- procedural data: exact match (`accuracy.exact_match`).

A problem whose prompt plus the generation budget does not fit `cfg.max_seq_len` is not generated for; it
counts in `too_long` and not in the accuracy (a `tiny` model's 256 tokens hold few GSM8K questions).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence

from sage_jax.config import SageConfig
from sage_jax.data.builders import PreparedSource
from sage_jax.data.formats import READERS, read_file
from sage_jax.data.schema import Example
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate.accuracy import accuracy_by, exact_match, predict, prompt_ids
from sage_jax.layout import LETTERS

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_LETTER = re.compile(r"(?<![A-Za-z])([A-Za-z])(?![A-Za-z])")


def numeric_match(example: Example, answer: Optional[str]) -> float:
    """1.0 when the last number of `answer` equals `example.answer` as a number (GSM8K's scorer)."""
    if answer is None:
        return 0.0
    numbers = _NUMBER.findall(answer.replace(",", "").replace("$", ""))
    if not numbers:
        return 0.0
    return float(abs(float(numbers[-1]) - float(example.answer.replace(",", ""))) < 1e-6)


def choice_match(example: Example, answer: Optional[str]) -> float:
    """1.0 when the first option letter of `answer` is `example.answer` (multiple-choice scorer)."""
    if answer is None:
        return 0.0
    letters = LETTERS[:len(example.options)] if example.options else LETTERS
    for match in _LETTER.finditer(answer):
        if match.group(1).upper() in letters:
            return float(match.group(1).upper() == example.answer)
    return 0.0


SCORERS: dict[str, Callable[[Example, Optional[str]], float]] = {
    "gsm8k": numeric_match, "aqua_rat": choice_match, "logiqa": choice_match, "logiqa2": choice_match}
"""`Example.source` -> scorer; any other source is scored by exact match."""


def scorer_for(example: Example, answer: Optional[str]) -> float:
    """The score of `answer` with the scorer of `example.source` (exact match for sources not in `SCORERS`)."""
    return SCORERS.get(example.source, exact_match)(example, answer)


def load_dataset(spec: str, *, data_dir: Optional[str] = None, limit: Optional[int] = None) -> list[Example]:
    """The first `limit` examples of `spec`: `"<format>:<file>"` (format a key of `formats.READERS`) or
    `"prepared/<builder>/<split>"` (from `data_dir`).

    Raises:
      ValueError: an unknown format or a malformed spec, naming the spec.
    """
    if spec.startswith("prepared/"):
        _, builder, split = (spec.split("/") + ["", ""])[:3]
        if not builder or not split or data_dir is None:
            raise ValueError(f"dataset {spec!r}: expected prepared/<builder>/<split> and a data_dir")
        source = PreparedSource(builder, split, data_dir)
        return [source[i] for i in range(len(source) if limit is None else min(limit, len(source)))]
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in READERS:
        raise ValueError(f"dataset {spec!r}: expected <format>:<file> with a format in {sorted(READERS)}, or "
                         "prepared/<builder>/<split>")
    examples = [example for _, example in read_file(path, fmt).examples]
    return examples if limit is None else examples[:limit]


def dataset_accuracy(params: Any, cfg: SageConfig, tokenizer: Tokenizer, examples: Sequence[Example], *,
                     max_new_tokens: int, batch_size: int = 32) -> dict[str, Any]:
    """`{"n", "accuracy", "answered", "too_long", "scorer"}` of greedy answers scored by `scorer_for`.

    `accuracy` and `answered` are None when no problem fits the context.
    """
    fits = [ex for ex in examples if len(prompt_ids(ex, tokenizer)) + max_new_tokens <= cfg.max_seq_len]
    sources = sorted({ex.source for ex in examples})
    scorer = ", ".join(SCORERS[s].__name__ if s in SCORERS else "exact_match" for s in sources)
    row: dict[str, Any] = {"n": len(fits), "too_long": len(examples) - len(fits), "scorer": scorer,
                           "accuracy": None, "answered": None}
    if fits:
        predictions = predict(params, cfg, tokenizer, fits, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              scorer=scorer_for)
        row.update({k: v for k, v in accuracy_by(predictions, key=lambda ex: "all")["all"].items() if k != "n"})
    return row


__all__ = ["SCORERS", "choice_match", "dataset_accuracy", "load_dataset", "numeric_match", "scorer_for"]
