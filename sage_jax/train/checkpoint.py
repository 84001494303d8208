"""Checkpoints of a whole run with orbax: model, optimizer, step, PRNG key and the data iterator's state.

Layout: `<directory>/<step>/state` (the `TrainState` arrays, `StandardSave`; `inverse` only when the state
has Inverse Analysis Layer parameters) and `<directory>/<step>/meta`
(JSON: the step, the PRNG implementation, the caller's opaque data-iterator state). orbax writes each step
into a temporary directory and renames it when complete, so a step directory exists only once whole; saves
are asynchronous (the device-to-host copy happens before `save` returns, the writing in the background), and
`check()` raises a failed background write (a full disk, say) at the next step rather than the next save.

Checksums: `meta` holds a SHA-256 digest of every array (by pytree path), checked on restore, so a flipped
bit that still decodes is caught as corruption and never restored as changed values. Arrays that this process
cannot see whole (multi-host sharding) are not digested.

Last good checkpoint: the loop reports each step's loss with `observe(step, loss)`. Step `s`'s loss is computed
with the parameters of checkpoint `s`, so it judges that checkpoint: healthy when finite and at most
`divergence_factor` times the first loss seen in this directory. Judgements live in `<directory>/health.json`.
Rotation keeps the newest `keep` checkpoints and, always, the newest healthy one (the last good), so a
diverging run can never rotate its last good state away. `restore_latest` passes over checkpoints judged
unhealthy (a run that diverged resumes from its last good state, e.g. with a lower learning rate); a checkpoint
not judged yet (the last one of a run) is restored.

Restoring goes to an abstract target with target shardings (`sage_jax.train.state.abstract_state`), so the
checkpoint may have been written on a different number of devices. `restore_latest` walks back from the
newest step: a checkpoint that fails to restore is logged and reported with its path and error, renamed to
`<step>.corrupt` (kept for inspection; orbax no longer counts it, so later saves at that step are not
skipped), and the previous one is used; an unhealthy one is renamed `<step>.diverged`. If every checkpoint
fails, that is an error, never a silent fresh start. A `read_only` Checkpointer (what analyses use) renames,
deletes and writes nothing.

The PRNG key is stored as its raw `key_data` and re-wrapped with the recorded implementation, because orbax
serialises plain arrays.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import os
from typing import Any, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from sage_jax.train.state import TrainState

DataState = Union[None, bytes, dict, list, str, int, float]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be restored; the message lists each path and its error."""


class ChecksumError(ValueError):
    """A restored array does not match the digest its checkpoint recorded; the message names the pytree path."""


HEALTH_FILE = "health.json"


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint.

    Attributes:
      state: the `TrainState`, laid out as the restore target asked.
      data_state: the data-iterator state given to `save`, as given (bytes stay bytes).
      step: the checkpoint's step.
      path: its directory.
      skipped: `(path, error)` of newer checkpoints that failed to restore or were judged unhealthy.
      fingerprint: SHA-256 of the checkpoint's per-array digests: the same arrays give the same fingerprint
        wherever they are stored, so a later stage can tell whether the checkpoint it started from is still
        its predecessor's final one (`sage_jax.train.curriculum.handoff`). Empty for a checkpoint without
        digests.
    """

    state: TrainState
    data_state: DataState
    step: int
    path: str
    skipped: tuple[tuple[str, str], ...] = ()
    fingerprint: str = ""


class Checkpointer:
    """Saves and restores `TrainState`s with their data-iterator state, under one directory."""

    def __init__(self, directory: Union[str, os.PathLike], *, keep: int = 3, async_save: bool = True,
                 divergence_factor: float = 10.0, read_only: bool = False):
        """Opens the checkpoints under `directory`.

        Args:
          directory: where step directories live; created if missing (unless `read_only`).
          keep: how many of the newest checkpoints to keep (the last good one is kept besides).
          async_save: write in a background thread after the device-to-host copy.
          divergence_factor: a checkpoint whose loss exceeds this multiple of the first loss seen is unhealthy.
          read_only: never write, rename or delete anything (`save` raises).
        """
        if keep < 1:
            raise ValueError(f"Checkpointer keep={keep} must be at least 1")
        if not divergence_factor > 1:
            raise ValueError(f"Checkpointer divergence_factor={divergence_factor} must be greater than 1")
        self.directory = epath.Path(directory).absolute()
        self.keep, self.divergence_factor, self.read_only = keep, divergence_factor, read_only
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        if read_only:  # orbax warns that a read-only manager saves nothing: what the reader asked for
            absl_log.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=not read_only,
                                                   read_only=read_only)
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        finally:
            absl_log.setLevel(level)
        self._health = _read_health(self.directory / HEALTH_FILE)

    @property
    def last_good(self) -> Optional[int]:
        """The newest checkpoint judged healthy, or None."""
        return self._health["last_good"]

    def observe(self, step: int, loss: float) -> None:
        """Takes step `step`'s loss, computed with checkpoint `step`'s parameters, and judges that checkpoint.

        The first loss observed in the directory is the reference of the divergence test. Does nothing for a
        step without a checkpoint (no file I/O on ordinary steps).
        """
        health = self._health
        if health["reference_loss"] is None and math.isfinite(loss):
            health["reference_loss"] = float(loss)
            self._write_health()
        if step not in self._unjudged():
            return
        healthy = math.isfinite(loss) and loss <= self.divergence_factor * health["reference_loss"]
        health["judged"][str(step)] = {"loss": float(loss) if math.isfinite(loss) else str(loss), "healthy": healthy}
        if healthy and (health["last_good"] is None or step > health["last_good"]):
            health["last_good"] = step
        if not healthy:
            log.warning("checkpoint %s is unhealthy: loss %s at its step, reference %s x factor %s; the last good "
                        "one is %s", self.path(step), loss, health["reference_loss"], self.divergence_factor,
                        health["last_good"])
        self._write_health()

    def check(self) -> None:
        """Raises the error of a background save that failed (e.g. `OSError` of a full disk), naming the directory."""
        try:
            self._manager.check_for_errors()
        except Exception as error:
            raise OSError(f"writing a checkpoint under {self.directory} failed: {type(error).__name__}: {error}. "
                          "Earlier checkpoints are intact; free space or fix the directory, then resume") from error

    def steps(self) -> list[int]:
        """The steps with a complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def fingerprint(self, step: int) -> str:
        """`Restored.fingerprint` of checkpoint `step`, read from its `meta` alone (no array is restored)."""
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        return _fingerprint(meta.get("digests", {}))

    def path(self, step: int) -> str:
        """The directory of the checkpoint of `step`."""
        return str(self.directory / str(step))

    def save(self, state: TrainState, data_state: DataState = None) -> int:
        """Writes `state` and `data_state` as the checkpoint of step `state.step`; returns that step.

        Args:
          state: the state to save. Its buffers may be donated to the next step as soon as this returns.
          data_state: the data iterator's state *after* the batch of the last applied step (JSON-able value
            or bytes), so that a restored run draws the next batch.

        A step that already has a checkpoint is not written again. Raises the error of an earlier background
        save that failed.
        """
        if self.read_only:
            raise PermissionError(f"the Checkpointer of {self.directory} is read-only")
        step = int(jax.device_get(state.step))
        self.wait()
        if step in self._manager.all_steps():
            return step
        saved = _savable(state)
        meta = {"step": step, "rng_impl": str(jax.random.key_impl(state.rng)), "data": _encode(data_state),
                "digests": _digests(saved)}
        self._manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(saved), meta=ocp.args.JsonSave(meta)))
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
        if not self.read_only:
            self.wait()
        self._manager.reload()
        failures: list[tuple[str, str]] = []
        unhealthy: list[str] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            judged = self._health["judged"].get(str(step))
            if judged is not None and not judged["healthy"]:
                unhealthy.append(self.path(step))
                failures.append((self.path(step), f"unhealthy: loss {judged['loss']} at step {step} (reference "
                                 f"{self._health['reference_loss']}, factor {self.divergence_factor})"))
                log.warning("checkpoint %s is skipped as %s; trying the previous one", *failures[-1])
                continue
            try:
                restored = self._restore(step, target)
            except Exception as error:  # corruption surfaces as many types (tensorstore, json, OS, value errors)
                failures.append((self.path(step), f"{type(error).__name__}: {error}"))
                log.warning("checkpoint %s failed to restore (%s); trying the previous one", *failures[-1])
                continue
            if not self.read_only:
                for path, _ in failures:
                    _quarantine(path, ".diverged" if path in unhealthy else ".corrupt")
                self._manager.reload()
            return dataclasses.replace(restored, skipped=tuple(failures))
        if failures:
            raise CheckpointError("no checkpoint could be restored:\n" +
                                  "\n".join(f"  {path}: {error}" for path, error in failures))
        return None

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are written (raising the error of one that failed), then
        rotates."""
        self._manager.wait_until_finished()
        self.check()
        if not self.read_only:
            self._rotate()

    def close(self) -> None:
        """Waits for pending saves, rotates, and releases the manager."""
        try:
            if not self.read_only:
                self.wait()
        finally:
            self._manager.close()

    def _unjudged(self) -> set[int]:
        judged = {int(step) for step in self._health["judged"]}
        return set(self._manager.all_steps()) - judged

    def _rotate(self) -> None:
        """Deletes all but the newest `keep` complete checkpoints, sparing the last good one."""
        steps = sorted(self._manager.all_steps())
        for step in steps[:-self.keep]:
            if step != self._health["last_good"]:
                self._manager.delete(step)
                self._health["judged"].pop(str(step), None)

    def _write_health(self) -> None:
        """Writes `health.json` whole or not at all (tmp file, then rename)."""
        if self.read_only:
            return
        path = self.directory / HEALTH_FILE
        tmp = self.directory / (HEALTH_FILE + ".tmp")
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(self._health, indent=1))
        os.replace(tmp, path)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _restore(self, step: int, target: TrainState) -> Restored:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_savable_target(target)), meta=ocp.args.JsonRestore()))
        saved, meta = out["state"], out["meta"]
        digests = meta.get("digests", {})
        _verify(saved, digests)
        rng = jax.random.wrap_key_data(saved["rng"], impl=meta["rng_impl"])
        state = TrainState(step=saved["step"], params=saved["params"], opt_state=saved["opt_state"], rng=rng,
                           inverse=saved.get("inverse"))
        return Restored(state=state, data_state=_decode(meta["data"]), step=step, path=self.path(step),
                        fingerprint=_fingerprint(digests))


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


def _quarantine(path: str, kind: str) -> None:
    """Renames a checkpoint that is not restored to `<path><kind>` (`<kind>1`, ... if taken)."""
    source = epath.Path(path)
    if not source.exists():
        return
    suffix, n = kind, 0
    while epath.Path(path + suffix).exists():
        n += 1
        suffix = f"{kind}{n}"
    source.rename(epath.Path(path + suffix))
    log.warning("renamed the checkpoint that was not restored to %s", path + suffix)


def _digests(tree: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of dtype, shape and bytes of every array this process holds whole, by pytree path."""
    digests = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        value = np.ascontiguousarray(jax.device_get(leaf))
        digest = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
        digests[jax.tree_util.keystr(path)] = digest.hexdigest()
    return digests


def _fingerprint(digests: dict[str, str]) -> str:
    """One SHA-256 over a checkpoint's per-array digests ("" without digests)."""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest() if digests else ""


def _verify(tree: dict[str, Any], recorded: dict[str, str]) -> None:
    """Raises `ChecksumError` naming the first array whose digest differs from the recorded one."""
    found = _digests(tree)
    for path, digest in recorded.items():
        if path in found and found[path] != digest:
            raise ChecksumError(f"array {path} does not match the digest recorded when it was saved: the "
                                "checkpoint's data changed on disk")


def _read_health(path: epath.Path) -> dict[str, Any]:
    """The judgements of `health.json`, or an empty record when there is none."""
    empty = {"reference_loss": None, "last_good": None, "judged": {}}
    if not path.exists():
        return empty
    try:
        return {**empty, **json.loads(path.read_text())}
    except json.JSONDecodeError as err:
        log.warning("%s is not valid JSON (%s); judging checkpoints afresh", path, err)
        return empty
