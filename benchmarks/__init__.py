"""Measurements that write JSON: `python -m benchmarks.run` (sage_jax against its torch peer),
`benchmarks.significance_scaling`, `benchmarks.explanation_diagnostics`.

Importing the package sets `OMP_WAIT_POLICY=PASSIVE` unless the user set it, before anything can load torch
(`sage_jax.train` loads it indirectly). On a shared machine torch's OpenMP workers otherwise spin for cores that
other processes hold: a 2-thread torch train step of the `test` preset was measured 10-100 times slower under a
load average of 12 with the default policy, and as fast as one thread with PASSIVE. XLA does not use OpenMP.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
