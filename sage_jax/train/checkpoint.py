"""Checkpoints of a whole run with orbax: model, optimizer, step, PRNG key and the data iterator's state.

Layout: `<directory>/<step>/state` (the `TrainState` arrays, `StandardSave`; `inverse` only when the state
has Inverse Analysis Layer parameters) and `<directory>/<step>/meta`
(JSON: the step, the PRNG implementation, the caller's opaque data-iterator state). orbax writes each step
into a temporary directory and renames it when complete, so a step directory exists only once whole; saves
are asynchronous (the device-to-host copy happens before `save` returns, the writing in the background), and
only the last `keep` steps are kept.

Restoring goes to an abstract target with target shardings (`sage_jax.train.state.abstract_state`), so the
checkpoint may have been written on a different number of devices. `restore_latest` walks back from the
newest step: a checkpoint that fails to restore is logged and reported with its path and error, renamed to
`<step>.corrupt` (kept for inspection; orbax no longer counts it, so later saves at that step are not
skipped), and the previous one is used. If every checkpoint fails, that is an error, never a silent fresh
start.

The PRNG key is stored as its raw `key_data` and re-wrapped with the recorded implementation, because orbax
serialises plain arrays.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from typing import Any, Optional, Union

import jax
import orbax.checkpoint as ocp
from etils import epath

from sage_jax.train.state import TrainState

DataState = Union[None, bytes, dict, list, str, int, float]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be restored; the message lists each path and its error."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint.

    Attributes:
      state: the `TrainState`, laid out as the restore target asked.
      data_state: the data-iterator state given to `save`, as given (bytes stay bytes).
      step: the checkpoint's step.
      path: its directory.
      skipped: `(path, error)` of newer checkpoints that failed to restore (now renamed `*.corrupt`).
    """

    state: TrainState
    data_state: DataState
    step: int
    path: str
    skipped: tuple[tuple[str, str], ...] = ()


class Checkpointer:
    """Saves and restores `TrainState`s with their data-iterator state, under one directory."""

    def __init__(self, directory: Union[str, os.PathLike], *, keep: int = 3, async_save: bool = True):
        """Opens the checkpoints under `directory`.

        Args:
          directory: where step directories live; created if missing.
          keep: how many of the newest checkpoints to keep.
          async_save: write in a background thread after the device-to-host copy.
        """
        if keep < 1:
            raise ValueError(f"Checkpointer keep={keep} must be at least 1")
        self.directory = epath.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        """The steps with a complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def path(self, step: int) -> str:
        """The directory of the checkpoint of `step`."""
        return str(self.directory / str(step))

    def save(self, state: TrainState, data_state: DataState = None) -> int:
        """Writes `state` and `data_state` as the checkpoint of step `state.step`; returns that step.

        Args:
          state: the state to save. Its buffers may be donated to the next step as soon as this returns.
          data_state: the data iterator's state *after* the batch of the last applied step (JSON-able value
            or bytes), so that a restored run draws the next batch.

        A step that already has a checkpoint is not written again.
        """
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return step
        meta = {"step": step, "rng_impl": str(jax.random.key_impl(state.rng)), "data": _encode(data_state)}
        self._manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_savable(state)), meta=ocp.args.JsonSave(meta)))
        return step

    def restore_latest(self, target: TrainState) -> Optional[Restored]:
        """Restores the newest checkpoint that restores, onto `target`'s shapes and shardings.

        Args:
          target: a `TrainState` of arrays or `ShapeDtypeStruct`s (`abstract_state(cfg, mesh)`); leaves
            without a sharding restore onto the default device.

        Returns:
          The `Restored` checkpoint, or `None` when the directory holds none.

        Raises:
          CheckpointError: checkpoints exist but none restores.
        """
        self.wait()
        self._manager.reload()
        failures: list[tuple[str, str]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._restore(step, target)
            except Exception as error:  # corruption surfaces as many types (tensorstore, json, OS, value errors)
                failures.append((self.path(step), f"{type(error).__name__}: {error}"))
                log.warning("checkpoint %s failed to restore (%s); trying the previous one", *failures[-1])
                continue
            for path, _ in failures:
                _quarantine(path)
            self._manager.reload()
            return dataclasses.replace(restored, skipped=tuple(failures))
        if failures:
            raise CheckpointError("no checkpoint could be restored:\n" +
                                  "\n".join(f"  {path}: {error}" for path, error in failures))
        return None

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _restore(self, step: int, target: TrainState) -> Restored:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_savable_target(target)), meta=ocp.args.JsonRestore()))
        saved, meta = out["state"], out["meta"]
        rng = jax.random.wrap_key_data(saved["rng"], impl=meta["rng_impl"])
        state = TrainState(step=saved["step"], params=saved["params"], opt_state=saved["opt_state"], rng=rng,
                           inverse=saved.get("inverse"))
        return Restored(state=state, data_state=_decode(meta["data"]), step=step, path=self.path(step))


def _savable(state: TrainState) -> dict[str, Any]:
    saved = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
             "rng": jax.random.key_data(state.rng)}
    if state.inverse is not None:  # absent otherwise: model-only checkpoints keep their layout
        saved["inverse"] = state.inverse
    return saved


def _savable_target(target: TrainState) -> dict[str, Any]:
    """The abstract tree `_savable` would give for `target`, every leaf with a sharding."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def abstract(leaf, shape_of=None):
        sharding = getattr(leaf, "sharding", None) or default
        shape = shape_of if shape_of is not None else leaf
        return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding)

    tree = {"step": target.step, "params": target.params, "opt_state": target.opt_state}
    if target.inverse is not None:
        tree["inverse"] = target.inverse
    out = jax.tree_util.tree_map(abstract, tree)
    out["rng"] = abstract(target.rng, jax.eval_shape(jax.random.key_data, target.rng))
    return out


def _encode(data_state: DataState) -> dict[str, Any]:
    if isinstance(data_state, bytes):
        return {"kind": "bytes", "value": base64.b64encode(data_state).decode("ascii")}
    try:
        json.dumps(data_state)
    except (TypeError, ValueError) as error:
        raise ValueError(f"data_state must be bytes or JSON-serialisable, got {type(data_state).__name__}: "
                         f"{error}") from error
    return {"kind": "json", "value": data_state}


def _decode(encoded: dict[str, Any]) -> DataState:
    if encoded["kind"] == "bytes":
        return base64.b64decode(encoded["value"])
    return encoded["value"]


def _quarantine(path: str) -> None:
    """Renames a checkpoint that failed to restore to `<path>.corrupt` (`.corrupt1`, ... if taken)."""
    source = epath.Path(path)
    if not source.exists():
        return
    suffix, n = ".corrupt", 0
    while epath.Path(path + suffix).exists():
        n += 1
        suffix = f".corrupt{n}"
    source.rename(epath.Path(path + suffix))
    log.warning("renamed the checkpoint that failed to restore to %s", path + suffix)
