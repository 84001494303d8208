"""Stage-3 explanation targets rendered from the model's own exact analysis of its training problems.

For each problem (question, true chain, answer) the model that stage 3 starts from runs the exact analysis
(`sage_jax.interpret.significance`, Eq. 7, teacher-forced on the laid-out chain, as in training) with the map
`explain` reports by default (`w_ij` the counterfactual substitution effect, `weighting="substitution"`; the
paper's attention weighting by name), and each step's explanation names the source tokens that step's
significance row ranks highest:

    "Step 1 depends on '8' from the question, '+' from the question. Step 2 depends on '14' from step 1, ..."

the one explanation grammar (`sage_jax.layout.render_explanation`, as the true-dependency explanations of
`sage_jax.data.explanations`), so the model learns one
explanation language whose claims can be checked against either the exact analysis or the true dependencies.

Rendering choices (what makes the text a faithful transcript of the map):
- candidates of step `i` are its sources (tokens before the step, `Steps.sources`) that are text, not special
  tokens (`<bos>`, `<question>`, `<step>` mark structure and cannot be quoted); only tokens with a positive
  score are named;
- the `top_k` highest scores are named, most significant first (ties: the earlier token);
- a token is "from the question" when it lies in the prompt, else "from step k" (the step that owns it; a
  step's `<step>` marker is special, so never named);
- the rendered examples drop the source's true dependencies (`dependencies=None`): their explanation is about
  the model's map, and the same examples read back from the JSONL cache (which has no dependency field) must
  give the same batches, so that a resumed stage is bitwise the uninterrupted one.
Decision points (alternatives, confidences) are not rendered: a 3-step chain with its explanation must fit the
stage's rows (104 tokens in the `tiny` demo), and two named tokens per step already take ~20 tokens.

The analysis is batched: problems are right-padded to one length and stacked (`stack_steps`), and
`significance_batch` runs under one `jit` per chunk of `chunk` problems.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import threading
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.data.annotated import read_annotated, write_annotated
from sage_jax.data.schema import Example, encode_example
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.interpret import counterfactual as cf
from sage_jax.interpret.ranking import top_k_positions
from sage_jax.interpret.significance import WEIGHTINGS, significance
from sage_jax.layout import SAGE, Claim, from_spans, render_explanation, stack_steps
from sage_jax.model import Params


@dataclasses.dataclass(frozen=True)
class SelfAnalysis:
    """One problem's rendered analysis.

    Attributes:
      example: the problem with `explanation` set to the rendered text.
      tokens: `[T]` the laid-out ids the analysis read (no explanation, no padding).
      named: per step, the positions (into `tokens`) the explanation names, most significant first.
      score: `[n, T]` the exact significance map (normalised) the text was rendered from.
    """

    example: Example
    tokens: np.ndarray
    named: tuple[tuple[int, ...], ...]
    score: np.ndarray


def named_sources(score: np.ndarray, tokens: np.ndarray, start: int, top_k: int) -> tuple[int, ...]:
    """The positions step row `score [T]` names: its `top_k` highest-scoring non-special tokens before `start`
    with a positive score, most significant first, ties to the earlier token."""
    score = np.asarray(score)[:len(tokens)]
    candidates = (np.arange(len(tokens)) < start) & ~SAGE.is_special(np.asarray(tokens)) & (score > 0)
    return top_k_positions(score, candidates, top_k)


def render(tokenizer: Tokenizer, tokens: np.ndarray, step_index: np.ndarray,
           named: Sequence[Sequence[int]]) -> str:
    """The explanation text naming `named[i]` for step `i` (module docstring)."""
    return render_explanation([[Claim(tokenizer.decode([int(tokens[j])]), int(step_index[j])) for j in positions]
                               for positions in named])


def self_explanations(params: Params, cfg: SageConfig, tokenizer: Tokenizer, examples: Sequence[Example], *,
                      top_k: int = 2, chunk: int = 32, weighting: str = "substitution", substitutes: int = 2,
                      seed: int = 0) -> list[SelfAnalysis]:
    """Renders each example's explanation from `params`' exact analysis of its true chain.

    Args:
      params, cfg: the model whose analysis is rendered (the one the stage starts from).
      tokenizer: the training tokenizer (positions are its tokens).
      examples: problems with rationale steps (their own explanations are ignored).
      top_k: source tokens named per step.
      chunk: problems per batched analysis.
      weighting: `w_ij` of the map: "substitution" (`explain`'s default), "attention" or "rollout".
      substitutes, seed: with "substitution", substitutes per token and the seed that draws them (as
        `ExplainConfig.substitutes` / `substitution_seed`, so the targets name what `explain` would).

    Raises:
      ValueError: an example has no steps, or does not fit the model's context.
    """
    if top_k < 1 or chunk < 1:
        raise ValueError(f"top_k={top_k} and chunk={chunk} must be positive")
    encoded = []
    for i, example in enumerate(examples):
        if not example.steps:
            raise ValueError(f"example {i} ({example.question!r}) has no rationale steps to analyse")
        item = encode_example(dataclasses.replace(example, explanation=None), tokenizer)
        if len(item) > cfg.max_seq_len:
            raise ValueError(f"example {i} has {len(item)} tokens; the model's context is {cfg.max_seq_len}")
        encoded.append(item)
    if not encoded:
        return []
    length = max(len(e) for e in encoded)
    n_steps = max(e.num_steps for e in encoded)
    tokens = np.zeros((len(encoded), length), np.int32)
    for row, item in enumerate(encoded):
        tokens[row, :len(item)] = item.tokens
    steps = [from_spans(item.step_spans, length) for item in encoded]

    if weighting not in ("substitution",) + WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: choose 'substitution' or one of {WEIGHTINGS}")
    table = cf.substitution_table(tokenizer)
    n = min(substitutes, table.alternatives.shape[1])
    runs = (cf.runs_needed(table, tokens, stack_steps(steps, n_steps).mask, n) if weighting == "substitution"
            else None)
    analyse = _compiled_significance(cfg, weighting, n, runs)
    substitution = (jnp.asarray(table.alternatives), jnp.asarray(table.valid), jax.random.key(seed))
    scores = []
    for begin in range(0, len(encoded), chunk):
        rows = list(range(begin, min(begin + chunk, len(encoded))))
        padded = rows + [rows[-1]] * (chunk - len(rows))  # one shape: one compilation
        stacked = stack_steps([steps[r] for r in padded], n_steps)
        result = analyse(params, jnp.asarray(tokens[padded]), stacked, *substitution)
        scores.append(np.asarray(result)[:len(rows)])
    scores = np.concatenate(scores)

    out = []
    for row, (example, item) in enumerate(zip(examples, encoded)):
        starts = np.asarray(steps[row].starts)
        named = tuple(named_sources(scores[row, i], item.tokens, int(starts[i]), top_k)
                      for i in range(item.num_steps))
        text = render(tokenizer, item.tokens, item.step_index, named)
        rendered = dataclasses.replace(example, explanation=text, dependencies=None,
                                       metadata={**example.metadata, "explanation": "self_analysis"})
        out.append(SelfAnalysis(rendered,
                                np.asarray(item.tokens), named, scores[row, :item.num_steps, :len(item)]))
    return out


@functools.lru_cache(maxsize=4)
def _compiled_significance(cfg: SageConfig, weighting: str, substitutes: int, runs: Optional[int]) -> Callable:
    """`fn(params, tokens [B, T], steps [B, n, T], alternatives, valid, key) -> [B, n, T]` maps, jitted once;
    `runs` as `counterfactual.substitution_effects` takes it."""
    def one(params, tokens, steps, alternatives, valid, key):
        if weighting != "substitution":
            return significance(params, cfg, tokens, steps, weighting=weighting).score
        subs, ok = cf.draw_substitutes(key, tokens, alternatives, valid, substitutes)
        weight = cf.substitution_effects(params, cfg, tokens, steps.mask, subs, ok, runs=runs).effect
        return significance(params, cfg, tokens, steps, weight=weight).score

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, None, None, None)))


class SelfExplainedSource:
    """A random-access source of `size` problems whose explanations are the model's own analysis, computed on
    first access (in one batched pass) and cached as annotated-explanation JSONL (`sage_jax.data.annotated`).

    Args:
      problems: where the problems come from (item `i` is problem `i`).
      size: how many problems.
      analyse: `examples -> examples with explanations` (e.g. `self_explanations` of a loaded model).
      cache: a JSONL file to read the rendered pool from, or to write it to after computing it; a cache with a
        different number of problems is recomputed.
    """

    def __init__(self, problems, size: int, analyse: Callable[[list[Example]], list[Example]],
                 cache: Optional[str] = None):
        if size < 1 or size > len(problems):
            raise ValueError(f"SelfExplainedSource size={size} must lie in [1, {len(problems)}] (the problem source)")
        self._problems, self._size, self._analyse, self._cache = problems, size, analyse, cache
        self._examples: Optional[tuple[Example, ...]] = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> Example:
        return self.examples()[int(index)]

    def examples(self) -> tuple[Example, ...]:
        """The rendered pool (computed, or read from the cache, once)."""
        with self._lock:
            if self._examples is None:
                self._examples = self._load()
            return self._examples

    def _load(self) -> tuple[Example, ...]:
        if self._cache is not None and pathlib.Path(self._cache).exists():
            cached = read_annotated(self._cache).examples
            if len(cached) == self._size:
                return cached
        rendered = tuple(self._analyse([self._problems[i] for i in range(self._size)]))
        if self._cache is not None:
            write_annotated(self._cache, rendered)
        return rendered
