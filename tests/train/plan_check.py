"""Run by `test_plan.py` in a subprocess with `--xla_force_host_platform_device_count=8` (XLA flags must be set
before jax starts). Plans the `test` preset under two candidates, then places the real state and batch with the
same shardings and measures their buffers on device 0; prints one JSON object for the test to assert on."""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax import configs
from sage_jax.model import init_params
from sage_jax.train import plan as planner
from sage_jax.train.state import init_train_state

SEQ, BATCH, ANALYSIS_LEN, ANALYSIS_STEPS = 16, 16, 32, 4
TRIALS = (planner.Trial(data=4, fsdp=2, microbatches=2, remat=True),
          planner.Trial(data=8, fsdp=1, microbatches=1, remat=False))


def device_bytes(tree, device: jax.Device) -> int:
    """Bytes of the buffers of `tree`'s arrays that live on `device`."""
    return sum(shard.data.nbytes for leaf in jax.tree_util.tree_leaves(tree) for shard in leaf.addressable_shards
               if shard.device == device)


def measured_arguments(cfg, trial: planner.Trial, pool, inverse: bool = False) -> int:
    """Device 0's bytes of a real state and batch, placed as the planned step takes them."""
    mesh = planner.trial_mesh(trial, pool)
    state = init_train_state(planner.step_config(cfg, trial, inverse), jax.random.key(0), mesh)
    batch = {name: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding)
             for name, s in planner.abstract_batch(mesh, SEQ, BATCH, inverse).items()}
    return device_bytes((state, batch), pool[0])


def candidate_json(cfg, candidate: planner.Candidate, pool) -> dict:
    mesh = planner.trial_mesh(candidate.trial, pool)
    step_cfg = planner.step_config(cfg, candidate.trial)
    return {"trial": dataclasses.asdict(candidate.trial),
            "memory": {**dataclasses.asdict(candidate.memory), "total": candidate.memory.total},
            "measured_arguments": measured_arguments(cfg, candidate.trial, pool),
            "sharding_arguments": planner.argument_bytes(step_cfg, mesh, SEQ, BATCH),
            "collective_bytes": dict(candidate.collective_bytes),
            "collective_counts": dict(candidate.collective_counts), "fits": candidate.fits}


def analysis_json(cfg, analysis: planner.AnalysisMemory, device: jax.Device) -> dict:
    params = jax.device_put(init_params(cfg, jax.random.key(0)), device)
    chain = (jnp.zeros(ANALYSIS_LEN, jnp.int32), jnp.zeros((ANALYSIS_STEPS, ANALYSIS_LEN), jnp.bool_),
             jnp.zeros(ANALYSIS_STEPS, jnp.int32), jnp.zeros(ANALYSIS_STEPS, jnp.int32))
    unread = (params["meta_head"], chain[3])  # the meta head's parameters and `Steps.ends`
    return {"memory": {**dataclasses.asdict(analysis.memory), "total": analysis.memory.total},
            "measured_arguments": device_bytes((params, jax.device_put(chain, device)), device),
            "measured_unread": device_bytes(jax.device_put(unread, device), device)}


def skipped(cfg, trial: planner.Trial) -> str:
    result = planner.plan(cfg, devices=8, device_memory=10**9, seq_len=SEQ, global_batch=BATCH, trials=[trial])
    return result.candidates[0].skipped


def main() -> dict:
    cfg = configs.get("test")
    pool = planner.simulated_devices(8)
    result = planner.plan(cfg, devices=8, device_memory=planner.parse_bytes("1GB"), seq_len=SEQ, global_batch=BATCH,
                          trials=TRIALS, analysis_len=ANALYSIS_LEN, analysis_steps=ANALYSIS_STEPS)
    out = {"candidates": [candidate_json(cfg, c, pool) for c in result.candidates],
           "analysis": analysis_json(cfg, result.analysis, pool[0]),
           "choice": dataclasses.asdict(result.choice.trial), "summary": result.summary()}
    stage3 = planner.plan(cfg, devices=8, device_memory=10**9, seq_len=SEQ, global_batch=BATCH, trials=TRIALS[:1],
                          inverse=True).candidates[0]
    out["inverse"] = {"memory": dataclasses.asdict(stage3.memory),
                      "measured_arguments": measured_arguments(cfg, stage3.trial, pool, inverse=True)}
    out["skip_dims"] = skipped(configs.get("test", d_model=36, head_dim=8), planner.Trial(1, 8, 1, True))
    out["skip_batch"] = skipped(cfg, planner.Trial(8, 1, 4, True))
    try:
        planner.simulated_devices(9)
    except ValueError as err:
        out["too_few"] = str(err)
    out["simulate_after_start"] = planner.simulate_devices(12)
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
