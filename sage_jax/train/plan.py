"""A plan from the compiler: does the train step fit a cluster, and with which mesh, microbatches and remat?

Nothing here is a formula for the model's memory. For each candidate (a `(data, fsdp)` mesh over the
devices, a microbatch count, rematerialisation on or off) the real train step (`step.compile_train_step`, with
the partition rules of `sharding.DEFAULT_RULES` and the batch fields it reads, `STEP_FIELDS`) is
lowered with abstract inputs (`jax.ShapeDtypeStruct`s carrying their shardings: nothing is allocated) and
compiled ahead of time for a mesh of that many CPU devices, and two things are read from the executable:

- Memory per device, from `Compiled.memory_analysis()` (XLA's buffer assignment of the per-device SPMD
  program): `total = arguments + outputs - aliased + temporaries + generated code`. Arguments are the state
  and batch shards a device holds, outputs its new state and metrics, `aliased` the outputs written into
  donated arguments (the state), temporaries everything the step allocates in between (activations,
  gradients, gathered parameters). This is the memory the step needs while it runs, not counting the
  runtime's own allocations and fragmentation: hence the `headroom` a candidate must leave to fit.
- Collective traffic per device and step, from the optimized HLO (`Compiled.as_text()`): every all-reduce,
  all-gather, reduce-scatter, all-to-all and collective-permute (synchronous, or the `-done` half of an
  asynchronous pair), by kind, with the bytes of its result (the buffer each device holds afterwards: a ring
  all-reduce puts about `2 (n - 1) / n` of it on the wire, an all-gather `(n - 1) / n`), multiplied by how
  often it runs: a `while` body counts its `known_trip_count` times (the microbatch scan, the scanned layers
  under remat), every branch of a conditional once (an upper bound), a loop of unknown trip count once.

The devices are simulated CPU devices (`--xla_force_host_platform_device_count`), so the numbers are those of
XLA's CPU compiler: exact for a cluster of CPU hosts (the Mac-mini profile, `sage_jax.train.distributed`), an
estimate for GPUs, whose compiler fuses and schedules differently.

`choose` picks among the candidates that fit: the fewest collective bytes (the interconnect is the slow part of
a small cluster), then remat off before on (remat recomputes every block's forward in the backward pass), then
fewer microbatches (each is a sequential pass), then the least memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, SingleDeviceSharding

from sage_jax.config import SageConfig
from sage_jax.data.pipeline import PipelineConfig, batch_spec
from sage_jax.interpret.significance import significance
from sage_jax.layout import Steps
from sage_jax.model import init_params
from sage_jax.train.consistency import IALConsistency
from sage_jax.train.optim import OptimConfig
from sage_jax.train.sharding import batch_sharding, make_mesh
from sage_jax.train.state import StepConfig, abstract_state
from sage_jax.train.step import compile_train_step

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DEFAULT_HEADROOM = 0.1
DEFAULT_MICROBATCHES = (1, 2, 4)
DEFAULT_ANALYSIS_STEPS = 16
STEP_FIELDS = ("tokens", "segments", "loss_mask")
"""The data pipeline's batch fields the model-only step reads; the stage-3 step reads `step_index` as well. jit
drops the arguments a program does not read, so the pipeline's other fields never reach a device and the
program compiled from these alone is the one the training loop runs."""

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_COLLECTIVE_OP = re.compile(r"(?<=\s)(" + "|".join(COLLECTIVES) + r")(-start|-done)?\(")
_SHAPE = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLEE = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One setting to compile: a `(data, fsdp)` mesh, microbatches per update, remat on or off."""

    data: int
    fsdp: int
    microbatches: int
    remat: bool

    def describe(self) -> str:
        return (f"mesh data={self.data} fsdp={self.fsdp}, {self.microbatches} microbatch"
                f"{'es' if self.microbatches > 1 else ''}, remat {'on' if self.remat else 'off'}")


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """Per-device bytes of one executable, from `Compiled.memory_analysis()`.

    Attributes:
      arguments: the inputs a device holds (its shards of the state and the batch) that the program reads
        (jit drops unread arguments: they are never transferred).
      outputs: what it returns (new state shards, metrics).
      aliased: outputs that reuse donated argument buffers (counted once, in `arguments`).
      temporaries: everything allocated while the program runs.
      code: generated code (0 on the CPU backend, which reports it on the host).
    """

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int

    @property
    def total(self) -> int:
        """`arguments + outputs - aliased + temporaries + code`: the bytes the program needs while it runs."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @classmethod
    def of(cls, compiled: jax.stages.Compiled) -> "MemoryStats":
        stats = compiled.memory_analysis()
        if stats is None:
            raise RuntimeError("this backend's compiled executables report no memory analysis")
        return cls(arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
                   aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
                   code=stats.generated_code_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What compiling one `Trial` gave (or why it was not compiled).

    Attributes:
      trial: the setting.
      memory: per-device bytes; `None` when skipped.
      collective_bytes: kind (`COLLECTIVES`) -> result bytes per device and step, loops counted.
      collective_counts: kind -> collectives executed per step, loops counted.
      compile_seconds: lowering and compiling time (0 when skipped).
      fits: `memory.total <= budget`.
      skipped: why it was not compiled (dims the mesh does not divide, a batch it cannot split, a state
        that alone exceeds the budget, or a more frugal setting of the same mesh that already did not fit).
    """

    trial: Trial
    memory: Optional[MemoryStats] = None
    collective_bytes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    collective_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    compile_seconds: float = 0.0
    fits: bool = False
    skipped: Optional[str] = None

    @property
    def total_collective_bytes(self) -> int:
        return sum(self.collective_bytes.values())


@dataclasses.dataclass(frozen=True)
class AnalysisMemory:
    """The exact analysis (`interpret.significance`) of one chain, compiled for one device.

    Attributes:
      seq_len: tokens in the chain.
      n_steps: its steps (the backward pass is batched over them).
      memory: bytes on the device.
      compile_seconds: lowering and compiling time.
      fits: `memory.total <= budget` of the plan (None when no budget was given).
    """

    seq_len: int
    n_steps: int
    memory: MemoryStats
    compile_seconds: float
    fits: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every candidate tried for one model on one cluster, and the choice.

    Attributes:
      model: the config's name.
      devices: devices in the cluster.
      device_memory: bytes of each device.
      headroom: the share of `device_memory` left to the runtime.
      seq_len, global_batch: the batch `[global_batch, seq_len]` of one update.
      inverse: whether the step trains the Inverse Analysis Layer (stage 3) with its consistency loss.
      candidates: in the order tried.
      choice: the chosen candidate (`choose`), `None` when none fits.
      analysis: the exact analysis's memory, when asked for.
    """

    model: str
    devices: int
    device_memory: int
    headroom: float
    seq_len: int
    global_batch: int
    inverse: bool
    candidates: tuple[Candidate, ...]
    choice: Optional[Candidate]
    analysis: Optional[AnalysisMemory] = None

    @property
    def budget(self) -> int:
        return budget(self.device_memory, self.headroom)

    def summary(self) -> str:
        """One sentence: whether and how the model fits."""
        cluster = f"{self.devices} x {format_bytes(self.device_memory)}"
        if self.choice is not None:
            return (f"{self.model} fits {cluster} with {self.choice.trial.describe()}: "
                    f"{format_bytes(self.choice.memory.total)} per device (budget {format_bytes(self.budget)})")
        compiled = [c for c in self.candidates if c.memory is not None]
        if not compiled:
            return f"{self.model} does not fit {cluster}: no candidate compiled"
        least = min(compiled, key=lambda c: c.memory.total)
        return (f"{self.model} does not fit {cluster} with any candidate tried; the least memory, "
                f"{format_bytes(least.memory.total)} per device, was {least.trial.describe()} "
                f"(budget {format_bytes(self.budget)})")

    def to_dict(self) -> dict:
        """The plan as JSON data, each memory with its `total`."""
        out = dataclasses.asdict(self)
        for entry, candidate in zip(out["candidates"], self.candidates):
            if candidate.memory is not None:
                entry["memory"]["total"] = candidate.memory.total
        if self.choice is not None:
            out["choice"]["memory"]["total"] = self.choice.memory.total
        if self.analysis is not None:
            out["analysis"]["memory"]["total"] = self.analysis.memory.total
        out["budget"] = self.budget
        out["summary"] = self.summary()
        return out


def plan(cfg: SageConfig, *, devices: int, device_memory: int, seq_len: int, global_batch: int,
         trials: Optional[Sequence[Trial]] = None, headroom: float = DEFAULT_HEADROOM, inverse: bool = False,
         prune: bool = True, analysis_len: Optional[int] = None, analysis_steps: int = DEFAULT_ANALYSIS_STEPS,
         progress: Optional[Callable[[int, int, Trial], None]] = None) -> Plan:
    """Compiles the train step for every trial on `devices` simulated CPU devices and picks one.

    Args:
      cfg: the model.
      devices: devices in the cluster (`--devices`); the process needs that many CPU devices
        (`simulated_devices`).
      device_memory: bytes of each device (`--device_memory`).
      seq_len: tokens per row `T`.
      global_batch: rows per update `B` (split over all devices, then into microbatches).
      trials: the settings to try (default `candidate_trials(devices)`); tried most frugal first within a
        mesh (remat on before off, more microbatches before fewer), so that `prune` can skip the rest.
      headroom: share of `device_memory` a candidate must leave free to fit.
      inverse: compile the stage-3 step (the Inverse Analysis Layer and its consistency loss) instead of the
        model-only one of stages 1 and 2.
      prune: skip a trial when one of the same mesh with at least as many microbatches, and remat on wherever
        this one has it on, compiled and did not fit (this one keeps no fewer activations).
      analysis_len: also compile the exact analysis of a chain of this many tokens (`analysis_memory`).
      analysis_steps: that chain's steps.
      progress: called with `(i, n, trial)` before trial `i` (1-based) of `n` is compiled.

    Returns:
      The `Plan`, its candidates in the order tried.
    """
    if not 0 < seq_len <= cfg.max_seq_len:
        raise ValueError(f"--seq_len={seq_len} must lie in [1, max_seq_len={cfg.max_seq_len}] of {cfg.name!r}")
    if global_batch < 1:
        raise ValueError(f"--global_batch={global_batch} must be positive")
    pool = simulated_devices(devices)
    limit = budget(device_memory, headroom)
    ordered = sorted(candidate_trials(devices) if trials is None else trials,
                     key=lambda t: (-t.fsdp, not t.remat, -t.microbatches))
    for trial in ordered:
        if trial.data * trial.fsdp != devices:
            raise ValueError(f"{trial.describe()} has {trial.data * trial.fsdp} devices, but --devices={devices}")
    done: list[Candidate] = []
    for i, trial in enumerate(ordered):
        reason = skip_reason(cfg, trial, pool, seq_len, global_batch, inverse, limit,
                             done if prune else [])
        if reason is not None:
            done.append(Candidate(trial, skipped=reason))
            continue
        if progress is not None:
            progress(i + 1, len(ordered), trial)
        candidate = compile_candidate(cfg, trial, pool, seq_len=seq_len, global_batch=global_batch,
                                      inverse=inverse)
        done.append(dataclasses.replace(candidate, fits=candidate.memory.total <= limit))
    analysis = None
    if analysis_len is not None:
        analysis = analysis_memory(cfg, analysis_len, n_steps=analysis_steps, device=pool[0])
        analysis = dataclasses.replace(analysis, fits=analysis.memory.total <= limit)
    return Plan(model=cfg.name, devices=devices, device_memory=device_memory, headroom=headroom,
                seq_len=seq_len, global_batch=global_batch, inverse=inverse, candidates=tuple(done),
                choice=choose(done), analysis=analysis)


def candidate_trials(devices: int, microbatches: Sequence[int] = DEFAULT_MICROBATCHES,
                     remat: Sequence[bool] = (True, False), fsdp: Optional[Sequence[int]] = None) -> list[Trial]:
    """Every mesh `data x fsdp = devices` (or those of the given `fsdp` sizes) x microbatches x remat."""
    sizes = [f for f in range(1, devices + 1) if devices % f == 0] if fsdp is None else list(fsdp)
    bad = [f for f in sizes if f < 1 or devices % f]
    if bad:
        raise ValueError(f"fsdp sizes {bad} do not divide --devices={devices}")
    return [Trial(devices // f, f, k, r) for f in sizes for k in microbatches for r in remat]


def choose(candidates: Sequence[Candidate]) -> Optional[Candidate]:
    """Among the candidates that fit: the fewest collective bytes, then remat off, then fewer microbatches,
    then the least memory (module docstring says why); `None` when none fits."""
    fitting = [c for c in candidates if c.fits and c.memory is not None]
    if not fitting:
        return None
    return min(fitting, key=lambda c: (c.total_collective_bytes, c.trial.remat, c.trial.microbatches,
                                       c.memory.total))


def budget(device_memory: int, headroom: float) -> int:
    """The bytes a candidate may use: `device_memory * (1 - headroom)`."""
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom={headroom} (--headroom) must lie in [0, 1)")
    return int(device_memory * (1 - headroom))


def skip_reason(cfg: SageConfig, trial: Trial, pool: Sequence[jax.Device], seq_len: int, global_batch: int,
                inverse: bool, limit: int, done: Sequence[Candidate]) -> Optional[str]:
    """Why `trial` need not be compiled, or `None`.

    Checked without compiling: the partition rules must divide the model's dims by `fsdp`, every microbatch
    must split over all devices, and the state and batch shards alone (the step's arguments, a lower bound
    of its memory) must fit. Then, from `done`: a more frugal setting of the same mesh that did not fit.
    """
    rows = global_batch // trial.microbatches
    if global_batch % trial.microbatches or rows % len(pool):
        return (f"global batch {global_batch} in {trial.microbatches} microbatches does not split over "
                f"{len(pool)} devices")
    mesh = trial_mesh(trial, pool)
    try:
        arguments = argument_bytes(step_config(cfg, trial, inverse), mesh, seq_len, global_batch)
    except ValueError as err:
        return f"fsdp={trial.fsdp} does not divide the model: {err}"
    if arguments > limit:
        return f"its state and batch alone are {format_bytes(arguments)} per device (budget {format_bytes(limit)})"
    for other in done:
        same_mesh = (other.trial.data, other.trial.fsdp) == (trial.data, trial.fsdp)
        frugal = other.trial.microbatches >= trial.microbatches and other.trial.remat >= trial.remat
        if same_mesh and frugal and other.memory is not None and not other.fits:
            return (f"{other.trial.describe()} already needs {format_bytes(other.memory.total)} (budget "
                    f"{format_bytes(limit)}) and this keeps no fewer activations")
    return None


def compile_candidate(cfg: SageConfig, trial: Trial, pool: Sequence[jax.Device], *, seq_len: int,
                      global_batch: int, inverse: bool = False) -> Candidate:
    """Compiles the train step of `trial` on `pool` and reads its memory and collectives (`fits` unset)."""
    start = time.perf_counter()
    compiled = lower_train_step(cfg, trial, trial_mesh(trial, pool), seq_len=seq_len, global_batch=global_batch,
                                inverse=inverse).compile()
    seconds = time.perf_counter() - start
    counts, nbytes = collectives(compiled.as_text())
    return Candidate(trial, memory=MemoryStats.of(compiled), collective_bytes=nbytes, collective_counts=counts,
                     compile_seconds=seconds)


def lower_train_step(cfg: SageConfig, trial: Trial, mesh: Mesh, *, seq_len: int, global_batch: int,
                     inverse: bool = False) -> jax.stages.Lowered:
    """The real train step of `trial`, lowered for `mesh` from abstract (sharded) state and batch."""
    step_cfg = step_config(cfg, trial, inverse)
    consistency = IALConsistency(step_cfg.model) if inverse else None
    step = compile_train_step(step_cfg, mesh=mesh, consistency=consistency)
    return step.lower(abstract_state(step_cfg, mesh), abstract_batch(mesh, seq_len, global_batch, inverse))


def step_config(cfg: SageConfig, trial: Trial, inverse: bool = False) -> StepConfig:
    """The `StepConfig` of `trial`: `cfg` with its remat, the trial's microbatches, an IAL when `inverse`."""
    return StepConfig(model=cfg.replace(remat=trial.remat), microbatches=trial.microbatches,
                      inverse_optim=OptimConfig() if inverse else None)


def abstract_batch(mesh: Mesh, seq_len: int, global_batch: int, inverse: bool = False
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch fields the step reads (`STEP_FIELDS`, `[B, T]` each, with the data pipeline's dtypes from
    `data.batch_spec`), abstract and split over the batch axes of `mesh`."""
    spec = batch_spec(PipelineConfig(seq_len=seq_len, batch_size=global_batch))
    sharding = batch_sharding(mesh)
    fields = STEP_FIELDS + (("step_index",) if inverse else ())
    return {name: jax.ShapeDtypeStruct(*spec[name], sharding=sharding) for name in fields}


def argument_bytes(step_cfg: StepConfig, mesh: Mesh, seq_len: int, global_batch: int) -> int:
    """Bytes of one device's shards of the state and batch (the first device of `mesh`), from the shardings.

    Raises:
      ValueError: a partition rule shards a dim the mesh does not divide (the message names the parameter).
    """
    batch = abstract_batch(mesh, seq_len, global_batch, step_cfg.inverse_optim is not None)
    leaves = jax.tree_util.tree_leaves((abstract_state(step_cfg, mesh), batch))
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize for leaf in leaves)


def trial_mesh(trial: Trial, pool: Sequence[jax.Device]) -> Mesh:
    return make_mesh(data=trial.data, fsdp=trial.fsdp, devices=pool)


def analysis_memory(cfg: SageConfig, seq_len: int, *, n_steps: int = DEFAULT_ANALYSIS_STEPS,
                    device: Optional[jax.Device] = None, **options) -> AnalysisMemory:
    """The exact analysis (`significance`: one forward and one vjp batched over `n_steps` steps) of one chain
    of `seq_len` tokens, compiled for one device (default: the first CPU device), and its memory.

    `options` are keyword options of `significance` (its defaults otherwise), so that each way of running
    the analysis can be sized.

    Raises:
      ValueError: `seq_len` exceeds the model's `max_seq_len` (`--analysis_len`), or `n_steps` < 1.
    """
    if not 0 < seq_len <= cfg.max_seq_len:
        raise ValueError(f"analysis length {seq_len} (--analysis_len) must lie in [1, max_seq_len="
                         f"{cfg.max_seq_len}] of {cfg.name!r}")
    if n_steps < 1:
        raise ValueError(f"analysis steps {n_steps} (--analysis_steps) must be at least 1")
    sharding = SingleDeviceSharding(jax.devices("cpu")[0] if device is None else device)
    place = functools.partial(_abstract, sharding=sharding)
    params = jax.tree_util.tree_map(place, jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0)))
    tokens = place(jax.ShapeDtypeStruct((seq_len,), jnp.int32))
    steps = Steps(mask=place(jax.ShapeDtypeStruct((n_steps, seq_len), jnp.bool_)),
                  starts=place(jax.ShapeDtypeStruct((n_steps,), jnp.int32)),
                  ends=place(jax.ShapeDtypeStruct((n_steps,), jnp.int32)))
    start = time.perf_counter()
    analysis = functools.partial(significance, cfg=cfg, **options)
    compiled = jax.jit(analysis).lower(params, tokens=tokens, steps=steps).compile()
    return AnalysisMemory(seq_len=seq_len, n_steps=n_steps, memory=MemoryStats.of(compiled),
                          compile_seconds=time.perf_counter() - start)


def _abstract(leaf: jax.ShapeDtypeStruct, *, sharding: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def collectives(hlo: str) -> tuple[dict[str, int], dict[str, int]]:
    """`(counts, bytes)` by kind of the collectives an optimized HLO module executes per run.

    Args:
      hlo: `Compiled.as_text()` (computations in post order, callees before callers, `ENTRY` last).

    Returns:
      Two dicts over the kinds present: how many run, and the bytes of their results, each computation's
      instructions counted as often as it runs (module docstring).
    """
    bodies, calls, entry = _computations(hlo)
    runs = {entry: 1}
    for name in reversed(list(bodies)):
        for callee, factor in calls[name]:
            runs[callee] = runs.get(callee, 0) + runs.get(name, 0) * factor
    counts: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for name, lines in bodies.items():
        for line in lines:
            match = _COLLECTIVE_OP.search(line)
            if match is None or match.group(2) == "-start" or runs.get(name, 0) == 0:
                continue
            kind, result = match.group(1), line[line.index(" = ") + 3:match.start()]
            counts[kind] = counts.get(kind, 0) + runs[name]
            nbytes[kind] = nbytes.get(kind, 0) + runs[name] * shape_bytes(result)
    return counts, nbytes


def _computations(hlo: str) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, int]]], str]:
    """The module's computations: name -> instruction lines, name -> `(callee, runs per call)`, the entry."""
    bodies: dict[str, list[str]] = {}
    calls: dict[str, list[tuple[str, int]]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header is not None and " = " not in line:
            current = header.group(2)
            bodies[current], calls[current] = [], []
            entry = current if header.group(1) else entry
        elif line.strip() == "}":
            current = None
        elif current is not None and " = " in line:
            bodies[current].append(line)
            calls[current].extend(_callees(line))
    if entry is None:
        raise ValueError("the HLO text has no ENTRY computation")
    return bodies, calls, entry


def _callees(line: str) -> list[tuple[str, int]]:
    """`(computation, runs per execution of this instruction)` for every computation `line` calls."""
    trips = _TRIP_COUNT.search(line)
    trip = int(trips.group(1)) if trips else 1
    found = [(name, trip if role in ("body", "condition") else 1) for role, name in _CALLEE.findall(line)]
    for group in _BRANCHES.findall(line):
        found.extend((name.strip().lstrip("%"), 1) for name in group.split(",") if name.strip())
    return found


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape or tuple of shapes (`f32[16,32]{1,0}`, `(f32[2]{0}, bf16[])`)."""
    total = 0
    for dtype, dims in _SHAPE.findall(shape):
        bits = 8 if dtype == "pred" else int(re.match(r"[a-z]+(\d+)", dtype).group(1))
        total += math.ceil(math.prod(int(d) for d in dims.split(",") if d) * bits / 8)
    return total


def simulated_devices(n: int) -> list[jax.Device]:
    """The first `n` CPU devices of this process.

    Raises:
      ValueError: `n` < 1, or the process has fewer CPU devices; the message says how to simulate them.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--devices={n!r} must be a positive integer")
    available = jax.devices("cpu")
    if len(available) < n:
        raise ValueError(
            f"--devices={n} needs {n} CPU devices, but this process has {len(available)}. Simulate them: start "
            f"Python with XLA_FLAGS=--xla_force_host_platform_device_count={n} (read when jax starts its CPU "
            f"backend, so it must be set before the first jax operation), or call "
            f"jax.config.update('jax_num_cpu_devices', {n}) right after importing jax; `python -m experiments.plan` "
            f"does this itself when jax has not started yet")
    return list(available[:n])


def simulate_devices(n: int) -> bool:
    """Asks jax for `n` CPU devices, and for the CPU platform alone, if its backends have not started yet
    (`jax_num_cpu_devices`, which takes precedence over `--xla_force_host_platform_device_count`).

    Returns:
      Whether the setting took (False: jax already runs, with the devices it has).
    """
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        return False
    return True


def parse_bytes(text: str) -> int:
    """`"16GB"` -> 16e9, `"16GiB"` -> 16 * 2**30, `"141 GB"`, `"512MiB"`, `"1e9"`: a byte count.

    Raises:
      ValueError: not a positive number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB); the
        message names `--device_memory`.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if match is None or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"--device_memory={text!r}: give a positive size such as 16GB (10^9 bytes), 16GiB "
                         f"(2^30 bytes) or 141GB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(n: float) -> str:
    """`13.2 GB` (decimal units, as `parse_bytes` reads GB)."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
