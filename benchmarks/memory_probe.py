r"""Peak resident memory of one benchmark workload, in a fresh process (used by `benchmarks.run`).

    python -m benchmarks.memory_probe --workload=generate_tracked_analysed --preset=tiny --eos_id=7

Prints one JSON line: `peak_rss_bytes` (imports, compilation and one run) and `before_rss_bytes` (the resident
size once the workload is built and compiled, just before it runs). Linux only (/proc).

The peak is `VmHWM` of /proc/self/status, the high-water mark of this process image. Not `ru_maxrss`: Linux
carries it across `execve` from the image replaced, which for a `subprocess` child is the parent's (vfork), so
every probe would report the benchmark process's own peak.
"""

from __future__ import annotations

import json

from absl import app, flags

import sage_jax as sj
from benchmarks import workloads

_WORKLOAD = flags.DEFINE_enum("workload", None, workloads.MEMORY_WORKLOADS, "What to run.")
_PRESET = flags.DEFINE_string("preset", "tiny", "Model preset.")
_QUICK = flags.DEFINE_bool("quick", False, "The quick sizes (`benchmarks.run --quick`).")
_EOS = flags.DEFINE_integer("eos_id", None, "End token that the generation never emits (`workloads.free_eos`).")
flags.mark_flags_as_required(["workload", "eos_id"])


def _status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`), in bytes."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} field")


def main(argv):
    del argv
    cfg = sj.configs.get(_PRESET.value)
    pipeline = workloads.build(_WORKLOAD.value, cfg, workloads.sizes_for(cfg, _QUICK.value), _EOS.value)
    before = _status_bytes("VmRSS")
    pipeline.run()
    print(json.dumps(dict(peak_rss_bytes=_status_bytes("VmHWM"), before_rss_bytes=before)))


if __name__ == "__main__":
    app.run(main)
