"""grain pipelines: determinism, exact resume, disjoint host shards, loss masks, dependency tensors, drops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sage_jax.data.mixture import Mixture, SourceSpec, default_mixture
from sage_jax.data.pipeline import PipelineConfig, batch_spec, loss_mask, make_pipeline
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource
from sage_jax.data.schema import Example, encode_example
from sage_jax.data.sources import make_source
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.layout import Segment

SMALL = PipelineConfig(seq_len=64, batch_size=4, max_steps=6, source_size=1000)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(512)


class Numbered:
    """Item i is the question "item i"; `long_every` makes every such item too long for the context."""

    def __init__(self, size: int, long_every: int = 0):
        self.size, self.long_every = size, long_every

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        pad = " x" * 100 if self.long_every and i % self.long_every == 0 else ""
        return Example(question=f"item {i}{pad}", steps=(f"step of {i}",), answer=str(i))


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _item_ids(tok, batches):
    return [int(tok.render(row).split("item ")[1].split("<")[0]) for b in batches for row in b["tokens"]]


def test_same_seed_same_batches_other_seed_other_batches(tok):
    mixture = default_mixture(2)
    first = _take(iter(make_pipeline(mixture, tok, SMALL)), 3)
    _assert_batches_equal(first, _take(iter(make_pipeline(mixture, tok, SMALL)), 3))
    other = _take(iter(make_pipeline(mixture, tok, PipelineConfig(**{**SMALL.__dict__, "seed": 1}))), 3)
    assert not all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, other))


def test_restored_iterator_yields_exactly_the_next_batches(tok):
    mixture = default_mixture(3)
    iterator = iter(make_pipeline(mixture, tok, SMALL))
    _take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))  # the state survives a round trip through a file
    expected = _take(iterator, 3)
    resumed = iter(make_pipeline(mixture, tok, SMALL))
    resumed.set_state(state)
    _assert_batches_equal(expected, _take(resumed, 3))
    assert not np.array_equal(expected[0]["tokens"], _take(iter(make_pipeline(mixture, tok, SMALL)), 1)[0]["tokens"])


def test_two_hosts_get_disjoint_shards_covering_the_source(tok):
    mixture = Mixture(sources=(SourceSpec("custom/numbered", 1.0),))
    seen = []
    for host in range(2):
        config = PipelineConfig(seq_len=64, batch_size=4, num_epochs=1, shard_index=host, shard_count=2)
        seen.append(_item_ids(tok, list(make_pipeline(mixture, tok, config, sources=(Numbered(40),)))))
    assert len(seen[0]) == len(seen[1]) == 20
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))


def test_loss_masks_and_segments(tok):
    batch = next(iter(make_pipeline(default_mixture(3), tok, PipelineConfig(seq_len=256, batch_size=4))))
    segments, mask = batch["segments"], batch["loss_mask"]
    expected = np.isin(segments, [Segment.RATIONALE, Segment.ANSWER, Segment.EXPLANATION]).astype(np.float32)
    np.testing.assert_array_equal(mask, expected)
    assert (segments == Segment.EXPLANATION).any(axis=1).all()
    assert (mask[batch["tokens"] == 0] == 0).all() and (mask[:, 0] == 0).all()
    np.testing.assert_array_equal(loss_mask(segments, (Segment.EXPLANATION,)),
                                  (segments == Segment.EXPLANATION).astype(np.float32))
    stage1 = next(iter(make_pipeline(default_mixture(1), tok, SMALL)))
    assert {k: (v.shape, v.dtype) for k, v in stage1.items()} == {
        k: (shape, np.dtype(dtype)) for k, (shape, dtype) in batch_spec(SMALL).items()}
    np.testing.assert_array_equal(stage1["loss_mask"][:, 1:], (stage1["tokens"][:, 1:] != 0).astype(np.float32))


def test_step_dependency_tensor_matches_the_encoding(tok):
    source = ProceduralSource(ChainSumKnobs(), size=8, seed=0)
    mixture = Mixture(sources=(SourceSpec("procedural/chain_sum", 1.0),))
    config = PipelineConfig(seq_len=64, batch_size=8, max_steps=6, num_epochs=1)
    batch = next(iter(make_pipeline(mixture, tok, config, sources=(source,))))
    assert batch["step_deps"].shape == (8, 6, 64) and batch["has_deps"].all()
    for row in range(8):
        n = int((batch["tokens"][row] != 0).sum())
        example = next(source[i] for i in range(8) if np.array_equal(encode_example(source[i], tok).tokens,
                                                                      batch["tokens"][row, :n]))
        encoded = encode_example(example, tok)
        steps = encoded.num_steps
        np.testing.assert_array_equal(batch["step_deps"][row, :steps, :n], encoded.step_deps)
        assert not batch["step_deps"][row, steps:].any() and not batch["step_deps"][row, :, n:].any()
        np.testing.assert_array_equal(batch["step_index"][row, :n], encoded.step_index)
        assert (batch["step_index"][row, n:] == -1).all()


def test_too_long_examples_are_dropped_and_counted(tok):
    mixture = Mixture(sources=(SourceSpec("custom/numbered", 1.0),))
    config = PipelineConfig(seq_len=64, batch_size=4, num_epochs=1)
    pipeline = make_pipeline(mixture, tok, config, sources=(Numbered(40, long_every=5),))
    ids = _item_ids(tok, list(pipeline))
    assert sorted(ids) == [i for i in range(40) if i % 5]
    assert pipeline.dropped == {("custom/numbered", "longer than seq_len=64"): 8}


def test_mixture_weights_and_validation(tok):
    mixture = Mixture(sources=(SourceSpec("a/one", 3.0), SourceSpec("b/two", 1.0)))
    config = PipelineConfig(seq_len=64, batch_size=8)
    batches = _take(iter(make_pipeline(mixture, tok, config, sources=(Numbered(100), Numbered(100)))), 5)
    counts = np.bincount(np.concatenate([b["source"] for b in batches]), minlength=2)
    assert counts.tolist() == [30, 10]
    with pytest.raises(ValueError, match="weight must be a positive finite number"):
        SourceSpec("procedural/chain_sum", 0.0)
    with pytest.raises(ValueError, match=r"names \['a/x'\] twice with the same flags"):
        Mixture(sources=(SourceSpec("a/x", 1.0), SourceSpec("a/x", 2.0)))
    assert len(Mixture(sources=(SourceSpec("a/x", 1.0), SourceSpec("a/x", 2.0, explain=True))).sources) == 2
    with pytest.raises(ValueError, match=r"shard_index=2 must be in \[0, 2\)"):
        PipelineConfig(shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="unknown curriculum stage 4"):
        default_mixture(4)
    with pytest.raises(ValueError, match="unknown kind 'custom'"):
        make_pipeline(Mixture(sources=(SourceSpec("custom/numbered", 1.0),)), tok, config)


def test_source_specs_resolve_with_multiple_choice_and_explanations():
    spec = SourceSpec("procedural/variable_chain", 1.0, explain=True, multiple_choice=True)
    example = make_source(spec, size=5, seed=0)[2]
    assert len(example.options) == 5 and example.answer in "ABCDE"
    assert example.explanation.startswith("Step 1 depends on '")
    assert example == make_source(spec, size=5, seed=0)[2]
    with pytest.raises(ValueError, match="needs a data_dir"):
        make_source(SourceSpec("prepared/sage_gsm8k/train", 1.0), size=5, seed=0)
    with pytest.raises(ValueError, match="unknown procedural source 'procedural/nope'"):
        make_source(SourceSpec("procedural/nope", 1.0), size=5, seed=0)
