"""One training run per workdir: an advisory lock file, `<workdir>/.lock`, holding its owner's pid and host.

Two runs on one workdir overwrite each other's checkpoints and interleave their `metrics.jsonl`, and both exit
0. So training takes `WorkdirLock` first and a second run fails at once, naming the owner. The lock is a
`flock` on the open file, which the kernel releases when the owner exits in any way (kill -9 included), so a
stale file left by a killed run never blocks: the next run takes it over and logs whose it was. Reading a run
(`load_run`, evaluation) takes no lock and writes nothing.

`flock` is per host: two hosts sharing a workdir over a network file system are not guarded against.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import socket
import time
from typing import Optional

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir's lock; the message names its pid and host."""


class WorkdirLock:
    """Holds `<workdir>/.lock` while in its `with` block (created, with the workdir, if missing)."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self._file = None

    def acquire(self) -> None:
        """Takes the lock, or raises `WorkdirLockedError` at once.

        Raises:
          WorkdirLockedError: a live process holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(f)
            f.close()
            raise WorkdirLockedError(
                f"{self.path.parent} is in use by another run ({_describe(owner)}, lock file {self.path}): two "
                "runs on one workdir overwrite each other's checkpoints. Wait for it to finish, stop it, or "
                "choose another workdir") from None
        previous = _owner(f)
        if previous:
            log.warning("taking over the lock of %s, which no longer holds it (a run that was killed)",
                        _describe(previous))
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        f.flush()
        self._file = f

    def release(self) -> None:
        """Empties the lock file and releases the lock."""
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _owner(f) -> Optional[dict]:
    f.seek(0)
    text = f.read()
    try:
        owner = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return {"unreadable": text[:80]}
    return owner if isinstance(owner, dict) else None


def _describe(owner: Optional[dict]) -> str:
    if not owner or "pid" not in owner:
        return f"owner unknown ({owner})"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"])) if "since" in owner else "?"
    return f"pid {owner['pid']} on host {owner.get('host', '?')}, since {since}"
