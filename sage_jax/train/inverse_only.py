"""An Inverse Analysis Layer (IAL) trained for any model with the model frozen: amortised analysis for any model.

Stage 3 (`sage_jax.train.consistency.IALConsistency`) trains the IAL beside the model it explains. An imported
model (`sage_jax.interop`) is not trained here, so its IAL learns alone: the model is frozen, and what the IAL
learns from depends only on the model and the problems. That makes the teachers computable once:

1. `compute_teachers` runs, per problem, the model once with attention and value contributions recorded (the
   IAL's inputs, `sage_jax.nn.inverse.inverse_features`, and the forward's next-token logits at the positions
   that predict step tokens) and the exact Eq. 7 map (`sage_jax.interpret.significance.significance_batch`:
   one forward and one vjp batched over the steps). It works through the problems `teacher_batch` at a time
   under one jit (a `[T, V]` logit block per problem is what bounds memory with a 49k vocabulary) and writes
   each chunk to `<directory>/chunk_<i>.npz`, so an interrupted computation resumes at its first missing chunk.
   `<directory>/meta.json` records a digest of the model, the problems and the settings; a cache computed for
   anything else is refused, never mixed in.
2. `train_inverse_only` fits the IAL to the cache with stage 3's loss itself (`consistency_terms`: the KL of
   the IAL's reconstruction to the forward's next-token distribution plus `map_weight` x the Bernoulli KL of
   its map to the exact one), AdamW on a warmup + cosine schedule (`sage_jax.train.optim`), the project's
   loop, checkpointer and progress line (`sage_jax.train.loop`, `.checkpoint`, `.metrics`). The model's
   parameters are no input of the train step, so nothing can reach them.
3. `load_inverse` reads the trained IAL back for `sage_jax.interpret.amortised.analyse` / `explain`.

Keys: one key is split into the IAL's initialisation and the data order. The batch of step `t` depends only on
the order key and `t` (epoch `t // batches_per_epoch` is a fresh permutation of the problems, its last partial
batch dropped), so a resumed run draws exactly the batches of an uninterrupted one. The order key is kept as
`TrainState.rng` and never split: the step itself draws nothing.

Shapes: `N` problems, `T` tokens, `S` steps, `Q` positions predicting step tokens (padded to the most any problem
has), `F`/`P` the IAL's token/pair feature widths, `V` the vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sage_jax.config import SageConfig
from sage_jax.interpret.significance import WEIGHTINGS, check_layer, significance_batch
from sage_jax.layout import Steps
from sage_jax.model import forward
from sage_jax.nn.inverse import InverseAnalysisLayer, InverseConfig, InverseFeatures, init_inverse_params, \
    inverse_features
from sage_jax.train import compat
from sage_jax.train.checkpoint import Checkpointer
from sage_jax.train.consistency import consistency_terms
from sage_jax.train.lock import WorkdirLock
from sage_jax.train.loop import train
from sage_jax.train.metrics import MetricsWriter, Progress, Reporter, Throughput
from sage_jax.train.optim import OptimConfig, make_optimizer
from sage_jax.train.state import TrainState

log = logging.getLogger(__name__)

Array = jax.Array

META_FILE = "meta.json"
INVERSE_FILE = "inverse.json"
"""Written beside the checkpoints: the IAL's shape and the model it was trained for (what `load_inverse` reads)."""


@dataclasses.dataclass(frozen=True)
class InverseOnlyConfig:
    """Static settings of an IAL trained alone (hashable: part of the train step's jit key).

    Attributes:
      steps: updates to train for.
      batch_size: problems per update.
      peak_lr: AdamW's peak learning rate (stage 3 trains its IAL at 3e-3).
      warmup_steps: linear warmup before the cosine decay.
      map_weight: weight of the map term in the loss (stage 3's `ConsistencyConfig.map_weight`).
      layer: the layer whose hidden states the exact map differentiates (0: token embeddings).
      weighting: the exact map's `w_ij`, "attention" or "rollout".
      teacher_batch: problems per jitted chunk of the teacher computation (memory: `teacher_batch` `[T, V]` logit
        blocks and as many batched backward passes).
      save_every: checkpoint every this many steps (0: only at the end).
      progress_every: draw the progress line every this many steps.
    """

    steps: int = 300
    batch_size: int = 8
    peak_lr: float = 3e-3
    warmup_steps: int = 30
    map_weight: float = 1.0
    layer: int = 0
    weighting: str = "attention"
    teacher_batch: int = 4
    save_every: int = 100
    progress_every: int = 10

    def __post_init__(self):
        for name in ("steps", "batch_size", "teacher_batch", "progress_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"InverseOnlyConfig.{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "save_every", "layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"InverseOnlyConfig.{name} must be an integer >= 0, got {value!r}")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"InverseOnlyConfig.warmup_steps={self.warmup_steps} must be below steps={self.steps}")
        if not 0 < self.peak_lr < float("inf"):
            raise ValueError(f"InverseOnlyConfig.peak_lr must be a positive number, got {self.peak_lr!r}")
        if not 0 <= self.map_weight < float("inf"):
            raise ValueError(f"InverseOnlyConfig.map_weight must be a finite number >= 0, got {self.map_weight!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"InverseOnlyConfig.weighting={self.weighting!r}: choose one of {WEIGHTINGS}")

    @property
    def optim(self) -> OptimConfig:
        """The optimizer: `sage_jax.train.optim` defaults with this config's rate, warmup and length."""
        return OptimConfig(peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, total_steps=self.steps)


class Teachers(NamedTuple):
    """What the IAL learns from, per problem, computed once with the model frozen (module docstring).

    Attributes:
      token_features: `[N, T, F]` float32, `InverseFeatures.tokens`.
      pair_features: `[N, S, T, P]` float32, `InverseFeatures.pairs`.
      step_mask: `[N, S, T]` bool, the tokens of each step (all False for padding steps).
      visible: `[N, S, T]` bool, `InverseFeatures.visible`.
      exact: `[N, S, T]` float32, the exact Eq. 7 maps (`Significance.score`).
      attention_map: `[N, S, T]` float32, the map's attention factor alone (`w_ij` on the step's sources,
        normalised by the problem's maximum): the free baseline that an IAL has to beat.
      map_where: `[N, S, T]` bool, each real step's source tokens (where the map term counts).
      query_index: `[N, Q]` int32, the positions whose logits predict step tokens, in order, padded with 0.
      query_valid: `[N, Q]` bool, which entries of `query_index` are real.
      forward_logits: `[N, Q, V]` float16, the forward's logits at `query_index`.
    """

    token_features: np.ndarray
    pair_features: np.ndarray
    step_mask: np.ndarray
    visible: np.ndarray
    exact: np.ndarray
    attention_map: np.ndarray
    map_where: np.ndarray
    query_index: np.ndarray
    query_valid: np.ndarray
    forward_logits: np.ndarray

    @property
    def n_problems(self) -> int:
        return self.token_features.shape[0]

    def features(self) -> InverseFeatures:
        """The IAL's inputs, `[N]` leading."""
        return InverseFeatures(self.token_features, self.pair_features, self.step_mask, self.visible)


def compute_teachers(params: Any, cfg: SageConfig, tokens: np.ndarray, steps: Steps, directory: str | os.PathLike,
                     config: InverseOnlyConfig = InverseOnlyConfig(),
                     log_fn: Callable[[str], None] = log.info) -> Teachers:
    """The teachers of `N` problems, computed chunk by chunk into `directory` (or read back from it).

    Args:
      params: the frozen model's parameters (only read).
      cfg: its config.
      tokens: `[N, T]` the problems' chains, right-padded (`sage_jax.evaluate.explanations.encode_true_chains`).
      steps: `Steps` `[N, S, T]` of those chains (padding steps all False).
      directory: where the chunks and `meta.json` live (created if missing).
      config: `layer`, `weighting` and `teacher_batch` are read.
      log_fn: receives one progress line per chunk (rate and ETA).

    Returns:
      `Teachers` of the `N` problems, in order.

    Raises:
      ValueError: `tokens` and `steps` disagree in shape, a problem has no step token, a token id lies outside
        the vocabulary, or `directory` holds teachers of other problems, another model or other settings.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens has shape {tokens.shape}; expected [N, T]")
    mask = np.asarray(steps.mask, bool)
    if mask.ndim != 3 or mask.shape[0] != tokens.shape[0] or mask.shape[2] != tokens.shape[1]:
        raise ValueError(f"steps.mask has shape {mask.shape}; expected [N, S, T] = [{tokens.shape[0]}, S, "
                         f"{tokens.shape[1]}]")
    if not mask.any(axis=(1, 2)).all():
        empty = np.flatnonzero(~mask.any(axis=(1, 2))).tolist()
        raise ValueError(f"problems {empty[:10]} have no step tokens: nothing to analyse")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"tokens hold ids outside [0, {cfg.vocab_size}) of model {cfg.name!r}")
    check_layer(cfg, config.layer)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n, chunk = tokens.shape[0], config.teacher_batch
    n_queries = int(_queries(mask).sum(-1).max())
    meta = {"digest": _digest(params, cfg, tokens, mask, config), "n": n, "teacher_batch": chunk,
            "n_queries": n_queries, "model": cfg.name, "layer": config.layer, "weighting": config.weighting}
    meta_path = directory / META_FILE
    if meta_path.exists():
        recorded = json.loads(meta_path.read_text(encoding="utf-8"))
        if recorded != meta:
            raise ValueError(f"{directory} holds teachers of other problems, another model or other settings "
                             f"(recorded {_describe_meta(recorded)}; asked {_describe_meta(meta)}); delete it or "
                             "choose another directory")
    else:
        _write_atomic(meta_path, json.dumps(meta, indent=1))
    steps_np = Steps(mask, np.asarray(steps.starts, np.int32), np.asarray(steps.ends, np.int32))
    starts = list(range(0, n, chunk))
    timer = _Eta(len(starts))
    parts = []
    for index, start in enumerate(starts):
        path = directory / f"chunk_{index:05d}.npz"
        if path.exists():
            with np.load(path) as saved:
                parts.append(Teachers(**{name: saved[name] for name in Teachers._fields}))
            timer.skip()
            continue
        rows = slice(start, min(start + chunk, n))
        piece = _pad_rows(tokens[rows], jax.tree_util.tree_map(lambda x: x[rows], steps_np), chunk)
        out = jax.device_get(_teach(params, cfg, *piece, layer=config.layer, weighting=config.weighting,
                                    n_queries=n_queries))
        taught = Teachers(*(np.asarray(x)[:rows.stop - rows.start] for x in out))
        _save_npz(path, taught._asdict())
        parts.append(taught)
        log_fn(f"teachers: chunk {index + 1}/{len(starts)} ({rows.stop}/{n} problems) | {timer.tick()}")
    return Teachers(*(np.concatenate(field) for field in zip(*parts)))


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "weighting", "n_queries"))
def _teach(params, cfg: SageConfig, tokens: Array, mask: Array, starts: Array, ends: Array, *, layer: int,
           weighting: str, n_queries: int) -> tuple:
    """The teachers of one chunk `tokens [B, T]`, `Steps` `[B, S, T]` (`Teachers`' fields, in order)."""
    steps = Steps(mask, starts, ends)
    out = forward(params, tokens, cfg, record=("attn", "value_norms"))
    features = inverse_features(out.hidden, out.trace, mask)
    exact = significance_batch(params, cfg, tokens, steps, layer=layer, weighting=weighting)
    where = steps.sources & mask.any(-1, keepdims=True)
    attention = exact.weight * where
    attention = attention / jnp.maximum(attention.max(axis=(1, 2), keepdims=True), 1e-30)
    queried = jnp.any(steps.queries, axis=1)  # [B, T]
    index = jnp.argsort(~queried, axis=-1, stable=True)[:, :n_queries].astype(jnp.int32)
    valid = jnp.take_along_axis(queried, index, axis=1)
    index = jnp.where(valid, index, 0)
    logits = jnp.take_along_axis(out.logits, index[..., None], axis=1).astype(jnp.float16)
    return (features.tokens, features.pairs, mask, features.visible, exact.score, attention, where, index, valid,
            logits)


def _queries(mask: np.ndarray) -> np.ndarray:
    """`[N, T]` bool: positions whose logits predict some step's token (`Steps.queries`, any step)."""
    shifted = np.zeros_like(mask)
    shifted[..., :-1] = mask[..., 1:]
    return shifted.any(axis=1)


def _pad_rows(tokens: np.ndarray, steps: Steps, rows: int) -> tuple:
    """The last chunk padded to `rows` problems (copies of its first), so every chunk compiles once."""
    extra = rows - tokens.shape[0]
    pad = lambda x: np.concatenate([x, np.repeat(x[:1], extra, axis=0)]) if extra else x  # noqa: E731
    return pad(tokens), pad(steps.mask), pad(steps.starts), pad(steps.ends)


def inverse_loss(inverse: Any, batch: Teachers, icfg: InverseConfig, map_weight: float
                 ) -> tuple[Array, dict[str, Array]]:
    """Stage 3's `L_consistency` (`consistency_terms`) of the IAL `inverse` on a batch of cached teachers.

    Args:
      inverse: the IAL's parameters.
      batch: `Teachers` of `B` problems.
      icfg: the IAL's shape.
      map_weight: weight of the map term.

    Returns:
      `(loss, {"consistency_kl", "consistency_map"})`.
    """
    predicted = InverseAnalysisLayer(icfg).apply({"params": inverse}, batch.features())
    reconstructed = jnp.take_along_axis(predicted.logits, batch.query_index[..., None], axis=1)  # [B, Q, V]
    return consistency_terms(batch.forward_logits, reconstructed, batch.query_valid, batch.exact,
                             predicted.significance, batch.map_where, map_weight=map_weight)


@functools.partial(jax.jit, static_argnames=("icfg", "config"), donate_argnames=("state",))
def inverse_train_step(state: TrainState, batch: Teachers, *, icfg: InverseConfig, config: InverseOnlyConfig
               ) -> tuple[TrainState, dict[str, Array]]:
    """One AdamW update of the IAL (`state.params`); a non-finite loss or gradient leaves `state` as it was and
    sets `metrics["finite"]` False (`sage_jax.train.loop` then stops), as the model's train step does."""
    (loss, parts), grads = jax.value_and_grad(inverse_loss, has_aux=True)(state.params, batch, icfg,
                                                                           config.map_weight)
    grad_norm = compat.tree_norm(grads)
    updates, opt_state = make_optimizer(config.optim).update(grads, state.opt_state, state.params)
    updated = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = jax.lax.cond(finite, lambda: updated, lambda: state)
    return new_state, {"loss": loss, **parts, "grad_norm": grad_norm, "finite": finite,
                       "tokens": jnp.asarray(batch.token_features.shape[0] * batch.token_features.shape[1],
                                             jnp.float32)}


def initial_state(cfg: SageConfig, key: Array, config: InverseOnlyConfig,
                  icfg: Optional[InverseConfig] = None) -> TrainState:
    """Step 0: fresh IAL parameters from `split(key)[0]`, the data-order key `split(key)[1]` as `rng`."""
    icfg = InverseConfig.from_sage(cfg) if icfg is None else icfg
    init_key, order_key = jax.random.split(key)
    params = init_inverse_params(cfg, init_key, icfg)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=make_optimizer(config.optim).init(params),
                      rng=order_key)


def batch_indices(order_key: Array, step: int, n_problems: int, batch_size: int) -> np.ndarray:
    """`[batch_size]` the problems of step `step` (module docstring: epochs of fresh permutations)."""
    per_epoch = n_problems // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, epoch), n_problems))
    return order[position * batch_size:(position + 1) * batch_size]


def train_inverse_only(teachers: Teachers, cfg: SageConfig, workdir: str | os.PathLike, key: Array,
                       config: InverseOnlyConfig = InverseOnlyConfig(), icfg: Optional[InverseConfig] = None,
                       progress: Optional[Progress] = None) -> TrainState:
    """Trains an IAL for the model `cfg` on cached teachers, checkpointing into `<workdir>/ckpt` and resuming
    from the newest checkpoint there.

    Args:
      teachers: `compute_teachers`' output for the training problems.
      cfg: the frozen model's config (the IAL's shape derives from it).
      workdir: the run's directory: `ckpt/`, `logs/metrics.jsonl` and `inverse.json` are written there; held
        with a `WorkdirLock` while training.
      key: split into the IAL's initialisation and the data order (module docstring).
      config: the run's settings.
      icfg: the IAL's shape (default `InverseConfig.from_sage(cfg)`).
      progress: the progress line (default: every `config.progress_every` steps, to stderr).

    Returns:
      The final `TrainState` (`params` are the IAL's).

    Raises:
      ValueError: fewer problems than `config.batch_size`, or teachers of another model's shape.
      sage_jax.train.lock.WorkdirLockedError: another run holds `workdir`.
    """
    icfg = InverseConfig.from_sage(cfg) if icfg is None else icfg
    n = teachers.n_problems
    if n < config.batch_size:
        raise ValueError(f"{n} problems cannot fill a batch of {config.batch_size}; compute more teachers or "
                         "lower batch_size")
    if teachers.token_features.shape[-1] != icfg.n_token_features:
        raise ValueError(f"the teachers have {teachers.token_features.shape[-1]} token features; the IAL of model "
                         f"{cfg.name!r} reads {icfg.n_token_features} (teachers of another model?)")
    if teachers.forward_logits.shape[-1] != icfg.vocab_size:
        raise ValueError(f"the teachers' logits cover {teachers.forward_logits.shape[-1]} tokens; model "
                         f"{cfg.name!r} has a vocabulary of {icfg.vocab_size}")
    workdir = pathlib.Path(workdir)
    with WorkdirLock(workdir):
        _write_atomic(workdir / INVERSE_FILE, json.dumps(
            {"inverse_config": dataclasses.asdict(icfg), "model": _model_identity(cfg),
             "config": dataclasses.asdict(config)}, indent=1))
        fresh = initial_state(cfg, key, config, icfg)
        with Checkpointer(workdir / "ckpt") as checkpointer:
            restored = checkpointer.restore_latest(fresh)
            state = fresh if restored is None else restored.state
            if restored is not None:
                log.info("resuming the IAL at step %d from %s", restored.step, restored.path)
            start = int(state.step)
            progress = Progress(config.steps, every=config.progress_every) if progress is None else progress
            step_fn = functools.partial(inverse_train_step, icfg=icfg, config=config)
            with MetricsWriter(workdir / "logs") as writer:
                order_key = jax.random.wrap_key_data(np.asarray(jax.random.key_data(state.rng)),
                                                     impl=jax.random.key_impl(state.rng))  # the step donates state
                return train(step_fn, state, _batches(teachers, order_key, start, config.batch_size),
                             num_steps=config.steps, checkpointer=checkpointer, save_every=config.save_every,
                             report=Reporter(Throughput(0.0), writer, progress))


def _batches(teachers: Teachers, order_key: Array, start: int, batch_size: int) -> Iterator[Teachers]:
    step = start
    while True:
        rows = batch_indices(order_key, step, teachers.n_problems, batch_size)
        yield Teachers(*(jnp.asarray(field[rows]) for field in teachers))
        step += 1


def load_inverse(workdir: str | os.PathLike, cfg: Optional[SageConfig] = None) -> tuple[Any, InverseConfig]:
    """The IAL trained in `workdir` (its newest checkpoint) and its shape, for `analyse(..., icfg=...)`.

    Args:
      workdir: a directory `train_inverse_only` trained into.
      cfg: the model it will analyse; when given, it must be the model the IAL was trained for.

    Raises:
      FileNotFoundError: `workdir` has no `inverse.json` or no checkpoint.
      ValueError: `cfg` is not the model the IAL was trained for.
    """
    workdir = pathlib.Path(workdir).expanduser()
    path = workdir / INVERSE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a directory an IAL was trained into "
                                "(sage_jax.train.inverse_only.train_inverse_only)")
    recorded = json.loads(path.read_text(encoding="utf-8"))
    icfg = InverseConfig(**recorded["inverse_config"])
    if cfg is not None and _model_identity(cfg) != recorded["model"]:
        raise ValueError(f"the IAL in {workdir} was trained for model {recorded['model']}; it cannot analyse "
                         f"{_model_identity(cfg)}")
    config = InverseOnlyConfig(**recorded["config"])
    target = jax.eval_shape(lambda: TrainState(
        step=jnp.zeros((), jnp.int32), params=(p := _init_shape(icfg)), opt_state=make_optimizer(config.optim).init(p),
        rng=jax.random.key(0)))
    with Checkpointer(workdir / "ckpt", read_only=True) as checkpointer:
        restored = checkpointer.restore_latest(target)
    if restored is None:
        raise FileNotFoundError(f"{workdir / 'ckpt'} holds no checkpoint: the IAL's training has not saved yet")
    return restored.state.params, icfg


def _init_shape(icfg: InverseConfig) -> Any:
    """IAL parameters of shape `icfg` (for `jax.eval_shape`: the restore target)."""
    features = InverseFeatures(jnp.zeros((1, 1, icfg.n_token_features)), jnp.zeros((1, 1, 1, icfg.n_pair_features)),
                               jnp.ones((1, 1, 1), bool), jnp.ones((1, 1, 1), bool))
    return InverseAnalysisLayer(icfg).init(jax.random.key(0), features)["params"]


def _model_identity(cfg: SageConfig) -> dict[str, Any]:
    """What an IAL depends on in its model: the name and the shapes its features and reconstruction have."""
    return {"name": cfg.name, "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads}


def _digest(params: Any, cfg: SageConfig, tokens: np.ndarray, mask: np.ndarray, config: InverseOnlyConfig) -> str:
    """SHA-256 of the model (config and every parameter's bytes), the problems and the teachers' settings."""
    h = hashlib.sha256()
    h.update(repr(cfg).encode())
    for leaf in jax.tree_util.tree_leaves(params):
        h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    h.update(tokens.tobytes())
    h.update(np.packbits(mask).tobytes())
    h.update(f"{mask.shape} {config.layer} {config.weighting}".encode())
    return h.hexdigest()


def _describe_meta(meta: dict) -> str:
    return (f"model {meta.get('model')!r}, {meta.get('n')} problems, layer {meta.get('layer')}, weighting "
            f"{meta.get('weighting')!r}, teacher_batch {meta.get('teacher_batch')}, digest "
            f"{str(meta.get('digest'))[:12]}")


def _write_atomic(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes the chunk whole or not at all (a killed run leaves no truncated chunk to read back)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class _Eta:
    """Rate and ETA of the chunks computed in this process: chunks read back from disk, and the first computed
    one (it compiles), do not count."""

    def __init__(self, total: int):
        self.total, self.done, self.computed, self.first = total, 0, 0, 0.0

    def skip(self) -> None:
        self.done += 1

    def tick(self) -> str:
        now = time.perf_counter()
        self.done += 1
        self.computed += 1
        if self.computed == 1:
            self.first = now
            return "compiled and ran the first chunk"
        rate = (self.computed - 1) / (now - self.first)
        return f"{rate * 60:.1f} chunks/min | ETA {(self.total - self.done) / rate / 60:.1f} min"


__all__ = ["InverseOnlyConfig", "Teachers", "batch_indices", "compute_teachers", "initial_state", "inverse_loss",
           "inverse_train_step", "load_inverse", "train_inverse_only"]
