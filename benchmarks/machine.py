"""The machine and the package versions a benchmark ran with."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import jax

from sage_jax.train.peak import theoretical_peak_flops

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_bytes() -> int:
    """Physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), which is what XLA's CPU thread pool sizes itself to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def theoretical_peak() -> dict:
    """The f32 theoretical peak of the device the SAGE side ran on, and how it was derived (`flops` None where it
    is not known): what `*_mfu_theoretical` divides by."""
    peak = theoretical_peak_flops(dtype="float32")
    return dict(flops=peak.flops, derivation=peak.derivation)


def machine() -> dict:
    """The host, the JAX backend and devices the SAGE side ran on, and their theoretical peak."""
    return dict(cpu_model=cpu_model(), cores=os.cpu_count(), usable_cores=usable_cores(),
                ram_bytes=ram_bytes(), platform=platform.platform(), python=sys.version.split()[0],
                backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()],
                theoretical_peak_f32=theoretical_peak())


def versions() -> dict:
    """Installed versions of `PACKAGES` (`None` for one that is not installed)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found
