"""Run in a fresh process with 8 simulated CPU devices by tests/evaluate/test_parallel.py: every corpus measure of
`measure_everything`, the chains split over the 8 devices, written to the JSON file named by argv[1]."""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402

from tests.evaluate.test_parallel import measure_everything  # noqa: E402

if __name__ == "__main__":
    values = {name: np.asarray(v).tolist() for name, v in measure_everything().items()}
    with open(sys.argv[1], "w") as f:
        json.dump({"devices": len(jax.devices()), "values": values}, f)
