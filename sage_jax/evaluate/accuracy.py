"""Answer accuracy by greedy generation: prompt with the question, generate until `<eos>`, read the answer.

The prompt is the layout's (`sage_jax.layout.Layout.prompt`: `<bos> <question> question [options]` in the SAGE
layout), exactly what training sequences start with, so the model writes its own chain (`<step> ...`), then
`<answer> a <eos>`. The predicted answer is `sage_jax.layout.parse_answer` of the prompt and what it wrote (a chat
layout finds the reply after the prompt's generation header); a generation without
an answer marker has no answer and scores 0.

Prompts are left-padded to one width and batches to one size (the last batch repeats its final prompt), so
generation compiles once per evaluation set.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence

import jax
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.data.schema import Example
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.decode import generate, left_pad
from sage_jax.layout import SAGE, Layout, parse_answer

Scorer = Callable[[Example, Optional[str]], float]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One generated answer.

    Attributes:
      example: the evaluated example.
      generated: the generated token ids (prompt excluded, up to and including `<eos>`).
      answer: the parsed answer text, or None when the model wrote no `<answer>`.
      score: the scorer's value in [0, 1].
    """

    example: Example
    generated: tuple[int, ...]
    answer: Optional[str]
    score: float


def prompt_ids(example: Example, tokenizer: Tokenizer, layout: Layout = SAGE) -> list[int]:
    """The ids `example` is posed with (`Layout.prompt`), as its training sequence starts."""
    return layout.prompt(tokenizer, example.question, example.options)


def exact_match(example: Example, answer: Optional[str]) -> float:
    """1.0 when the answer equals `example.answer` after stripping whitespace, else 0.0."""
    return float(answer is not None and answer.strip() == example.answer.strip())


def predict(params: Any, cfg: SageConfig, tokenizer: Tokenizer, examples: Sequence[Example], *,
            max_new_tokens: int, batch_size: int = 32, scorer: Scorer = exact_match,
            layout: Layout = SAGE) -> list[Prediction]:
    """Greedy answers to `examples`, scored by `scorer(example, answer)`.

    Args:
      params: model parameters.
      cfg: the model config.
      tokenizer: the tokenizer the model was trained with.
      examples: the problems (their steps and answers are not shown to the model).
      max_new_tokens: generation budget per problem; prompt width + budget must fit `cfg.max_seq_len`.
      batch_size: problems generated together.
      scorer: the source's scorer (`exact_match`, or a reasoning-gym task's `GymSource.score`).
      layout: how problems are posed and where the answer is read.
    """
    prompts = [prompt_ids(ex, tokenizer, layout) for ex in examples]
    generated = generate_batched(params, cfg, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 eos_id=layout.eos_id)
    predictions = []
    for example, prompt, ids in zip(examples, prompts, generated):
        answer = parse_answer(tokenizer, list(prompt) + list(ids), layout)
        predictions.append(Prediction(example=example, generated=ids, answer=answer,
                                      score=float(scorer(example, answer))))
    return predictions


def generate_batched(params: Any, cfg: SageConfig, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                     batch_size: int = 32, eos_id: Optional[int] = None) -> list[tuple[int, ...]]:
    """Greedy continuations of `prompts` (lists of ids), each up to and including the end token (`eos_id`,
    by default `cfg.eos_id`).

    Prompts are left-padded to the widest and the last batch is filled with copies of its final prompt, so
    every batch has one shape and generation compiles once.
    """
    if not prompts:
        return []
    width = max(len(p) for p in prompts)
    out_ids = []
    for first in range(0, len(prompts), batch_size):
        chunk = list(prompts[first:first + batch_size])
        rows = chunk + [chunk[-1]] * (batch_size - len(chunk))
        tokens, mask = left_pad(rows, width, cfg.pad_id)
        out = generate(params, cfg, tokens, prompt_mask=mask, max_new_tokens=max_new_tokens, eos_id=eos_id)
        generated, counts = jax.device_get((out.tokens[:, width:], out.num_generated))
        out_ids.extend(tuple(int(t) for t in generated[i, :counts[i]]) for i in range(len(chunk)))
    return out_ids


def accuracy_by(predictions: Sequence[Prediction], key: Callable[[Example], Hashable]) -> dict[Hashable, Mapping]:
    """`{group: {"n", "accuracy", "answered"}}` with groups `key(example)`, sorted by group."""
    groups: dict[Hashable, list[Prediction]] = collections.defaultdict(list)
    for p in predictions:
        groups[key(p.example)].append(p)
    return {g: {"n": len(ps), "accuracy": float(np.mean([p.score for p in ps])),
                "answered": float(np.mean([p.answer is not None for p in ps]))}
            for g, ps in sorted(groups.items(), key=lambda item: str(item[0]))}
