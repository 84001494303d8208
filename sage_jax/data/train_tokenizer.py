"""Train the shipped tokenizers offline, on text this project generates itself.

    python -m sage_jax.data.train_tokenizer     # rewrites sage_jax/data/assets/bpe_512.json

The corpus (`corpus()`) is deterministic: the project's procedural problems (chained sums, variable chains, their
multiple-choice forms), reasoning-gym tasks with English word problems and logic (`gsm_symbolic`, `syllogism`,
`propositional_logic`, `basic_arithmetic`, `leg_counting`), and explanations rendered from known dependencies.
Rendered the way the model sees text (question, options, steps, answer), so merges fit the training data.
Training the same corpus twice gives the same file (checked by the tests).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from sage_jax import layout
from sage_jax.data.explanations import explain_dependencies
from sage_jax.data.gym import GymSource
from sage_jax.data.multiple_choice import to_multiple_choice
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource, VariableChainKnobs
from sage_jax.data.schema import Example
from sage_jax.data.tokenizer import Tokenizer, asset_path
from sage_jax.layout import render_prompt

SHIPPED_VOCAB_SIZES = (512,)
_GYM_TASKS = ("gsm_symbolic", "syllogism", "propositional_logic", "basic_arithmetic", "leg_counting")


def example_text(example: Example) -> str:
    """The text of an example as the model reads it, with plain newlines in place of special tokens."""
    return "\n".join([render_prompt(example.question, example.options), *example.steps,
                      f"Answer: {example.answer}"])


def corpus(per_source: int = 400, seed: int = 0) -> Iterator[str]:
    """Deterministic training text: `per_source` examples from each generator and gym task."""
    rng = np.random.default_rng(seed)
    procedural = [ProceduralSource(ChainSumKnobs(n_terms=(2, 6), max_value=(9, 999)), per_source, seed),
                  ProceduralSource(VariableChainKnobs(n_steps=(1, 5), n_distractors=(0, 4)), per_source, seed)]
    for source in procedural:
        for i in range(len(source)):
            example = source[i]
            if i % 4 == 0:
                example = to_multiple_choice(example, rng)
            yield example_text(example)
            yield explain_dependencies(example)
    for task in _GYM_TASKS:
        source = GymSource(task, per_source, seed)
        for i in range(len(source)):
            yield example_text(source[i])


def train(vocab_size: int, texts: Iterator[str]) -> Tokenizer:
    """A byte-level BPE tokenizer of exactly `vocab_size` ids, digits one per token, specials at 0-6."""
    specials = [layout.NAMES[i] for i in range(layout.NUM_SPECIAL)]
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    if backend.get_vocab_size() != vocab_size:
        raise RuntimeError(f"trained {backend.get_vocab_size()} ids, wanted {vocab_size}; the corpus has too "
                           "few distinct pairs to merge for this vocabulary")
    return Tokenizer(backend)


def main() -> None:
    for vocab_size in SHIPPED_VOCAB_SIZES:
        tokenizer = train(vocab_size, corpus())
        path = asset_path(vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tokenizer.to_str())
        print(f"wrote {path} ({tokenizer.vocab_size} ids)")


if __name__ == "__main__":
    main()
