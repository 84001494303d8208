r"""Prepare a dataset, or measure a generated source, and print counts and skipped records.

Official files (tfds builders, array_record, no TensorFlow):

    python -m experiments.data --source=sage_gsm8k --manual_dir=~/gsm8k --data_dir=~/sage_data --max_length=256

prints per split the records read, kept, skipped as malformed (each with file:line: reason) and dropped as
longer than the context; then a sample. Read the result with `PreparedSource` or the mixture name
`prepared/sage_gsm8k/train` (with `PipelineConfig.data_dir`).

Generated sources (nothing to prepare; counts what a pipeline would keep):

    python -m experiments.data --source=procedural/chain_sum --num_examples=2000 --max_length=256
    python -m experiments.data --source=gym/gsm_symbolic --num_examples=500
"""

from __future__ import annotations

import collections

import numpy as np
import tqdm
from absl import app, flags

from sage_jax import data
from sage_jax.data.schema import encode_example

_SOURCE = flags.DEFINE_string("source", None, f"A builder ({', '.join(sorted(data.BUILDERS))}) or a generated "
                              "source (procedural/chain_sum, procedural/variable_chain, gym/<task>).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the official files (builders only).")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "Where prepared datasets are written.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 256, "Drop (and count) examples longer than this many tokens.")
_MAX_BAD = flags.DEFINE_float("max_bad_fraction", 0.01, "Fail when a file has more malformed records than this.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild a dataset that is already prepared.")
_VOCAB = flags.DEFINE_integer("vocab_size", 512, "Shipped tokenizer used to measure lengths.")
_NUM = flags.DEFINE_integer("num_examples", 1000, "Items to draw from a generated source.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of a generated source.")
_SHOW = flags.DEFINE_integer("show", 2, "Examples to print.")


def _prepare(tokenizer: data.Tokenizer) -> None:
    if _MANUAL_DIR.value is None:
        raise app.UsageError(f"--source={_SOURCE.value} is a builder: pass --manual_dir with the official files")
    report = data.prepare(_SOURCE.value, _MANUAL_DIR.value, _DATA_DIR.value, max_bad_fraction=_MAX_BAD.value,
                          max_length=_MAX_LENGTH.value, vocab_size=_VOCAB.value, overwrite=_OVERWRITE.value)
    print(report if report.files else f"{_SOURCE.value} is already prepared in {_DATA_DIR.value} "
          "(pass --overwrite to rebuild)")
    for split in data.BUILDERS[_SOURCE.value].SPLIT_FILES:
        try:
            source = data.PreparedSource(_SOURCE.value, split, _DATA_DIR.value)
        except (ValueError, KeyError):
            continue
        print(f"\n{split}: {len(source)} examples")
        for i in range(min(_SHOW.value, len(source))):
            print("  " + tokenizer.render(encode_example(source[i], tokenizer).tokens).replace("\n", "\n  "))


def _measure(tokenizer: data.Tokenizer) -> None:
    source = data.make_source(data.SourceSpec(_SOURCE.value, 1.0), size=_NUM.value, seed=_SEED.value)
    lengths, steps, dropped = [], collections.Counter(), 0
    for i in tqdm.tqdm(range(len(source)), desc=_SOURCE.value, unit="example"):
        encoded = encode_example(source[i], tokenizer)
        if len(encoded) > _MAX_LENGTH.value:
            dropped += 1
            continue
        lengths.append(len(encoded))
        steps[encoded.num_steps] += 1
    kept = len(lengths)
    print(f"{_SOURCE.value}: {len(source)} examples, kept {kept}, dropped {dropped} longer than "
          f"{_MAX_LENGTH.value} tokens")
    if kept:
        print(f"tokens per example: mean {np.mean(lengths):.1f}, max {max(lengths)}; "
              f"steps: {dict(sorted(steps.items()))}")
    for i in range(min(_SHOW.value, len(source))):
        print("  " + tokenizer.render(encode_example(source[i], tokenizer).tokens).replace("\n", "\n  "))


def main(argv):
    del argv
    tokenizer = data.Tokenizer.load(_VOCAB.value)
    if _SOURCE.value in data.BUILDERS:
        _prepare(tokenizer)
    else:
        _measure(tokenizer)


if __name__ == "__main__":
    flags.mark_flag_as_required("source")
    app.run(main)
