"""The shipped tokenizer: byte-level BPE (Hugging Face `tokenizers`) with digits split one per token.

Why this design:
- Byte level: every string that UTF-8 can encode maps to tokens and back unchanged (the 256 byte symbols are in
  the vocabulary), so there is no unknown token and no normaliser to lose characters.
- Digits one per token (a `Digits(individual_digits=True)` pre-tokenizer runs before BPE, so no merge can join a
  digit to anything): a number is its digit string, which is what makes carrying in arithmetic learnable.
- Special ids 0-6 are exactly those of `sage_jax.special`. Text is never parsed for special tokens
  (`encode_special_tokens`): the literal text `"<step>"` in a question is six ordinary characters, so data can
  never inject structure; structure comes only from `encode_example`.

Sequence layout (from `sage_jax.special`):

    <bos> <question> q ... <step> s1 ... <step> s2 ... <answer> a ... <eos> [<explain> e ... <eos>]

Every token also gets a `Segment` id (prompt / rationale / answer / explanation) for loss masks and a step index
(the rationale step it belongs to; a `<step>` marker belongs to the step it opens; -1 outside the rationale).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional, Sequence

import numpy as np
import tokenizers

from sage_jax import special
from sage_jax.data.schema import QUESTION_PART, Example, Segment, Span, render_prompt

ASSETS = pathlib.Path(__file__).parent / "assets"


class TokenizerError(ValueError):
    """Text or ids the tokenizer cannot handle; the message says what and where."""


def asset_path(vocab_size: int) -> pathlib.Path:
    """Where the shipped tokenizer of `vocab_size` lives."""
    return ASSETS / f"bpe_{vocab_size}.json"


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """One example as token ids with per-token structure.

    Attributes:
      tokens: `[T]` int32 ids in the `sage_jax.special` layout.
      segments: `[T]` int8 `Segment` ids.
      step_index: `[T]` int32 rationale step of each token, -1 outside the rationale.
      step_deps: `[S, T]` bool, `step_deps[k, t]` when step `k` depends on token `t` (a question or
        earlier-step token); None when the source declares no dependencies.
    """

    tokens: np.ndarray
    segments: np.ndarray
    step_index: np.ndarray
    step_deps: Optional[np.ndarray]

    @property
    def num_steps(self) -> int:
        return int(self.step_index.max(initial=-1)) + 1

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def dependencies_of(self, step: int) -> np.ndarray:
        """Sorted token indices that rationale step `step` depends on (`[n]` int64)."""
        if self.step_deps is None:
            raise ValueError("this example declares no step dependencies")
        return np.flatnonzero(self.step_deps[step])


class Tokenizer:
    """The SAGE tokenizer. Load the shipped one with `Tokenizer.load(vocab_size)`."""

    def __init__(self, backend: tokenizers.Tokenizer):
        for token_id, name in special.NAMES.items():
            if backend.token_to_id(name) != token_id:
                raise TokenizerError(f"tokenizer maps {name!r} to {backend.token_to_id(name)}, but "
                                     f"sage_jax.special fixes it at {token_id}")
        backend.encode_special_tokens = True
        self._backend = backend
        self.vocab_size = backend.get_vocab_size()

    @classmethod
    def load(cls, vocab_size: int = 512) -> "Tokenizer":
        """The tokenizer shipped under `sage_jax/data/assets/` for `vocab_size` (512 for the `tiny` preset)."""
        path = asset_path(vocab_size)
        if not path.exists():
            shipped = sorted(p.name for p in ASSETS.glob("bpe_*.json"))
            raise TokenizerError(f"no shipped tokenizer of vocab_size={vocab_size} at {path}; shipped: {shipped}. "
                                 "Train one with `python -m sage_jax.data.train_tokenizer`.")
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> "Tokenizer":
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def to_str(self) -> str:
        """The tokenizer as Hugging Face JSON."""
        return self._backend.to_str()

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` and, per id, the `[start, end)` characters of `text` it covers.

        Raises:
          TokenizerError: `text` is not a str, or holds a character UTF-8 cannot encode (a lone surrogate).
        """
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise TokenizerError(f"cannot encode {text[err.start:err.end]!r} at character {err.start}: "
                                 f"{err.reason} (not representable in UTF-8)") from None
        encoding = self._backend.encode(text, add_special_tokens=False)
        return list(encoding.ids), list(encoding.offsets)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` (no special tokens). `decode(encode(text)) == text` for every UTF-8 encodable str."""
        return self.encode_with_offsets(text)[0]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ordinary ids; a special id is an error (use `render` to show structure)."""
        ids = [int(i) for i in ids]
        for position, token in enumerate(ids):
            if not 0 <= token < self.vocab_size:
                raise TokenizerError(f"id {token} at position {position} is outside the vocabulary "
                                     f"[0, {self.vocab_size})")
            if token < special.NUM_SPECIAL:
                raise TokenizerError(f"id {token} at position {position} is the special token "
                                     f"{special.NAMES[token]}; decode takes text ids only (see render)")
        return self._backend.decode(ids, skip_special_tokens=False)

    def render(self, ids: Sequence[int]) -> str:
        """Readable text of any ids: text runs decoded, special ids shown by name (padding dropped)."""
        pieces, run = [], []
        for token in (int(i) for i in ids):
            if token < special.NUM_SPECIAL:
                if run:
                    pieces.append(self.decode(run))
                    run = []
                if token != special.PAD:
                    pieces.append(special.NAMES[token])
            else:
                run.append(token)
        if run:
            pieces.append(self.decode(run))
        return "".join(pieces)

    def encode_example(self, question: str, steps: Sequence[str], answer: str, explanation: Optional[str] = None,
                       *, options: Sequence[str] = (),
                       dependencies: Optional[Sequence[Sequence[Span]]] = None) -> EncodedExample:
        """Encode one example in the `sage_jax.special` layout, with segments, step indices and dependencies.

        Args:
          question: the question text; options, if any, are rendered after it (`render_prompt`).
          steps: rationale steps; each is preceded by `<step>`.
          answer: the answer text, preceded by `<answer>` and followed by `<eos>`.
          explanation: optional; appended as `<explain> e ... <eos>`.
          options: multiple-choice option texts without letters.
          dependencies: per step, the `Span`s (question or earlier-step characters) it depends on; a token
            is a dependency when its characters overlap a span.

        Returns:
          An `EncodedExample`; `step_deps` is `[len(steps), T]` when `dependencies` is given, else None.
        """
        tokens: list[int] = [special.BOS, special.QUESTION]
        segments: list[int] = [Segment.PROMPT, Segment.PROMPT]
        step_index: list[int] = [-1, -1]
        part_tokens: dict[int, tuple[int, list[tuple[int, int]]]] = {}

        def add(ids: list[int], segment: Segment, step: int) -> None:
            tokens.extend(ids)
            segments.extend([segment] * len(ids))
            step_index.extend([step] * len(ids))

        ids, offsets = self.encode_with_offsets(render_prompt(question, tuple(options)))
        part_tokens[QUESTION_PART] = (len(tokens), offsets)
        add(ids, Segment.PROMPT, -1)
        for k, step in enumerate(steps):
            add([special.STEP], Segment.RATIONALE, k)
            ids, offsets = self.encode_with_offsets(step)
            part_tokens[k] = (len(tokens), offsets)
            add(ids, Segment.RATIONALE, k)
        add([special.ANSWER] + self.encode(answer) + [special.EOS], Segment.ANSWER, -1)
        if explanation is not None:
            add([special.EXPLAIN] + self.encode(explanation) + [special.EOS], Segment.EXPLANATION, -1)

        step_deps = None
        if dependencies is not None:
            if len(dependencies) != len(steps):
                raise TokenizerError(f"dependencies has {len(dependencies)} entries for {len(steps)} steps")
            step_deps = np.zeros((len(steps), len(tokens)), dtype=bool)
            for k, spans in enumerate(dependencies):
                for span in spans:
                    if not QUESTION_PART <= span.part < k:
                        raise TokenizerError(f"dependencies[{k}] points at part {span.part}; a step may depend "
                                             "only on the question (-1) or an earlier step")
                    first, offsets = part_tokens[span.part]
                    for i, (start, end) in enumerate(offsets):
                        if start < span.end and end > span.start:
                            step_deps[k, first + i] = True
        return EncodedExample(tokens=np.asarray(tokens, np.int32), segments=np.asarray(segments, np.int8),
                              step_index=np.asarray(step_index, np.int32), step_deps=step_deps)

    def encode_item(self, example: Example) -> EncodedExample:
        """`encode_example` applied to the fields of an `Example`."""
        return self.encode_example(example.question, example.steps, example.answer, example.explanation,
                                   options=example.options, dependencies=example.dependencies)
