"""Metrics: a JSON-lines + TensorBoard writer, throughput and MFU, and a progress line.

FLOP convention (model FLOPs, as in PaLM, Chowdhery et al. 2022, appendix B; used for MFU):

- Matmuls: `6 N` per token for forward + backward (2 for the forward multiply-add, 4 for the two backward
  products), where `N` counts every parameter except the input-embedding table, which is a gather. With
  tied embeddings the table is counted once, as the unembedding matmul. Norm scales and gate vectors are
  included; they are negligible.
- Attention scores and mixing: per layer, head and query, `Q K^T` and `A V` cost `2 d` each per visible key,
  so `12 d * keys` for forward + backward. `keys` is the mean number of keys a query may see: `(T + 1) / 2`
  under a causal mask (causal attention halved), `mean_p min(p + 1, w)` for a head with span `w`. Masked
  entries the implementation computes anyway are not counted: MFU measures useful work.
- `MFU = flops_per_token * tokens_per_second / peak_flops`, with `peak_flops` the summed theoretical peak of the
  devices used for the compute dtype (`sage_jax.train.peak`; the user may set it instead). Beside it,
  `mfu_of_measured_gemm` divides by a GEMM rate measured on the machine (`measured_gemm_flops`): how close a
  step comes to a plain matmul there. That rate moves with the machine's load, so a step can pass 100% of it;
  it is not the headline figure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Callable, Mapping, Optional, TextIO

import jax
import numpy as np

from sage_jax.config import SageConfig
from sage_jax.model import param_shapes


def flops_per_token(cfg: SageConfig, seq_len: int) -> float:
    """Training (forward + backward) model FLOPs per token of a `seq_len`-token sequence (see module doc)."""
    shapes = param_shapes(cfg)
    n = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))
    if not cfg.tie_embeddings:
        n -= int(np.prod(shapes["embed"].shape))
    keys = sum(mean_visible_keys(cfg.group_spans[group], seq_len) for group in cfg.head_groups)
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.head_dim * keys


def mean_visible_keys(span: Optional[int], seq_len: int) -> float:
    """Mean number of keys a query sees in a causal sequence of `seq_len`, with attention span `span`."""
    window = seq_len if span is None else min(span, seq_len)
    return float(np.mean(np.minimum(np.arange(1, seq_len + 1), window)))


class Throughput:
    """Tokens/s, steps/s and MFU from the wall time between successive `update` calls.

    The first call only starts the clock: it follows the step that compiled, whose time is not throughput.

    Args:
      flops_per_token: model FLOPs per trained token (`flops_per_token`).
      peak_flops: the theoretical peak FLOP/s of all devices used, for `mfu` (None: not reported).
      clock: seconds, monotonic (injected by tests).
      measured_gemm_flops: a GEMM rate measured on the machine, for `mfu_of_measured_gemm` (None: not reported).
    """

    def __init__(self, flops_per_token: float, peak_flops: Optional[float] = None,
                 clock: Callable[[], float] = time.perf_counter, measured_gemm_flops: Optional[float] = None):
        for name, flops in (("peak_flops", peak_flops), ("measured_gemm_flops", measured_gemm_flops)):
            if flops is not None and not flops > 0:
                raise ValueError(f"{name} must be positive (FLOP/s of all devices), got {flops!r}")
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.measured_gemm_flops = measured_gemm_flops
        self._clock = clock
        self._start = self._last = None
        self._steps = 0

    def update(self, tokens: float) -> dict[str, float]:
        """Records one more finished step of `tokens` tokens; returns its rates (empty on the first call)."""
        now = self._clock()
        if self._last is None:
            self._start = self._last = now
            return {}
        elapsed, self._last = now - self._last, now
        self._steps += 1
        rates = {"steps_per_s": 1.0 / elapsed, "tokens_per_s": tokens / elapsed,
                 "mean_steps_per_s": self._steps / (now - self._start)}
        achieved = self.flops_per_token * rates["tokens_per_s"]
        if self.peak_flops is not None:
            rates["mfu"] = achieved / self.peak_flops
        if self.measured_gemm_flops is not None:
            rates["mfu_of_measured_gemm"] = achieved / self.measured_gemm_flops
        return rates


class MetricsWriter:
    """Writes scalars to `<logdir>/metrics.jsonl` (one JSON object per line, with `step`) and to TensorBoard
    event files in `logdir`.

    Both are written in the calling thread and each row is flushed at once, so a full disk or a read-only
    directory raises `OSError` (naming the file) at the step that hit it. tensorboardX's own writer thread
    would die on such an error and leave the training thread blocked forever on its full queue. A row torn by
    a crash or a full disk is cut off when the file is opened again, so `metrics.jsonl` stays one JSON object
    per line across resumes.
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = str(logdir)
        self.path = os.path.join(self.logdir, "metrics.jsonl")
        with _naming(self.logdir):
            os.makedirs(logdir, exist_ok=True)
            _cut_torn_line(self.path)
        with _naming(self.path):
            self._jsonl = open(self.path, "a", encoding="utf-8")
        # imported here: tensorboardX loads torch when torch is installed (seconds), and only writers need it
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        self._event, self._scalar = Event, scalar
        with _naming(self.logdir):
            self._tb = EventsWriter(os.path.join(self.logdir, "events"))
        self._tb_path = self._tb._file_name

    def write(self, step: int, scalars: Mapping[str, object]) -> None:
        """Logs `scalars` (numbers or bools, numpy or Python) at `step`.

        Raises:
          OSError: writing failed (e.g. the disk is full); the message names the file.
        """
        row = {"step": int(step)}
        now = time.time()
        with _naming(self._tb_path):
            for name, value in scalars.items():
                value = np.asarray(value).item()
                row[name] = value
                if not isinstance(value, bool):
                    self._tb.write_event(self._event(wall_time=now, step=int(step), summary=self._scalar(name, value)))
            self._tb.flush()
        with _naming(self.path):
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()

    def flush(self) -> None:
        with _naming(self.path):
            self._jsonl.flush()
        with _naming(self._tb_path):
            self._tb.flush()

    def close(self) -> None:
        """Closes both files; a failure to flush their last bytes still closes them and is raised."""
        try:
            with _naming(self.path):
                self._jsonl.close()
        finally:
            with _naming(self._tb_path):
                self._tb.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Progress:
    """A one-line progress report: step, rates, MFU, loss and ETA; redrawn in place on a terminal."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stderr, every: int = 1):
        self.total_steps = total_steps
        self.stream = stream
        self.every = every

    def line(self, step: int, scalars: Mapping[str, float]) -> str:
        """The progress text after step index `step` (0-based) finished."""
        done = step + 1
        parts = [f"step {done}/{self.total_steps}"]
        if "steps_per_s" in scalars:
            parts.append(f"{scalars['steps_per_s']:.2f} steps/s")
            parts.append(f"{_si(scalars['tokens_per_s'])} tok/s")
        if "mfu" in scalars or "mfu_of_measured_gemm" in scalars:
            parts.append(_mfu_text(scalars))
        if "loss" in scalars:
            parts.append(f"loss {scalars['loss']:.4f}")
        if scalars.get("mean_steps_per_s"):
            parts.append(f"ETA {_duration((self.total_steps - done) / scalars['mean_steps_per_s'])}")
        return " | ".join(parts)

    def update(self, step: int, scalars: Mapping[str, float]) -> None:
        """Draws the line every `every` steps and at the last step."""
        if (step + 1) % self.every and step + 1 != self.total_steps:
            return
        end = "\n" if step + 1 == self.total_steps or not self.stream.isatty() else ""
        self.stream.write(("\r" if self.stream.isatty() else "") + self.line(step, scalars) + end)
        self.stream.flush()


class Reporter:
    """What the loop calls with each step's host metrics: throughput, the writer and the progress line."""

    def __init__(self, throughput: Optional[Throughput] = None, writer: Optional[MetricsWriter] = None,
                 progress: Optional[Progress] = None):
        self.throughput, self.writer, self.progress = throughput, writer, progress

    def __call__(self, step: int, metrics: Mapping[str, object]) -> dict[str, float]:
        """Reports the metrics of step index `step`; returns them with the rates added."""
        scalars = {name: np.asarray(value).item() for name, value in metrics.items()}
        if self.throughput is not None:
            scalars.update(self.throughput.update(scalars.get("tokens", 0.0)))
        if self.writer is not None:
            self.writer.write(step, scalars)
        if self.progress is not None:
            self.progress.update(step, scalars)
        return scalars


@contextlib.contextmanager
def _naming(path: str):
    """Re-raises an `OSError` with `path` in its message (a full disk's errno 28 alone names no file)."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise type(err)(err.errno, f"{err.strerror or err} (writing metrics to {path})", path) from err


def _cut_torn_line(path: str) -> None:
    """Truncates `path` after its last newline, dropping a row that a crash or a full disk left half written."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if not size:
            return
        f.seek(max(0, size - 65536))
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        keep = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else max(0, size - len(tail))
        f.truncate(keep)


def _mfu_text(scalars: Mapping[str, float]) -> str:
    """"MFU 24.0% of theoretical (49.0% of measured GEMM)", or whichever half is known."""
    measured = scalars.get("mfu_of_measured_gemm")
    if "mfu" not in scalars:
        return f"MFU {100 * measured:.1f}% of measured GEMM"
    text = f"MFU {100 * scalars['mfu']:.1f}% of theoretical"
    return text if measured is None else f"{text} ({100 * measured:.1f}% of measured GEMM)"


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
