"""The compiler's plan: reported bytes against the buffers a real sharded state occupies (in an 8-device
subprocess, `plan_check.py`), collectives counted from HLO with their loops, the chooser's rule, `--device_memory`
parsing, and the entry point simulating its own devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sage_jax import configs
from sage_jax.train import plan as planner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(**extra) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


@pytest.fixture(scope="module")
def planned():
    flags = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=8"  # tests/conftest.py's and 8 CPUs
    proc = subprocess.run([sys.executable, "-m", "tests.train.plan_check"], cwd=ROOT, env=_env(XLA_FLAGS=flags),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_argument_bytes_equal_the_placed_state_and_batch_on_one_device(planned):
    for candidate in planned["candidates"]:
        memory = candidate["memory"]
        assert memory["arguments"] == candidate["measured_arguments"] == candidate["sharding_arguments"]
        assert memory["total"] == (memory["arguments"] + memory["outputs"] - memory["aliased"]
                                   + memory["temporaries"] + memory["code"])
        assert memory["total"] >= memory["arguments"] and memory["aliased"] > 0  # the donated state
    fsdp2, data8 = planned["candidates"]
    assert fsdp2["memory"]["arguments"] < data8["memory"]["arguments"]  # parameters split over fsdp = 2
    stage3 = planned["inverse"]  # the IAL's parameters and Adam state, and step_index, are arguments too
    assert stage3["memory"]["arguments"] == stage3["measured_arguments"] > fsdp2["memory"]["arguments"]


def test_collectives_by_kind(planned):
    fsdp2, data8 = planned["candidates"]
    assert fsdp2["trial"]["fsdp"] == 2 and {"all-gather", "all-reduce"} <= set(fsdp2["collective_bytes"])
    assert all(n > 0 for n in fsdp2["collective_bytes"].values())
    assert set(data8["collective_bytes"]) == {"all-reduce"}  # data parallel: the gradients only
    assert data8["collective_bytes"]["all-reduce"] > 0


def test_analysis_bytes_are_what_it_reads(planned):
    analysis = planned["analysis"]
    # jit drops the inputs the analysis never reads (the meta head, Steps.ends)
    assert analysis["memory"]["arguments"] == analysis["measured_arguments"] - analysis["measured_unread"]
    assert analysis["memory"]["total"] >= analysis["memory"]["arguments"]


def test_skips_name_their_reason_and_too_few_devices_say_how_to_simulate(planned):
    assert "fsdp=8 does not divide the model" in planned["skip_dims"] and "params/embed" in planned["skip_dims"]
    assert planned["skip_batch"] == "global batch 16 in 4 microbatches does not split over 8 devices"
    assert "--devices=9 needs 9 CPU devices, but this process has 8" in planned["too_few"]
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=9" in planned["too_few"]
    assert planned["simulate_after_start"] is False


def _candidate(fits=True, collectives=0, remat=True, microbatches=1, total=100, skipped=None):
    memory = None if skipped else planner.MemoryStats(arguments=total, outputs=0, aliased=0, temporaries=0, code=0)
    return planner.Candidate(planner.Trial(1, 1, microbatches, remat), memory=memory,
                             collective_bytes={"all-reduce": collectives}, fits=fits, skipped=skipped)


def test_choice_fits_then_fewest_collectives_then_remat_off_then_fewer_microbatches_then_least_memory():
    best = _candidate(collectives=5, total=90)
    assert planner.choose([_candidate(fits=False, collectives=0), _candidate(collectives=10, total=1), best]) is best
    off = _candidate(collectives=5, remat=False)
    assert planner.choose([best, off]) is off
    fewer = _candidate(collectives=5, remat=False, microbatches=1, total=200)
    assert planner.choose([_candidate(collectives=5, remat=False, microbatches=2, total=50), fewer]) is fewer
    small = _candidate(collectives=5, remat=False, total=10)
    assert planner.choose([off, small]) is small
    assert planner.choose([_candidate(fits=False), _candidate(skipped="why")]) is None


@pytest.mark.parametrize("text, expected", [("16GB", 16 * 10**9), ("16GiB", 16 * 2**30), ("141GB", 141 * 10**9),
                                            ("141 gb", 141 * 10**9), ("512MiB", 512 * 2**20), ("1.5TB", 15 * 10**11),
                                            ("1e9", 10**9)])
def test_device_memory_parses(text, expected):
    assert planner.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["16GX", "-1GB", "GB", "0GB", ""])
def test_device_memory_errors_name_the_flag(text):
    with pytest.raises(ValueError, match="--device_memory"):
        planner.parse_bytes(text)


HLO = """HloModule m, entry_computation_layout={(f32[4,2]{1,0})->f32[]}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.1 = f32[] add(%x, %y)
}

%body (p: (s32[], f32[4,2])) -> (s32[], f32[4,2]) {
  %p = (s32[], f32[4,2]{1,0}) parameter(0)
  %g = f32[4,2]{1,0} get-tuple-element(%p), index=1
  %all-gather.1 = f32[4,8]{1,0} all-gather(%g), channel_id=1, replica_groups=[1,4]<=[4], dimensions={1}
  ROOT %t = (s32[], f32[4,2]{1,0}) tuple(%i, %g)
}

%cond (p: (s32[], f32[4,2])) -> pred[] {
  %p = (s32[], f32[4,2]{1,0}) parameter(0)
  ROOT %lt = pred[] constant(true)
}

%branch (q: f32[2]) -> f32[2] {
  %q = f32[2]{0} parameter(0)
  ROOT %cp = f32[2]{0} collective-permute(%q), channel_id=3, source_target_pairs={{0,1},{1,0}}
}

ENTRY %main (a: f32[4,2]) -> f32[] {
  %a = f32[4,2]{1,0} parameter(0)
  %w = (s32[], f32[4,2]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %all-reduce.2 = (f32[2]{0}, bf16[4]{0}) all-reduce(%x, %y), channel_id=2, to_apply=%add
  %ags = (f32[4]{0}, f32[16]{0}) all-gather-start(%v), dimensions={0}
  %agd = f32[16]{0} all-gather-done(%ags)
  %c = f32[2]{0} conditional(%k, %q, %q), branch_computations={%branch, %branch}
  ROOT %r = f32[] constant(0)
}
"""


def test_collectives_count_loop_trips_async_pairs_once_and_each_branch():
    counts, nbytes = planner.collectives(HLO)
    assert counts == {"all-gather": 3 + 1, "all-reduce": 1, "collective-permute": 2}
    assert nbytes == {"all-gather": 3 * 4 * 8 * 4 + 16 * 4, "all-reduce": 2 * 4 + 4 * 2, "collective-permute": 2 * 8}


def test_shape_bytes():
    assert planner.shape_bytes("pred[3]{0}") == 3
    assert planner.shape_bytes("(f32[2,3]{1,0}, s8[5]{0}, /*index=2*/bf16[])") == 24 + 5 + 2
    assert planner.shape_bytes("f32[]") == 4


def test_candidate_meshes_cover_every_factorisation():
    meshes = [(t.data, t.fsdp) for t in planner.candidate_trials(12, (1,), (True,))]
    assert meshes == [(12, 1), (6, 2), (4, 3), (3, 4), (2, 6), (1, 12)]
    with pytest.raises(ValueError, match=r"fsdp sizes \[5\] do not divide --devices=12"):
        planner.candidate_trials(12, fsdp=[5])
    with pytest.raises(ValueError, match="--headroom"):
        planner.budget(10**9, 1.0)


def test_entry_point_simulates_its_devices_and_reports_the_choice(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.plan", "--config=test", "--devices=2",
                           "--device_memory=1GB", "--seq_len=16", "--global_batch=4", "--fsdp=2", "--microbatches=1",
                           "--remat=on", f"--out={out}"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiling candidate 1/1: mesh data=1 fsdp=2, 1 microbatch, remat on" in proc.stderr
    assert "test fits 2 x 1.0 GB with mesh data=1 fsdp=2, 1 microbatch, remat on" in proc.stdout
    saved = json.loads(out.read_text())
    assert saved["choice"]["trial"] == {"data": 1, "fsdp": 2, "microbatches": 1, "remat": True}
    assert saved["choice"]["memory"]["total"] <= saved["budget"]


def test_lengths_the_model_cannot_take_name_the_flag():
    with pytest.raises(ValueError, match=r"--seq_len=33 must lie in \[1, max_seq_len=32\]"):
        planner.plan(configs.get("test"), devices=1, device_memory=10**9, seq_len=33, global_batch=1)
    with pytest.raises(ValueError, match="--analysis_len"):
        planner.analysis_memory(configs.get("test"), 33)
