"""How a problem becomes tokens: the one vocabulary of sequences, as `sage_jax.trace` is of activations.

Every package that reads or writes a laid-out problem imports this module downward: `data` encodes examples,
`interpret` finds steps and answers, `train` masks losses by segment, `evaluate` parses what a model wrote,
`viz` labels tokens. A sequence in another layout (a pretrained model's chat template) is one new `Layout`
class; nothing else has to learn it.

The SAGE layout (`SAGE`, the layout the project's own models are trained on):

    <bos> <question> q ... q <step> s1 ... <step> s2 ... <answer> a ... <eos> [<explain> e ... <eos>]

Conventions shared by every layout:

- Segments. Each token has a `Segment` id: what a loss mask selects. A token belongs to the segment it is
  predicted as part of: `<step>` markers to the rationale, `<answer>` and the answer's `<eos>` to the answer,
  `<explain>` and the explanation's `<eos>` to the explanation.
- Steps. Step `i` owns the tokens of its text, markers excluded: `(start, end)` token spans, `end` exclusive.
  `Steps` is the pytree form (`[n, T]` masks) every analysis takes; a batch adds a leading axis.
  `EncodedExample.step_index [T]` tags each step's marker *and* tokens with `i` (the marker opens the step),
  `-1` elsewhere: `steps_from_index` turns that into `Steps` under `jit`.
- Spans of text. A `Span` is characters `[start, end)` of the question (`part == QUESTION_PART`) or of step
  `part`; `token_spans` maps character spans onto token spans through any tokenizer's offsets, so a free-text
  rationale split into lines (`line_spans`) becomes steps whatever the tokenizer.
- The answer. A chain's answer is the text after its first answer marker up to the next special token
  (`Layout.answer_span`); a chain without the marker has no answer.
- The explanation grammar. `render_explanation` and `parse_explanation` are the one written form of "step i
  rests on these earlier facts": `Step 2 depends on '4' from step 1, '9' from the question.`
"""

from __future__ import annotations

import dataclasses
import enum
import re
import string
from typing import Callable, NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PAD = 0
BOS = 1
EOS = 2
STEP = 3
ANSWER = 4
EXPLAIN = 5
QUESTION = 6

NAMES = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>", STEP: "<step>", ANSWER: "<answer>", EXPLAIN: "<explain>",
         QUESTION: "<question>"}
"""The SAGE vocabulary's special ids (fixed, so `data`, which knows no model, and `config` agree)."""
NUM_SPECIAL = len(NAMES)

QUESTION_PART = -1
"""`Span.part` of a span in the question; a span in rationale step `k` has `part == k`."""

LETTERS = string.ascii_uppercase
"""Multiple-choice option letters, in order."""


class Segment(enum.IntEnum):
    """Segment id of each token of an encoded sequence: what a loss mask selects.

    PROMPT covers the question with its options and the markers before it; RATIONALE every step marker and
    step token; ANSWER the answer marker, the answer and its end token; EXPLANATION the explanation marker,
    the explanation and its end token. PAD is padding.
    """

    PAD = 0
    PROMPT = 1
    RATIONALE = 2
    ANSWER = 3
    EXPLANATION = 4


class LayoutError(ValueError):
    """A problem or a sequence that does not fit the layout; the message names the piece."""


class Codec(Protocol):
    """What a layout needs of a tokenizer: text to ids and back (ids of ordinary text only)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class OffsetCodec(Codec, Protocol):
    """A `Codec` that also says which characters each id covers (needed to place `Span`s on tokens)."""

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...


@dataclasses.dataclass(frozen=True)
class Span:
    """Characters `[start, end)` of the question (`part == QUESTION_PART`) or of rationale step `part`."""

    part: int
    start: int
    end: int


class Claim(NamedTuple):
    """One stated dependency: the quoted `text` and its `part` (`QUESTION_PART`, or the 0-based step)."""

    text: str
    part: int


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """One problem as token ids with per-token structure.

    Attributes:
      tokens: `[T]` int32 ids.
      segments: `[T]` int8 `Segment` ids.
      step_index: `[T]` int32 rationale step of each token (a step's marker included), -1 outside the rationale.
      step_deps: `[S, T]` bool, `step_deps[k, t]` when step `k` depends on token `t` (a question or
        earlier-step token); None when the problem declares no dependencies.
      step_spans: `(start, end)` token span each step owns (its marker excluded), one per step.
      answer_mask: `[T]` bool, the answer's text tokens (markers and end token excluded).
    """

    tokens: np.ndarray
    segments: np.ndarray
    step_index: np.ndarray
    step_deps: Optional[np.ndarray]
    step_spans: tuple[tuple[int, int], ...]
    answer_mask: np.ndarray

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


@dataclasses.dataclass(frozen=True)
class ByteCodec:
    """One token per UTF-8 byte, ids `offset .. offset + 255` (after the special ids by default)."""

    offset: int = NUM_SPECIAL

    @property
    def vocab_size(self) -> int:
        return self.offset + 256

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, per id, the characters of `text` it belongs to (every byte of a character covers it)."""
        ids, offsets = [], []
        for i, char in enumerate(text):
            data = char.encode("utf-8")
            ids += [b + self.offset for b in data]
            offsets += [(i, i + 1)] * len(data)
        return ids, offsets

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < self.offset + 256)
        return data.decode("utf-8", errors="replace")


class Layout(Protocol):
    """How one family of sequences lays a problem out (module docstring). `SAGE` is the project's own."""

    eos_id: int
    pad_id: int
    """A special id that right-pads a batch of sequences (never text, never attended to by earlier tokens)."""
    rationale_cue: tuple[int, ...]
    """Ids appended to `prompt` to have a model write its chain."""
    explanation_cue: tuple[int, ...]
    """Ids appended to a finished chain to have a model explain it."""

    def encode(self, codec: Codec, question: str, steps: Sequence[str], answer: Optional[str] = None,
               explanation: Optional[str] = None, *, options: Sequence[str] = (),
               dependencies: Optional[Sequence[Sequence[Span]]] = None, strict: bool = False) -> EncodedExample:
        """The problem's tokens, segments, step index, dependencies, step spans and answer mask."""
        ...

    def prompt(self, codec: Codec, question: str, options: Sequence[str] = (), *, strict: bool = False
               ) -> list[int]:
        """The ids a model is given to solve the problem (its chain not yet written); `strict` as in `encode`."""
        ...

    def step_spans(self, tokens: np.ndarray, *, skip_empty: bool = False) -> list[tuple[int, int]]:
        """The token spans of the steps of one laid-out sequence `[T]`."""
        ...

    def answer_span(self, tokens: Sequence[int]) -> Optional[tuple[int, int]]:
        """The token span of the chain's answer, or None without an answer marker."""
        ...

    def is_special(self, tokens):
        """Whether each token is structure (a marker, padding) rather than text: a bool for an int, a bool
        array of the same shape for a numpy or jax array (so it traces under `jit`)."""
        ...

    def token_text(self, codec: Codec, token: int) -> str:
        """One token as readable text (special tokens by name)."""
        ...

    def render(self, codec: Codec, ids: Sequence[int]) -> str:
        """Readable text of any ids (special tokens by name)."""
        ...


@dataclasses.dataclass(frozen=True)
class SageLayout:
    """The SAGE layout (module docstring): special ids 0-6 before every text id."""

    eos_id: int = EOS
    pad_id: int = PAD
    rationale_cue: tuple[int, ...] = (STEP,)
    explanation_cue: tuple[int, ...] = (EXPLAIN,)

    def encode(self, codec: Codec, question: str, steps: Sequence[str], answer: Optional[str] = None,
               explanation: Optional[str] = None, *, options: Sequence[str] = (),
               dependencies: Optional[Sequence[Sequence[Span]]] = None, strict: bool = False) -> EncodedExample:
        """Encodes one problem.

        Args:
          codec: the tokenizer; an `OffsetCodec` when `dependencies` are given.
          question: the question text; options, if any, are rendered after it (`render_prompt`).
          steps: rationale steps; each is preceded by `<step>`.
          answer: the answer text, between `<answer>` and `<eos>`; None ends the chain with `<eos>` directly.
          explanation: optional; appended as `<explain> e ... <eos>`.
          options: multiple-choice option texts without letters.
          dependencies: per step, the `Span`s (question or earlier-step characters) it depends on; a token is a
            dependency when its characters overlap a span.
          strict: also require what an analysis that maps tokens back to text needs: at least one step, no
            empty step, and every piece round-tripping through the codec without special ids.

        Raises:
          LayoutError: a bad dependency, or (with `strict`) a piece that breaks the layout; the message names it.
        """
        tokens: list[int] = [BOS, QUESTION]
        segments: list[int] = [Segment.PROMPT, Segment.PROMPT]
        step_index: list[int] = [-1, -1]
        part_offsets: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        spans: list[tuple[int, int]] = []

        def add(ids: Sequence[int], segment: Segment, step: int) -> None:
            tokens.extend(ids)
            segments.extend([segment] * len(ids))
            step_index.extend([step] * len(ids))

        def piece(text: str, what: str, part: Optional[int] = None, allow_empty: bool = True) -> list[int]:
            if dependencies is not None and part is not None:
                ids, offsets = codec.encode_with_offsets(text)
                part_offsets[part] = (len(tokens), offsets)
            else:
                ids = codec.encode(text)
            ids = [int(i) for i in ids]
            if strict:
                _check_piece(codec, self, ids, text, what, allow_empty)
            return ids

        if strict and not steps:
            raise LayoutError("the rationale is empty: it has no step (no non-blank line)")
        add(piece(render_prompt(question, tuple(options)), "the question", QUESTION_PART), Segment.PROMPT, -1)
        for k, step in enumerate(steps):
            add([STEP], Segment.RATIONALE, k)
            ids = piece(step, f"step {k} ({step!r})", k, allow_empty=False)
            spans.append((len(tokens), len(tokens) + len(ids)))
            add(ids, Segment.RATIONALE, k)
        answer = None if answer is None else piece(answer, "the answer")
        answer_span = (len(tokens) + 1, len(tokens) + 1 + len(answer or ()))
        if answer is not None:
            add([ANSWER] + answer, Segment.ANSWER, -1)
        add([EOS], Segment.ANSWER, -1)
        if explanation is not None:
            add([EXPLAIN] + piece(explanation, "the explanation") + [EOS], Segment.EXPLANATION, -1)
        answer_mask = np.zeros(len(tokens), bool)
        answer_mask[answer_span[0]:answer_span[1]] = True

        step_deps = None
        if dependencies is not None:
            step_deps = _dependency_mask(dependencies, len(steps), len(tokens), part_offsets)
        return EncodedExample(tokens=np.asarray(tokens, np.int32), segments=np.asarray(segments, np.int8),
                              step_index=np.asarray(step_index, np.int32), step_deps=step_deps,
                              step_spans=tuple(spans), answer_mask=answer_mask)

    def prompt(self, codec: Codec, question: str, options: Sequence[str] = (), *, strict: bool = False
               ) -> list[int]:
        """`<bos> <question> q [options]`: what a training sequence starts with."""
        text = render_prompt(question, tuple(options))
        ids = [int(i) for i in codec.encode(text)]
        if strict:
            _check_piece(codec, self, ids, text, "the question", allow_empty=True)
        return [BOS, QUESTION] + ids

    def step_spans(self, tokens: np.ndarray, *, skip_empty: bool = False) -> list[tuple[int, int]]:
        """One span after each `<step>` marker, ending at the next special token.

        Args:
          tokens: `[T]` token ids.
          skip_empty: drop a marker followed directly by a special token instead of raising (for generated
            chains, where an empty step is the model's output rather than a malformed input).

        Raises:
          LayoutError: a `<step>` marker is followed directly by a special token, unless `skip_empty`.
        """
        tokens = np.asarray(tokens)
        spans = []
        for marker in np.flatnonzero(tokens == STEP):
            start = int(marker) + 1
            end = start
            while end < len(tokens) and not self.is_special(int(tokens[end])):
                end += 1
            if end > start:
                spans.append((start, end))
            elif not skip_empty:
                raise LayoutError(f"empty step: the <step> marker at position {marker} is followed directly by "
                                  f"{self._name_at(tokens, end)}")
        return spans

    def answer_span(self, tokens: Sequence[int]) -> Optional[tuple[int, int]]:
        """The tokens after the first `<answer>` up to the next special token; None without `<answer>`."""
        ids = [int(t) for t in tokens]
        if ANSWER not in ids:
            return None
        start = ids.index(ANSWER) + 1
        end = next((j for j in range(start, len(ids)) if self.is_special(ids[j])), len(ids))
        return start, end

    def is_special(self, tokens):
        return (tokens >= 0) & (tokens < NUM_SPECIAL)

    def token_text(self, codec: Codec, token: int) -> str:
        """A token as text: special tokens by name, undecodable ids as `<id>`, control characters escaped."""
        token = int(token)
        if token in NAMES:
            return NAMES[token]
        text = codec.decode([token])
        if not text:
            return f"<{token}>"
        return text if text.isprintable() or text == " " else text.encode("unicode_escape").decode("ascii")

    def render(self, codec: Codec, ids: Sequence[int]) -> str:
        """Readable text of any ids: text runs decoded, special ids shown by name, padding dropped."""
        pieces, run = [], []
        for token in (int(i) for i in ids):
            if self.is_special(token):
                if run:
                    pieces.append(codec.decode(run))
                    run = []
                if token != PAD:
                    pieces.append(NAMES[token])
            else:
                run.append(token)
        if run:
            pieces.append(codec.decode(run))
        return "".join(pieces)

    def _name_at(self, tokens: np.ndarray, index: int) -> str:
        if index >= len(tokens):
            return "the end of the sequence"
        token = int(tokens[index])
        return f"{NAMES.get(token, f'token {token}')} at position {index}"


SAGE = SageLayout()
"""The layout the project's own models are trained on."""


def render_prompt(question: str, options: tuple[str, ...] = ()) -> str:
    """The prompt text: the question, then one `"\\nA) option"` line per option.

    The question comes first and unchanged, so question spans keep their character offsets.
    """
    return question + "".join(f"\n{LETTERS[i]}) {option}" for i, option in enumerate(options))


def answer_mask(tokens: Sequence[int], layout: Layout = SAGE) -> np.ndarray:
    """`[T]` bool: the answer's tokens (`Layout.answer_span`); all False without an answer."""
    mask = np.zeros(len(tokens), bool)
    span = layout.answer_span(tokens)
    if span is not None:
        mask[span[0]:span[1]] = True
    return mask


def parse_answer(codec: Codec, tokens: Sequence[int], layout: Layout = SAGE) -> Optional[str]:
    """The answer's text, stripped; None when the chain has no answer marker."""
    span = layout.answer_span(tokens)
    if span is None:
        return None
    return codec.decode([int(t) for t in tokens[span[0]:span[1]]]).strip()


def _check_piece(codec: Codec, layout: Layout, ids: list[int], text: str, what: str, allow_empty: bool) -> None:
    if not ids and not allow_empty:
        raise LayoutError(f"{what} encodes to no tokens")
    specials = [i for i in ids if layout.is_special(i)]
    if specials:
        raise LayoutError(f"{what} encodes to special id(s) {specials}, which would break the sequence layout")
    if codec.decode(ids) != text:
        raise LayoutError(f"{what} does not round-trip through the tokenizer: decodes to {codec.decode(ids)!r}")


def _dependency_mask(dependencies: Sequence[Sequence[Span]], n_steps: int, length: int,
                     part_offsets: dict[int, tuple[int, list[tuple[int, int]]]]) -> np.ndarray:
    """`[n_steps, length]` bool: the tokens whose characters overlap each step's dependency spans."""
    if len(dependencies) != n_steps:
        raise LayoutError(f"dependencies has {len(dependencies)} entries for {n_steps} steps")
    mask = np.zeros((n_steps, length), dtype=bool)
    for k, spans in enumerate(dependencies):
        for span in spans:
            if not QUESTION_PART <= span.part < k:
                raise LayoutError(f"dependencies[{k}] points at part {span.part}; a step may depend only on the "
                                  f"question ({QUESTION_PART}) or an earlier step")
            first, offsets = part_offsets[span.part]
            (start, end), = token_spans(offsets, [(span.start, span.end)], first=first, allow_empty=True)
            mask[k, start:end] = True
    return mask


def token_spans(offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]], *, first: int = 0,
                allow_empty: bool = False) -> list[tuple[int, int]]:
    """Token spans covering character spans, through a tokenizer's per-token character offsets.

    A token belongs to a character span when their characters overlap, so a span that cuts a token in two
    takes the whole token.

    Args:
      offsets: `[(start, end)]` characters of the text each token covers, in token order.
      char_spans: `[(start, end)]` character spans of that text (e.g. `line_spans`).
      first: the position of the text's first token in the whole sequence; added to every span.
      allow_empty: give `(first, first)` for a span no token overlaps instead of raising.

    Raises:
      LayoutError: a character span overlaps no token (unless `allow_empty`).
    """
    out = []
    for start, end in char_spans:
        hits = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
        if not hits:
            if not allow_empty:
                raise LayoutError(f"characters [{start}, {end}) overlap no token")
            out.append((first, first))
            continue
        out.append((first + hits[0], first + hits[-1] + 1))
    return out


def line_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the non-blank lines of `text`, surrounding whitespace excluded: the default steps
    of a free-text rationale."""
    spans, position = [], 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped:
            start = position + line.index(stripped)
            spans.append((start, start + len(stripped)))
        position += len(line)
    return spans


def split_lines(text: str) -> list[str]:
    """The step texts of a free-text rationale: one per non-blank line (`line_spans`)."""
    return [text[start:end] for start, end in line_spans(text)]


_STEP_SENTENCE = re.compile(r"Step\s+(\d+)\s+depends on\s+(.*?)(?=Step\s+\d+\s+depends on|\Z)", re.S)
_CLAIM = re.compile(r"'([^']*)'\s+from\s+(the question|step\s+(\d+))")


def render_explanation(claims: Sequence[Sequence[Claim]]) -> str:
    """`"Step 1 depends on '3' from the question, '+1' from the question. Step 2 depends on ..."`.

    Args:
      claims: per step (in order), the facts it rests on; a step with none says "no earlier token".
    """
    sentences = []
    for k, step_claims in enumerate(claims):
        parts = [f"'{c.text}' from " + ("the question" if c.part == QUESTION_PART else f"step {c.part + 1}")
                 for c in step_claims]
        sentences.append(f"Step {k + 1} depends on " + (", ".join(parts) if parts else "no earlier token") + ".")
    return " ".join(sentences)


def parse_explanation(text: str) -> dict[int, tuple[Claim, ...]]:
    """`{step (0-based): claims}` from text in the `render_explanation` grammar.

    Text outside the grammar is ignored; a step named twice gets the claims of both mentions; "Step 0" (the
    grammar counts from 1) is kept as step -1 so that it counts as a claim about no real step.
    """
    claims: dict[int, list[Claim]] = {}
    for step_match in _STEP_SENTENCE.finditer(text):
        step = int(step_match.group(1)) - 1
        for claim in _CLAIM.finditer(step_match.group(2)):
            part = QUESTION_PART if claim.group(3) is None else int(claim.group(3)) - 1
            claims.setdefault(step, []).append(Claim(claim.group(1), part))
    return {step: tuple(found) for step, found in claims.items()}


@struct.dataclass
class Steps:
    """The token spans of the steps of one problem (or of a batch, with a leading batch axis).

    A step's tokens are scored by the logits of the position just before each of them (teacher forcing), so
    the queries that *produce* step `i` are its tokens shifted left by one: `queries`. The attention factor of
    significance and the decision points read those queries, as `sage_jax.generate`'s tracked attention does.

    Attributes:
      mask: `[n, T]` bool, the tokens step `i` owns in the full sequence.
      starts: `[n]` int32, the first token of each step.
      ends: `[n]` int32, one past the last token of each step (`starts == ends` for an empty padding row).
    """

    mask: jax.Array
    starts: jax.Array
    ends: jax.Array

    @property
    def n_steps(self) -> int:
        return self.mask.shape[-2]

    @property
    def queries(self) -> jax.Array:
        """`[n, T]` bool: the positions whose logits predict step `i`'s tokens (`mask` shifted left by one)."""
        shifted = jnp.zeros_like(self.mask)
        return shifted.at[..., :-1].set(self.mask[..., 1:])

    @property
    def sources(self) -> jax.Array:
        """`[n, T]` bool: the tokens strictly before step `i`, the candidate sources it may rest on."""
        t = jnp.arange(self.mask.shape[-1])
        return t < self.starts[..., None]


Splitter = Callable[[np.ndarray], Sequence[tuple[int, int]]]
"""Maps `[T]` token ids (numpy) to the `(start, end)` spans (end exclusive) of the steps, in order."""


def from_spans(spans: Sequence[tuple[int, int]], length: int) -> Steps:
    """`Steps` from `(start, end)` token spans over a sequence of `length` tokens.

    Raises:
      LayoutError: no span, a span is empty, falls outside `[0, length)`, starts at token 0 (no position
        predicts it), or overlaps the previous span.
    """
    spans = [(int(s), int(e)) for s, e in spans]
    if not spans:
        raise LayoutError("no steps: the rationale is empty (expected at least one step span)")
    previous_end = 0
    for i, (start, end) in enumerate(spans):
        if not 0 <= start < end <= length:
            raise LayoutError(f"step {i} span [{start}, {end}) lies outside the sequence [0, {length}) or is empty")
        if start == 0:
            raise LayoutError(f"step {i} starts at token 0, which no position predicts; a step needs a token "
                              "before it (the <step> marker)")
        if start < previous_end:
            raise LayoutError(f"step {i} span [{start}, {end}) overlaps step {i - 1}, which ends at {previous_end}")
        previous_end = end
    starts = np.asarray([s for s, _ in spans], np.int32)
    ends = np.asarray([e for _, e in spans], np.int32)
    t = np.arange(length)
    mask = (t[None, :] >= starts[:, None]) & (t[None, :] < ends[:, None])
    return Steps(mask=jnp.asarray(mask), starts=jnp.asarray(starts), ends=jnp.asarray(ends))


def find_steps(tokens, *, splitter: Optional[Splitter] = None, layout: Layout = SAGE) -> Steps:
    """Splits one laid-out problem `[T]` into steps.

    Args:
      tokens: `[T]` token ids (concrete: the number of steps is a shape).
      splitter: maps the tokens to step spans; defaults to `layout.step_spans`.
      layout: the sequence layout (the SAGE layout's `<step>` markers by default).

    Raises:
      LayoutError: the tokens are not one sequence, there is no step, or a span is invalid.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise LayoutError(f"find_steps takes one problem's [T] tokens, got shape {tokens.shape}; "
                          "call it per problem and combine with stack_steps")
    spans = (splitter or layout.step_spans)(tokens)
    if not len(spans):
        raise LayoutError("no steps found: the sequence has no step marker (empty rationale)")
    return from_spans(spans, len(tokens))


def stack_steps(steps: Sequence[Steps], n_steps: Optional[int] = None) -> Steps:
    """Stacks the steps of several problems of equal length `T` into `[N, n, T]`, padding with empty steps."""
    lengths = {s.mask.shape[-1] for s in steps}
    if len(lengths) != 1:
        raise LayoutError(f"stack_steps needs problems of one length T (pad the tokens first), got {sorted(lengths)}")
    n = max(s.n_steps for s in steps) if n_steps is None else n_steps
    if any(s.n_steps > n for s in steps):
        raise LayoutError(f"n_steps={n} is smaller than a problem's {max(s.n_steps for s in steps)} steps")

    def pad(s: Steps) -> Steps:
        extra = n - s.n_steps
        last = s.ends[-1]
        return Steps(mask=jnp.pad(s.mask, ((0, extra), (0, 0))),
                     starts=jnp.concatenate([s.starts, jnp.full((extra,), last, jnp.int32)]),
                     ends=jnp.concatenate([s.ends, jnp.full((extra,), last, jnp.int32)]))

    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[pad(s) for s in steps])


def steps_from_index(tokens: jax.Array, step_index: jax.Array, n_steps: int, layout: Layout = SAGE) -> Steps:
    """`Steps` `[..., n_steps, T]` from `EncodedExample.step_index [..., T]`, traceable under `jit`.

    Step `k` owns the tokens with `step_index == k` except its marker (a special token); steps a row does not
    have are empty (`starts == ends == 0`, no sources), which every analysis scores 0.
    """
    k = jnp.arange(n_steps)
    mask = (step_index[..., None, :] == k[:, None]) & ~layout.is_special(tokens)[..., None, :]
    present = jnp.any(mask, axis=-1)
    length = mask.shape[-1]
    starts = jnp.where(present, jnp.argmax(mask, axis=-1), 0).astype(jnp.int32)
    ends = jnp.where(present, length - jnp.argmax(mask[..., ::-1], axis=-1), 0).astype(jnp.int32)
    return Steps(mask=mask, starts=starts, ends=ends)
