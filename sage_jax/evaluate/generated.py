"""The model's own generated explanation, checked against the exact analysis.

Stage 3 trains the model to write, after a chain, `<explain>` and a text in the one explanation grammar
(`sage_jax.layout.render_explanation`):

    Step 1 depends on '3' from the question, '+1' from the question. Step 2 depends on '4' from step 1, ...

Here the model is prompted with each problem's TRUE chain (`<bos> <question> q <step> s1 ... <answer> a
<eos> <explain>`, the layout the exact maps of `sage_jax.evaluate.explanations` are computed on) and
generates greedily until `<eos>`. `sage_jax.layout.parse_explanation` reads the claims (step, quoted text, where from);
`claimed_dependencies` turns them into token masks `[S, T]` by locating each quoted text in the part it
names (every occurrence: an ambiguous claim names all of them) and reusing the tokenizer's span-to-token
map, the one that builds the true dependencies. A claim whose part does not exist, is not earlier than its
step, or does not contain the text is *unfounded* and names no token.

`compare` reports, over real steps, how often the claims name the exact analysis's top-`k` tokens (over all
context candidates and over content candidates only, see `explanations.format_vocabulary`), and, for
context, their precision and recall against the true dependencies; given the counterfactual dependencies
(`sage_jax.evaluate.truth`), the share of the claims the model's own behaviour confirms. A claim is judged by
the content tokens it names (format tokens such as '=' are never substituted, so the truth cannot test them) at
one of its occurrences (an ambiguous quote means one of them): `claim_verdict`; the shares of the tokens the
claims name stay beside it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.data.schema import Example, encode_example
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate.accuracy import generate_batched
from sage_jax.evaluate.explanations import Encoded, content_candidates
from sage_jax.interpret import faithfulness as fa, ranking
from sage_jax.layout import QUESTION_PART, SAGE, Claim, Layout, Span, parse_explanation


def claimed_dependencies(tokenizer: Tokenizer, example: Example,
                         claims: Mapping[int, Sequence[Claim]]) -> tuple[np.ndarray, int, int]:
    """The tokens the claims name, on the layout of `encode_example(example, tokenizer)` without explanation.

    Returns:
      `(mask [S, T] bool, founded, unfounded)`: `S` the example's steps; the counts of claims that name some
      text of an existing earlier part and of those that do not (or are about a step the chain lacks).
    """
    spans: list[list[Span]] = [[] for _ in example.steps]
    founded = unfounded = 0
    for step, step_claims in claims.items():
        for claim in step_claims:
            found = _spans(example, step, claim)
            if found:
                spans[step].extend(found)
                founded += 1
            else:
                unfounded += 1
    bare = dataclasses.replace(example, explanation=None, dependencies=tuple(tuple(s) for s in spans))
    return encode_example(bare, tokenizer).step_deps, founded, unfounded


def _spans(example: Example, step: int, claim: Claim) -> list[Span]:
    if not (0 <= step < len(example.steps) and QUESTION_PART <= claim.part < step) or not claim.text:
        return []
    text = example.question if claim.part == QUESTION_PART else example.steps[claim.part]
    return [Span(claim.part, m.start(), m.start() + len(claim.text))
            for m in re.finditer(f"(?={re.escape(claim.text)})", text)]


def claim_occurrences(tokenizer: Tokenizer, example: Example, step: int, claim: Claim) -> list[np.ndarray]:
    """One `[T]` bool mask per occurrence of `claim`'s text in the part it names, on the layout of
    `claimed_dependencies` (empty when the claim is unfounded). An ambiguous claim has several."""
    masks = []
    for span in _spans(example, step, claim):
        alone = tuple((span,) if k == step else () for k in range(len(example.steps)))
        bare = dataclasses.replace(example, explanation=None, dependencies=alone)
        masks.append(encode_example(bare, tokenizer).step_deps[step])
    return masks


def claim_verdict(occurrences: Sequence[np.ndarray], content: np.ndarray, truth: np.ndarray) -> Optional[bool]:
    """Whether the counterfactual truth confirms one founded claim about one step.

    The claim is confirmed when, at one of its occurrences, every content token it names is a counterfactual
    dependency of the step (an ambiguous claim means one of its occurrences); None when no occurrence names a
    content token (the truth substitutes content tokens only, so "'=' from step 1" can be neither confirmed nor
    refuted).

    Args:
      occurrences: `claim_occurrences(...)`, each `[T]` bool.
      content: `[T']` bool content tokens of the chain (`T' >= T`, padded).
      truth: `[T']` bool the step's counterfactual dependencies.
    """
    testable = [m & content[:m.shape[0]] for m in occurrences]
    testable = [m for m in testable if m.any()]
    if not testable:
        return None
    return any(not (m & ~truth[:m.shape[0]]).any() for m in testable)


def explanation_prompt(tokenizer: Tokenizer, example: Example, layout: Layout = SAGE) -> list[int]:
    """The true chain, then the layout's cue to explain (`<bos> <question> q <step> s1 ... <answer> a <eos>
    <explain>` in the SAGE layout)."""
    item = encode_example(dataclasses.replace(example, explanation=None), tokenizer, layout)
    return [int(t) for t in item.tokens] + list(layout.explanation_cue)


def generate_explanations(params: Any, cfg: SageConfig, tokenizer: Tokenizer, examples: Sequence[Example], *,
                          max_new_tokens: int, batch_size: int = 32) -> list[Optional[str]]:
    """The model's greedy explanation of each example's true chain (text up to `<eos>` or the next special
    token); None where the chain leaves no room in `cfg.max_seq_len`. The budget is `max_new_tokens`, cut to
    what the longest prompt leaves."""
    prompts = [explanation_prompt(tokenizer, ex) for ex in examples]
    fits = [i for i, p in enumerate(prompts) if len(p) < cfg.max_seq_len]
    texts: list[Optional[str]] = [None] * len(examples)
    if not fits:
        return texts
    room = min(max_new_tokens, cfg.max_seq_len - max(len(prompts[i]) for i in fits))
    generated = generate_batched(params, cfg, [prompts[i] for i in fits], max_new_tokens=room,
                                 batch_size=batch_size)
    for i, ids in zip(fits, generated):
        end = next((j for j, t in enumerate(ids) if SAGE.is_special(t)), len(ids))
        texts[i] = tokenizer.decode(ids[:end])
    return texts


def compare(tokenizer: Tokenizer, examples: Sequence[Example], texts: Sequence[Optional[str]], encoded: Encoded,
            exact: np.ndarray, *, k: int, truth: Optional[np.ndarray] = None) -> dict[str, Any]:
    """How often the generated explanations name what the exact analysis finds (module docstring).

    Args:
      tokenizer, examples: the problems, in the order of `encoded`.
      texts: the generated explanations (None: not generated, counted in `not_generated`).
      encoded: `encode_true_chains(tokenizer, examples)`.
      exact: `[N, S, T]` the exact significance maps of `encoded`.
      k: how many top tokens of each step's exact map to look for.
      truth: `[N, S, T]` bool, the counterfactual dependencies of `encoded`'s steps
        (`sage_jax.evaluate.truth`), or None.

    Returns:
      Rates over the real steps of the generated explanations: `named_exact_top_k` (mean share of each
      step's exact top-`k` candidates the claims name), `named_exact_top_k_content` (the same over content
      candidates), `steps_with_claims` (share of steps with a founded claim), `true_dependency_precision`
      (claimed tokens that are true dependencies, over steps with claims; None without any) and
      `true_dependency_recall`; counts `problems`, `not_generated`, `steps`, `founded_claims`,
      `unfounded_claims`; and `k`. With `truth`, what the model's counterfactual behaviour confirms:
      `claims_confirmed`, the share of the founded claims about real steps that name a content token
      (`tested_claims`; `untestable_claims` name none) whose tokens are dependencies of their step
      (`claim_verdict`); `counterfactual_confirmed`, the share of all claimed tokens that are
      (`claimed_tokens`), and `counterfactual_confirmed_content` of the claimed content tokens
      (`claimed_content_tokens`); each None without anything to share.
    """
    if len(examples) != len(texts) or len(examples) != encoded.tokens.shape[0]:
        raise ValueError(f"{len(examples)} examples, {len(texts)} texts and {encoded.tokens.shape[0]} encoded "
                         "problems must match")
    step_mask = np.asarray(encoded.steps.mask)
    top = jax.vmap(jax.vmap(ranking.top_k, (0, 0, None)), (0, 0, None))
    candidates = np.asarray(jax.vmap(fa.context_candidates)(step_mask))
    content = np.asarray(jax.vmap(content_candidates)(step_mask, encoded.content))
    exact_top, content_top = np.asarray(top(exact, candidates, k)), np.asarray(top(exact, content, k))
    named, named_content, with_claims, precision, recall = [], [], [], [], []
    founded = unfounded = not_generated = claimed_tokens = confirmed_tokens = content_tokens = 0
    verdicts: list[Optional[bool]] = []
    for i, (example, text) in enumerate(zip(examples, texts)):
        if text is None:
            not_generated += 1
            continue
        claims = parse_explanation(text)
        mask, good, bad = claimed_dependencies(tokenizer, example, claims)
        founded, unfounded = founded + good, unfounded + bad
        claimed = np.zeros(step_mask.shape[1:], bool)
        claimed[:mask.shape[0], :mask.shape[1]] = mask
        for s in range(int(encoded.n_steps[i])):
            named.append(_share(claimed[s], exact_top[i, s]))
            named_content.append(_share(claimed[s], content_top[i, s]))
            with_claims.append(claimed[s].any())
            recall.append(_share(claimed[s], encoded.deps[i, s]))
            if claimed[s].any():
                precision.append(_share(encoded.deps[i, s], claimed[s]))
            if truth is not None:
                claimed_tokens += int(claimed[s].sum())
                content_tokens += int((claimed[s] & encoded.content[i]).sum())
                confirmed_tokens += int((claimed[s] & truth[i, s]).sum())
                for claim in claims.get(s, ()):
                    occurrences = claim_occurrences(tokenizer, example, s, claim)
                    if occurrences:  # unfounded claims are counted apart
                        verdicts.append(claim_verdict(occurrences, encoded.content[i], truth[i, s]))
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    return {"problems": len(examples), "not_generated": not_generated, "steps": len(named), "k": k,
            "named_exact_top_k": mean(named), "named_exact_top_k_content": mean(named_content),
            "steps_with_claims": mean(with_claims), "true_dependency_precision": mean(precision),
            "true_dependency_recall": mean(recall), "founded_claims": founded, "unfounded_claims": unfounded,
            **({} if truth is None else _confirmed(verdicts, claimed_tokens, content_tokens, confirmed_tokens))}


def _confirmed(verdicts: Sequence[Optional[bool]], claimed: int, content: int, confirmed: int) -> dict[str, Any]:
    tested = [v for v in verdicts if v is not None]
    share = lambda part, whole: part / whole if whole else None  # noqa: E731
    return {"claims_confirmed": share(sum(tested), len(tested)), "tested_claims": len(tested),
            "untestable_claims": len(verdicts) - len(tested),
            "counterfactual_confirmed": share(confirmed, claimed), "claimed_tokens": claimed,
            "counterfactual_confirmed_content": share(confirmed, content), "claimed_content_tokens": content}


def _share(found: np.ndarray, of: np.ndarray) -> float:
    """The share of the tokens `of` that `found` holds (0 when `of` is empty)."""
    return float((found & of).sum() / max(of.sum(), 1))


__all__ = ["claim_occurrences", "claim_verdict", "claimed_dependencies", "compare", "explanation_prompt",
           "generate_explanations"]
