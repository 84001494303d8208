"""torch and transformers are the parity peer here (requirements-bench.txt, installed by `make test`).

OMP_WAIT_POLICY=PASSIVE before torch loads, as in `benchmarks/__init__.py`: on a shared machine torch's OpenMP
workers otherwise spin for cores that other processes hold."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
