"""The theoretical peak FLOP/s of the devices a run uses, and how it was derived: the denominator of MFU.

MFU against a measured GEMM rate says how close a step comes to a GEMM timed on the same machine, but that rate
moves with the machine's load, so a step can pass 100% of it. MFU against the chip's theoretical peak is the
conventional figure (PaLM, Chowdhery et al. 2022, appendix B): a ceiling no code passes.

- CPU: `cores x clock x FLOP per cycle per core`. Cores are those this process may run on (its CPU affinity,
  which XLA's CPU thread pool sizes itself to), counted once per physical core when hardware threads share one.
  The clock is the maximum frequency the kernel publishes, else the model name's rated clock, else `cpu MHz`
  (the current clock). FLOP per cycle follows the widest vector ISA in the CPU flags, assuming two vector FMA
  units per core (true of recent server x86 cores; some parts have one) and that XLA:CPU's GEMM kernels use the
  vectors the host's features allow (they dispatch on them at run time).
- GPU: the vendor's documented dense (no sparsity) peak by `device_kind`. On NVIDIA GPUs float32 matmuls run as
  TF32 on tensor cores at JAX's default matmul precision, so float32 is measured against the TF32 peak unless
  the precision is "highest".

A device with no known peak gives a `PeakEstimate` whose `flops` is None and whose text says why.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

import jax

CPUINFO_PATH = "/proc/cpuinfo"
MAX_FREQ_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
DTYPES = ("float64", "float32", "tfloat32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class PeakEstimate:
    """A theoretical peak and its derivation.

    Attributes:
      flops: peak FLOP/s, or None when it is not known.
      derivation: how `flops` was computed, or why it is not known.
    """

    flops: Optional[float]
    derivation: str


@dataclasses.dataclass(frozen=True)
class _VectorUnit:
    """A vector ISA's per-core float32 throughput: `units x lanes x flop_per_lane` FLOP per cycle; `detail`
    spells that product out, with `{units}` and `{lanes}` to fill in."""

    name: str
    units: int
    lanes: int
    flop_per_lane: int
    detail: str = "{units} FMA units x {lanes} lanes x 2"


# Widest first; the first whose flags are all present is used.
_VECTOR_UNITS = (
    (("avx512f",), _VectorUnit("AVX-512", 2, 16, 2)),
    (("avx2", "fma"), _VectorUnit("AVX2", 2, 8, 2)),
    (("avx",), _VectorUnit("AVX, no FMA", 2, 8, 1, "1 add + 1 multiply unit x {lanes} lanes")),
    (("sse2",), _VectorUnit("SSE2", 2, 4, 1, "1 add + 1 multiply unit x {lanes} lanes")),
)
# AMD Zen 4 (family 25 with AVX-512) runs 512-bit instructions on its two 256-bit FMA units.
_ZEN4 = _VectorUnit("AVX-512 on Zen 4's 256-bit units", 2, 8, 2)

_H100_SXM = {"float64": 67, "float32": 67, "tfloat32": 494.7, "bfloat16": 989.4, "float16": 989.4}
# Documented dense peaks in TFLOP/s (NVIDIA datasheets; tensor-core figures without sparsity; float64 on the
# FP64 tensor cores), matched in order against the lower-cased `device_kind`.
_GPU_PEAKS = (
    (r"h100.*pcie", "NVIDIA H100 PCIe",
     {"float64": 51, "float32": 51, "tfloat32": 378, "bfloat16": 756, "float16": 756}),
    (r"h100(?!.*nvl)", "NVIDIA H100 SXM", _H100_SXM),
    (r"h200(?!.*nvl)", "NVIDIA H200 SXM", _H100_SXM),
    (r"a100", "NVIDIA A100", {"float64": 19.5, "float32": 19.5, "tfloat32": 156, "bfloat16": 312, "float16": 312}),
    (r"\bl4\b", "NVIDIA L4", {"float32": 30.3, "tfloat32": 60, "bfloat16": 121, "float16": 121}),
)


def theoretical_peak_flops(device: Any = None, dtype: str = "float32") -> PeakEstimate:
    """The theoretical peak of one JAX device for matmuls in `dtype` (see the module doc).

    Args:
      device: a `jax.Device` (default: the first of `jax.devices()`).
      dtype: the compute dtype's name, one of `DTYPES`.

    Raises:
      ValueError: `dtype` is not one of `DTYPES`.
    """
    _check_dtype(dtype)
    device = jax.devices()[0] if device is None else device
    if device.platform == "cpu":
        return cpu_peak(dtype)
    if device.platform == "gpu":
        return gpu_peak(device.device_kind, dtype, jax.config.jax_default_matmul_precision)
    return PeakEstimate(None, f"no documented peak for {device.platform} devices ({device.device_kind!r}) in "
                              "sage_jax.train.peak; set peak_flops")


def devices_peak_flops(devices: Sequence[Any], dtype: str = "float32") -> PeakEstimate:
    """The summed peak of `devices`: what a step that uses all of them is measured against.

    CPU devices share the host's cores, so a host counts once however many CPU devices it exposes.
    """
    devices = list(devices)
    if not devices:
        raise ValueError("devices_peak_flops needs at least one device")
    if all(d.platform == "cpu" for d in devices):
        return theoretical_peak_flops(devices[0], dtype)
    estimates = [theoretical_peak_flops(d, dtype) for d in devices]
    unknown = [e for e in estimates if e.flops is None]
    if unknown:
        return unknown[0]
    derivations = sorted({e.derivation for e in estimates})
    prefix = f"{len(devices)} x " if len(derivations) == 1 else ""
    return PeakEstimate(sum(e.flops for e in estimates), prefix + " + ".join(derivations))


def cpu_peak(dtype: str = "float32", cpuinfo_path: str = CPUINFO_PATH,
             max_freq_path: str = MAX_FREQ_PATH) -> PeakEstimate:
    """The host CPU's peak, read from `cpuinfo_path` (absent: not known) and `max_freq_path` (absent: not used)."""
    if not os.path.exists(cpuinfo_path):
        return PeakEstimate(None, f"no CPU peak: {cpuinfo_path} does not exist (not Linux?); set peak_flops")
    with open(cpuinfo_path, encoding="utf-8") as f:
        cpuinfo = f.read()
    max_freq_khz = None
    if os.path.exists(max_freq_path):
        with open(max_freq_path, encoding="utf-8") as f:
            max_freq_khz = f.read()
    return cpu_peak_from(cpuinfo, max_freq_khz, _usable_cpus(), dtype)


def cpu_peak_from(cpuinfo: str, max_freq_khz: Optional[str], usable_cpus: int,
                  dtype: str = "float32") -> PeakEstimate:
    """The CPU peak from the text of /proc/cpuinfo, of `cpuinfo_max_freq` (kHz; None: absent) and the number of
    logical CPUs this process may use."""
    _check_dtype(dtype)
    if dtype not in ("float32", "float64"):
        return PeakEstimate(None, f"no CPU peak for {dtype}: XLA:CPU's vector rate for it is not documented; "
                                  "set peak_flops")
    fields = _first_processor(cpuinfo)
    unit = _vector_unit(fields)
    clock = _clock_ghz(fields, max_freq_khz)
    if unit is None or clock is None:
        missing = "vector ISA flags (only x86 is known)" if unit is None else "clock frequency"
        return PeakEstimate(None, f"no CPU peak: /proc/cpuinfo gives no {missing}; set peak_flops")
    cores, core_note = _physical_cores(fields, usable_cpus)
    lanes = unit.lanes // 2 if dtype == "float64" else unit.lanes
    per_cycle = unit.units * lanes * unit.flop_per_lane
    ghz, clock_note = clock
    flops = cores * ghz * 1e9 * per_cycle
    label = "FP64" if dtype == "float64" else "FP32"
    detail = unit.detail.format(units=unit.units, lanes=lanes)
    return PeakEstimate(flops, f"{cores} cores{core_note} x {ghz:.2f} GHz ({clock_note}) x {per_cycle} {label} "
                               f"FLOP/cycle ({unit.name}: {detail}; the unit count is assumed) = "
                               f"{flops / 1e9:.0f} GFLOP/s")


def gpu_peak(device_kind: str, dtype: str = "float32", matmul_precision: Optional[str] = None) -> PeakEstimate:
    """The documented dense peak of a GPU named `device_kind`, for `dtype` under JAX's `matmul_precision`
    (`jax.config.jax_default_matmul_precision`; float32 runs as TF32 unless it is "highest" or "float32")."""
    _check_dtype(dtype)
    for pattern, name, peaks in _GPU_PEAKS:
        if re.search(pattern, device_kind.lower()):
            break
    else:
        return PeakEstimate(None, f"no documented peak for device kind {device_kind!r} in sage_jax.train.peak; "
                                  "set peak_flops")
    used, note = dtype, ""
    if dtype == "float32" and matmul_precision not in ("highest", "float32"):
        used, note = "tfloat32", ": float32 matmuls run as TF32 at JAX's default matmul precision"
    if used not in peaks:
        return PeakEstimate(None, f"no documented {used} peak for {name}; set peak_flops")
    return PeakEstimate(peaks[used] * 1e12, f"{name}: {peaks[used]:g} TFLOP/s dense {used}{note} (datasheet)")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"no peak for dtype {dtype!r}; choose from {DTYPES}")


def _usable_cpus() -> int:
    """Logical CPUs this process may run on: what XLA's CPU thread pool sizes itself to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _first_processor(cpuinfo: str) -> Mapping[str, str]:
    """The `key: value` fields of the first processor in /proc/cpuinfo, keys lower-cased."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _vector_unit(fields: Mapping[str, str]) -> Optional[_VectorUnit]:
    flags = set(fields.get("flags", "").split())
    if "avx512f" in flags and fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25":
        return _ZEN4
    for needed, unit in _VECTOR_UNITS:
        if flags.issuperset(needed):
            return unit
    return None


def _clock_ghz(fields: Mapping[str, str], max_freq_khz: Optional[str]) -> Optional[tuple[float, str]]:
    """The clock in GHz and where it came from: the published maximum, the rated clock, else the current one."""
    if max_freq_khz is not None and max_freq_khz.strip():
        return int(max_freq_khz) / 1e6, "cpuinfo_max_freq"
    rated = re.search(r"@\s*([\d.]+)\s*GHz", fields.get("model name", ""))
    if rated:
        return float(rated[1]), "the model name's rated clock"
    if "cpu mhz" in fields:
        return float(fields["cpu mhz"]) / 1e3, "cpu MHz in /proc/cpuinfo: the current clock, no maximum published"
    return None


def _physical_cores(fields: Mapping[str, str], usable_cpus: int) -> tuple[int, str]:
    """Cores behind `usable_cpus` logical CPUs: hardware threads of one core share its vector units."""
    try:
        per_core = int(fields["siblings"]) // int(fields["cpu cores"])
    except (KeyError, ValueError, ZeroDivisionError):
        per_core = 1
    if per_core <= 1:
        return usable_cpus, ""
    cores = math.ceil(usable_cpus / per_core)
    return cores, f" ({usable_cpus} usable hardware threads, {per_core} per core)"
