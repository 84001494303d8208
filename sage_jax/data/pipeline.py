"""grain pipelines: from a `Mixture` of sources to fixed-shape training batches that resume exactly.

Per source: `MapDataset.source -> [shard_index::shard_count] -> shuffle(seed) -> repeat -> encode`; then the
sources are mixed by weight (`MapDataset.mix`), and `to_iter_dataset().batch(...)` stacks examples. Everything
before batching is random access and a pure function of `(seed, index)`, so grain's iterator state is a single
position (`{"next_index": n}`, JSON-serialisable), and `iterator.set_state(state)` on a fresh iterator yields
exactly the batches that would have come next. Hosts take disjoint index slices of every source.

Padding, not packing: each example sits alone in its row, padded with `<pad>` to `seq_len`. The model's forward
has no per-document attention mask, so packing would let one example attend to another, and the per-example
structure the analyses need (step indices, the `[max_steps, seq_len]` dependency tensor, one question per row)
would have to be split again. Reasoning examples here are short and similar in length, so padding wastes little.

An example longer than `seq_len`, or with more than `max_steps` steps, is dropped and counted
(`DataPipeline.dropped`), never truncated.

Batch (`B = batch_size`, `T = seq_len`, `S = max_steps`):
  tokens      [B, T] int32    ids in the `sage_jax.special` layout, `<pad>` (0) after the example.
  segments    [B, T] int8     `Segment` ids (0 pad, 1 prompt, 2 rationale, 3 answer, 4 explanation).
  loss_mask   [B, T] float32  1 where token t is a training target (predicted from position t-1): its segment is
                              in `Mixture.loss_segments`; never at position 0.
  step_index  [B, T] int32    rationale step of each token, -1 elsewhere.
  step_deps   [B, S, T] bool  step k depends on token t (question or earlier-step tokens); zero when unknown.
  has_deps    [B] bool        whether the example declares dependencies.
  source      [B] int32       index of the example's source in `Mixture.sources`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional

import grain
import numpy as np

from sage_jax.data.mixture import Mixture
from sage_jax.data.schema import Example, encode_example
from sage_jax.data.sources import ExampleSource, make_source
from sage_jax.data.tokenizer import Tokenizer
from sage_jax.layout import Segment


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Static settings of a data pipeline.

    Attributes:
      seq_len: tokens per row (the model's context).
      batch_size: rows per batch (per host).
      max_steps: rows of the step-dependency tensor; examples with more steps are dropped.
      seed: shuffle seed and the seed of generated sources.
      shard_index, shard_count: this host's slice of every source (`jax.process_index()`, `process_count()`).
      source_size: number of distinct items of each generated source.
      num_epochs: passes over each source; None repeats forever.
      data_dir: where `prepared/..` sources live.
    """

    seq_len: int = 256
    batch_size: int = 8
    max_steps: int = 16
    seed: int = 0
    shard_index: int = 0
    shard_count: int = 1
    source_size: int = 1_000_000
    num_epochs: Optional[int] = None
    data_dir: Optional[str] = None

    def __post_init__(self):
        for field in ("seq_len", "batch_size", "max_steps", "shard_count", "source_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"PipelineConfig.{field} must be a positive integer, got {value!r}")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"PipelineConfig.shard_index={self.shard_index} must be in [0, {self.shard_count})")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError(f"PipelineConfig.num_epochs must be positive or None, got {self.num_epochs!r}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"PipelineConfig.seed must be in [0, 2**31), got {self.seed!r}")


class _Encoder:
    """Example -> fixed-shape arrays, or None (dropped and counted) when it does not fit."""

    def __init__(self, tokenizer: Tokenizer, config: PipelineConfig, loss_segments: tuple[Segment, ...],
                 source_id: int, source_name: str, dropped: collections.Counter):
        self._tokenizer, self._config = tokenizer, config
        self._loss_segments = np.asarray(loss_segments, np.int8)
        self._source_id, self._source_name, self._dropped = source_id, source_name, dropped

    def __call__(self, example: Example) -> Optional[dict[str, np.ndarray]]:
        cfg = self._config
        encoded = encode_example(example, self._tokenizer)
        n = len(encoded)
        if n > cfg.seq_len:
            self._dropped[(self._source_name, f"longer than seq_len={cfg.seq_len}")] += 1
            return None
        if encoded.num_steps > cfg.max_steps:
            self._dropped[(self._source_name, f"more than max_steps={cfg.max_steps} steps")] += 1
            return None
        tokens = np.zeros(cfg.seq_len, np.int32)
        tokens[:n] = encoded.tokens
        segments = np.zeros(cfg.seq_len, np.int8)
        segments[:n] = encoded.segments
        step_index = np.full(cfg.seq_len, -1, np.int32)
        step_index[:n] = encoded.step_index
        step_deps = np.zeros((cfg.max_steps, cfg.seq_len), bool)
        if encoded.step_deps is not None:
            step_deps[: encoded.num_steps, :n] = encoded.step_deps
        targets = np.isin(segments, self._loss_segments).astype(np.float32)
        targets[0] = 0.0  # nothing predicts <bos>
        return {"tokens": tokens, "segments": segments, "loss_mask": targets, "step_index": step_index,
                "step_deps": step_deps, "has_deps": np.asarray(encoded.step_deps is not None),
                "source": np.asarray(self._source_id, np.int32)}


@dataclasses.dataclass
class DataPipeline:
    """A batched grain dataset and the process-local count of dropped examples by `(source, reason)`.

    `iter(pipeline.dataset)` gives a grain `DatasetIterator`; `get_state()` / `set_state(state)` save and restore
    its position (save the state beside the model checkpoint).
    """

    dataset: grain.IterDataset
    dropped: collections.Counter
    sources: tuple[ExampleSource, ...]

    def __iter__(self) -> grain.DatasetIterator:
        return iter(self.dataset)


def _source_seed(seed: int, source_id: int) -> int:
    return int(np.random.SeedSequence([seed, source_id]).generate_state(1)[0])


def make_pipeline(mixture: Mixture, tokenizer: Tokenizer, config: PipelineConfig,
                  sources: Optional[tuple[ExampleSource, ...]] = None) -> DataPipeline:
    """Training batches from `mixture` (see the module docstring for the batch layout).

    Args:
      mixture: sources, weights and loss segments.
      tokenizer: the tokenizer (its `vocab_size` must match the model's).
      config: shapes, seed, sharding.
      sources: already-built sources, one per `mixture.sources` entry, in place of `make_source`.
    """
    if sources is None:
        sources = tuple(make_source(spec, size=config.source_size, seed=_source_seed(config.seed, i),
                                    data_dir=config.data_dir) for i, spec in enumerate(mixture.sources))
    if len(sources) != len(mixture.sources):
        raise ValueError(f"make_pipeline: {len(sources)} sources for {len(mixture.sources)} mixture entries")
    dropped: collections.Counter = collections.Counter()
    parts = []
    for i, (spec, source) in enumerate(zip(mixture.sources, sources)):
        if len(source) < config.shard_count:
            raise ValueError(f"source {spec.name!r} has {len(source)} items, fewer than "
                             f"shard_count={config.shard_count}")
        ds = grain.MapDataset.source(source)[config.shard_index::config.shard_count]
        ds = ds.shuffle(seed=_source_seed(config.seed, i)).repeat(config.num_epochs)
        parts.append(ds.map(_Encoder(tokenizer, config, mixture.loss_segments, i, spec.name, dropped)))
    mixed = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, list(mixture.weights))
    # Examples are made in the caller's thread: the sources are in memory, and grain's default read-ahead (16
    # threads, 500 examples) cost the training loop about 30 ms a step on 2 cores, in GIL contention and in
    # polling its futures (300 steps of the demo's stage 2: 54.6 s instead of 64.0 s; the same batches).
    read = grain.ReadOptions(num_threads=0)
    dataset = mixed.to_iter_dataset(read).batch(config.batch_size, drop_remainder=True)
    return DataPipeline(dataset=dataset, dropped=dropped, sources=tuple(sources))


def loss_mask(segments: np.ndarray, parts: tuple[Segment, ...]) -> np.ndarray:
    """`[..., T]` float32 mask of the tokens whose segment is in `parts` (e.g. explanation tokens only)."""
    return np.isin(segments, np.asarray(parts, np.int8)).astype(np.float32)


def batch_spec(config: PipelineConfig) -> dict[str, Any]:
    """Shape and dtype of every batch field, for `jax.eval_shape` or sharding specs."""
    b, t, s = config.batch_size, config.seq_len, config.max_steps
    return {"tokens": ((b, t), np.int32), "segments": ((b, t), np.int8), "loss_mask": ((b, t), np.float32),
            "step_index": ((b, t), np.int32), "step_deps": ((b, s, t), np.bool_), "has_deps": ((b,), np.bool_),
            "source": ((b,), np.int32)}
