"""A pretrained model's chat template as a `sage_jax.layout.Layout`.

A chat model is prompted with its own template (the Jinja string shipped with its tokenizer, rendered as
Hugging Face renders it) and answers in free text. Its chain is the assistant's reply: each non-blank line is a
step (`layout.line_spans`), mapped onto tokens through character offsets, so any tokenizer works. Its answer is
the last number of the reply, or whatever `answer_pattern` matches last. Nothing here depends on one model:
`ChatLayout.for_codec(codec, template)` builds the layout for any `tokenizers` tokenizer and template.

The reply is found after the template's generation header (for ChatML `<|im_start|>assistant\\n`), so the same
`step_spans` reads a chain the layout encoded and a chain the model generated. Per-token character offsets of a
generated reply come from decoding its growing prefixes, because generated ids need not be the tokenizer's
canonical encoding of their text.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import jinja2.ext
import jinja2.sandbox
import numpy as np
import tokenizers

from sage_jax import layout
from sage_jax.layout import EncodedExample, LayoutError, Segment, Span

NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
"""The default answer: the last number of the reply (thousands separators and decimals kept)."""


class TextCodec:
    """A pretrained tokenizer as a layout's codec: `encode` never parses special tokens in text (data cannot inject
    structure), `encode_template` does (a rendered chat template is structure), and both give character offsets."""

    def __init__(self, backend: tokenizers.Tokenizer):
        self._template = tokenizers.Tokenizer.from_str(backend.to_str())
        self._template.encode_special_tokens = False
        self._text = tokenizers.Tokenizer.from_str(backend.to_str())
        self._text.encode_special_tokens = True
        self.vocab_size = backend.get_vocab_size()
        self.special_ids = tuple(sorted(i for i, token in backend.get_added_tokens_decoder().items()
                                        if token.special))

    def encode(self, text: str) -> list[int]:
        return self._text.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        out = self._text.encode(text, add_special_tokens=False)
        return out.ids, [tuple(o) for o in out.offsets]

    def encode_template(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of a rendered template, its special tokens recognised, with each id's characters."""
        out = self._template.encode(text, add_special_tokens=False)
        return out.ids, [tuple(o) for o in out.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        return self._template.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, text: str) -> Optional[int]:
        return self._template.token_to_id(text)


def render_template(template: str, messages: Sequence[dict], *, add_generation_prompt: bool,
                    **extra) -> str:
    """The template rendered as Hugging Face renders chat templates (sandboxed Jinja, trimmed blocks)."""
    return _compiled(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt, **extra)


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    """A template compiled once: every encoded chain renders the same one several times."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])

    def raise_exception(message):
        raise LayoutError(f"the chat template refused the conversation: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


@dataclasses.dataclass(frozen=True, eq=False)
class ChatLayout:
    """Chains as a chat model writes them (module docstring). Build it with `ChatLayout.for_codec`.

    Attributes:
      codec: the model's tokenizer; every method reads and writes its ids.
      template: the Jinja chat template.
      header: ids of the generation header that opens the assistant's turn.
      special_ids: the tokenizer's special ids (structure, never text).
      eos_id: the id that ends generation (the end of the assistant's turn).
      system: a system message, or None for the template's own default.
      instruction: appended to every question (how to lay the chain out).
      answer_format: the reply's last line when an answer is encoded.
      answer_pattern: the regular expression whose last match in the reply is the answer.
      explain_request: the user's follow-up turn that asks the model to explain its chain.
    """

    codec: TextCodec
    template: str
    header: tuple[int, ...]
    special_ids: tuple[int, ...]
    eos_id: int
    system: Optional[str] = None
    instruction: str = "Think step by step, one step per line."
    answer_format: str = "Answer: {answer}"
    answer_pattern: str = NUMBER
    explain_request: str = "For each step, which earlier numbers does it use?"

    @classmethod
    def for_codec(cls, codec: TextCodec, template: str, *, eos_token: str = "<|im_end|>", **fields) -> "ChatLayout":
        """The layout of `template` over `codec`; the generation header is what `add_generation_prompt` adds."""
        eos_id = codec.token_id(eos_token)
        if eos_id is None:
            raise LayoutError(f"the tokenizer has no end-of-turn token {eos_token!r}")
        user = [{"role": "user", "content": "x"}]
        with_header = render_template(template, user, add_generation_prompt=True)
        plain = render_template(template, user, add_generation_prompt=False)
        if not with_header.startswith(plain) or with_header == plain:
            raise LayoutError("the chat template adds no generation header after the last turn")
        header = tuple(codec.encode_template(with_header[len(plain):])[0])
        return cls(codec=codec, template=template, header=header, special_ids=codec.special_ids, eos_id=eos_id,
                   **fields)

    @classmethod
    def for_pretrained(cls, pretrained, **fields) -> "ChatLayout":
        """The layout of a loaded checkpoint (`sage_jax.interop.Pretrained`): its tokenizer and chat template.

        Raises:
          LayoutError: the checkpoint ships no tokenizer or no chat template.
        """
        if pretrained.tokenizer is None or pretrained.chat_template is None:
            raise LayoutError(f"{pretrained.source} has no tokenizer or no chat template to lay a chain out with")
        return cls.for_codec(TextCodec(pretrained.tokenizer), pretrained.chat_template, **fields)

    @property
    def pad_id(self) -> int:
        """The end-of-turn id: special, so padding is never read as text."""
        return self.eos_id

    @property
    def rationale_cue(self) -> tuple[int, ...]:
        """Nothing: `prompt` already ends with the generation header."""
        return ()

    @property
    def explanation_cue(self) -> tuple[int, ...]:
        """What follows a finished reply (its end-of-turn id) in a conversation that goes on to `explain_request`:
        the rest of the assistant's turn, the follow-up request and a new assistant header."""
        end = self.codec.decode([self.eos_id])
        turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        before = render_template(self.template, turn, add_generation_prompt=False)
        after = render_template(self.template, turn + [{"role": "user", "content": self.explain_request}],
                                add_generation_prompt=True)
        cut = before.rindex(end) + len(end)
        return tuple(self.codec.encode_template(after[cut:])[0])

    def _messages(self, question: str, options: Sequence[str]) -> list[dict]:
        content = " ".join(filter(None, [layout.render_prompt(question, tuple(options)), self.instruction]))
        messages = [{"role": "user", "content": content}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        return messages

    def prompt(self, codec, question: str, options: Sequence[str] = (), *, strict: bool = False) -> list[int]:
        """The conversation up to the assistant's (empty) turn: what the model is given to write its chain."""
        text = render_template(self.template, self._messages(question, options), add_generation_prompt=True)
        return list(self.codec.encode_template(text)[0])

    def encode(self, codec, question: str, steps: Sequence[str], answer: Optional[str] = None,
               explanation: Optional[str] = None, *, options: Sequence[str] = (),
               dependencies: Optional[Sequence[Sequence[Span]]] = None, strict: bool = False) -> EncodedExample:
        """The conversation with the chain as the assistant's reply: one line per step, then `answer_format`.

        Args and raises as `sage_jax.layout.SageLayout.encode`; an explanation is the assistant's reply to
        `explain_request` in a second exchange.
        """
        if strict and not steps:
            raise LayoutError("the rationale is empty: it has no step (no non-blank line)")
        for k, step in enumerate(steps):
            if not step.strip() or "\n" in step:
                raise LayoutError(f"step {k} ({step!r}) must be one non-blank line in a chat reply")
        answer_line = None if answer is None else self.answer_format.format(answer=answer)
        reply = "\n".join(list(steps) + ([answer_line] if answer_line is not None else []))
        messages = self._messages(question, options) + [{"role": "assistant", "content": reply}]
        if explanation is not None:
            messages += [{"role": "user", "content": self.explain_request},
                         {"role": "assistant", "content": explanation}]
        text = render_template(self.template, messages, add_generation_prompt=False)
        prompt_text = render_template(self.template, messages[:-1 if explanation is None else -3],
                                      add_generation_prompt=True)
        reply_start = len(prompt_text)
        question_start = prompt_text.find(question)
        if question_start < 0 or not text.startswith(prompt_text) or not text.startswith(reply, reply_start):
            raise LayoutError("the chat template does not carry the question and the reply verbatim")
        tokens, offsets = self.codec.encode_template(text)
        n = len(tokens)

        starts, position = [], reply_start
        for step in steps:
            starts.append(position)
            position += len(step) + 1
        spans = _line_tokens(offsets, [(s, s + len(step)) for s, step in zip(starts, steps)])
        if len(spans) != len(steps):
            raise LayoutError(f"{len(steps) - len(spans)} step(s) share all their tokens with the step before")
        first_reply, reply_end = layout.token_spans(offsets, [(reply_start, reply_start + len(reply))])[0]
        segments = np.full(n, Segment.PROMPT, np.int8)
        step_index = np.full(n, -1, np.int32)
        rationale_end = spans[-1][1] if spans else first_reply
        segments[first_reply:rationale_end] = Segment.RATIONALE
        for k, (start, end) in enumerate(spans):
            step_index[start:end] = k
        answer_mask = np.zeros(n, bool)
        if answer_line is not None:
            at = reply_start + len(reply) - len(answer_line) + self.answer_format.index("{answer}")
            (start, end), = layout.token_spans(offsets, [(at, at + len(answer))])
            answer_mask[start:end] = True
            segments[rationale_end:reply_end] = Segment.ANSWER
        if reply_end < n and tokens[reply_end] == self.eos_id:
            segments[reply_end] = Segment.ANSWER if answer_line is not None else Segment.RATIONALE
        if explanation is not None:
            segments[reply_end + 1:] = Segment.EXPLANATION

        step_deps = None
        if dependencies is not None:
            char_starts = {layout.QUESTION_PART: question_start, **dict(enumerate(starts))}
            part_offsets = {part: (0, [(s - c, e - c) for s, e in offsets]) for part, c in char_starts.items()}
            step_deps = layout._dependency_mask(dependencies, len(steps), n, part_offsets)
        return EncodedExample(tokens=np.asarray(tokens, np.int32), segments=segments, step_index=step_index,
                              step_deps=step_deps, step_spans=tuple(spans), answer_mask=answer_mask)

    def reply_span(self, tokens: Sequence[int]) -> Optional[tuple[int, int]]:
        """Token span of the first assistant reply: after its generation header, up to the next special token."""
        ids = [int(t) for t in tokens]
        h = len(self.header)
        starts = [i + h for i in range(len(ids) - h + 1) if tuple(ids[i:i + h]) == self.header]
        if not starts:
            return None
        start = starts[0]
        end = next((j for j in range(start, len(ids)) if self.is_special(ids[j])), len(ids))
        return start, end

    def _reply_text(self, tokens: Sequence[int]) -> Optional[tuple[int, str, list[tuple[int, int]]]]:
        span = self.reply_span(tokens)
        if span is None:
            return None
        ids = [int(t) for t in tokens[span[0]:span[1]]]
        offsets, previous = [], 0
        for i in range(len(ids)):
            length = len(self.codec.decode(ids[:i + 1]))
            offsets.append((previous, max(length, previous)))
            previous = max(length, previous)
        return span[0], self.codec.decode(ids), offsets

    def step_spans(self, tokens: np.ndarray, *, skip_empty: bool = False) -> list[tuple[int, int]]:
        """One span per non-blank line of the reply, its answer line (`answer_format`) excluded; a token that
        straddles two lines goes to the earlier one."""
        found = self._reply_text(tokens)
        if found is None:
            return []
        first, text, offsets = found
        lines = layout.line_spans(text)
        if lines and self._is_answer_line(text[lines[-1][0]:lines[-1][1]]):
            lines = lines[:-1]
        return _line_tokens(offsets, lines, first=first)

    def _is_answer_line(self, line: str) -> bool:
        prefix = self.answer_format.split("{answer}")[0].strip()
        return bool(prefix) and line.startswith(prefix)

    def _answer_chars(self, text: str) -> Optional[tuple[int, int]]:
        matches = list(re.finditer(self.answer_pattern, text))
        return None if not matches else matches[-1].span()

    def answer_span(self, tokens: Sequence[int]) -> Optional[tuple[int, int]]:
        """The tokens of the last `answer_pattern` match in the reply; None without one."""
        found = self._reply_text(tokens)
        if found is None:
            return None
        first, text, offsets = found
        chars = self._answer_chars(text)
        if chars is None:
            return None
        return layout.token_spans(offsets, [chars], first=first)[0]

    def is_special(self, tokens):
        if isinstance(tokens, (int, np.integer)):
            return int(tokens) in self.special_ids
        xp = jnp if isinstance(tokens, jax.Array) else np
        return xp.isin(tokens, xp.asarray(self.special_ids, dtype=xp.asarray(tokens).dtype))

    def token_text(self, codec, token: int) -> str:
        text = self.codec.decode([int(token)])
        if not text:
            return f"<{int(token)}>"
        return text if text.isprintable() or text == " " else text.encode("unicode_escape").decode("ascii")

    def render(self, codec, ids: Sequence[int]) -> str:
        return self.codec.decode([int(i) for i in ids])


def _line_tokens(offsets: Sequence[tuple[int, int]], lines: Sequence[tuple[int, int]], *, first: int = 0
                 ) -> list[tuple[int, int]]:
    """Token spans of character spans in order, a token that straddles two of them kept by the earlier one, and
    spans no token is left for dropped."""
    spans, previous_end = [], first
    for start, end in layout.token_spans(offsets, lines, first=first, allow_empty=True):
        start = max(start, previous_end)
        if end > start:
            spans.append((start, end))
            previous_end = end
    return spans
