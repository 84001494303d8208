"""`benchmarks.run` end to end on the quick sizes (`test` preset), with torch and transformers imports blocked:
the JSON's keys and units, positive JAX figures, every peer figure recorded as skipped, and the warning.
(tests/benchmarks/test_peer.py runs the torch side.) Fresh-process RSS is off in the end-to-end run (it spawns a
process per workload) and probed once on its own. The `pretrained` and `quantized` cases are left out here (on
their default model they load the 135M SmolLM2); tests/benchmarks/test_pretrained.py runs the first on a tiny chat
model, tests/benchmarks/test_quantized.py the second. The `probes` case is left out too: it compiles five forwards,
and tests/benchmarks/test_probes_case.py runs it. No timing value is compared with anything."""

import contextlib
import io
import json
import math
import sys

import pytest

from benchmarks import memory, run
from benchmarks import peer as peer_lib
from benchmarks.cases import CASES

QUICK_CASES = [name for name in CASES if name not in ("pretrained", "quantized", "probes")]

# Figures that only the torch side produces; everything else comes from JAX.
PEER_FIGURES = {
    "train": {"peer_tokens_per_s", "peer_step_s", "peer_warmup_s", "peer_mfu", "peer_mfu_theoretical"},
    "decode": {"peer_b1_tokens_per_s", "peer_b1_warmup_s", "peer_b8_tokens_per_s", "peer_b8_warmup_s"},
    "inverse_overhead": set(),
    "significance": {"peer_loop_32_s", "peer_loop_32_warmup_s"},
    "trace_memory": set(),
}
JAX_FIGURES = {
    "train": {"gemm_peak", "theoretical_peak_flops", "sage_tokens_per_s", "sage_step_s", "sage_mfu",
              "sage_mfu_theoretical", "sage_compile_s", "sage_flops_per_token", "peer_flops_per_token"},
    "decode": {"sage_b1_tokens_per_s", "sage_b8_tokens_per_s", "sage_b1_compile_s"},
    "inverse_overhead": {"plain_s", "inverse_s", "tracked_only_s", "plain_xla_bytes", "inverse_xla_bytes"},
    "significance": {"significance_32_s", "forward_backward_32_s", "significance_32_xla_bytes"},
    "trace_memory": {"forward_s", "forward_trace_s", "forward_xla_bytes", "forward_trace_xla_bytes"},
}
RSS_FIGURES = {
    "train": set(), "decode": set(), "significance": set(),
    "inverse_overhead": {f"{n}_{k}" for n in ("plain", "inverse") for k in ("peak_rss_bytes", "before_rss_bytes")},
    "trace_memory": {f"{n}_{k}" for n in ("forward", "forward_trace") for k in ("peak_rss_bytes", "before_rss_bytes")},
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run of every case without torch: `(document, out directory, stderr)`."""
    out = tmp_path_factory.mktemp("bench")
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setitem(sys.modules, "torch", None)
        patch.setitem(sys.modules, "transformers", None)
        document = run.run_benchmark(QUICK_CASES, "tiny", repeats=1, out=str(out), quick=True, rss=False,
                                     command="quick test")
    return document, out, stderr.getvalue()


def test_writes_the_json_and_the_table(quick):
    document, out, _ = quick
    assert json.loads((out / "results.json").read_text()) == document
    table = (out / "results.md").read_text()
    assert "quick test" in table and "| case | target | measured | ratio | met |" in table
    assert len(document["targets"]) == table.count("\n| ") - 1  # one row per target, past the header


def test_records_the_machine_versions_and_settings(quick):
    document = quick[0]
    assert set(document["machine"]) >= {"cpu_model", "cores", "usable_cores", "ram_bytes", "python", "backend"}
    assert document["machine"]["backend"] == "cpu" and document["machine"]["devices"]
    assert document["machine"]["theoretical_peak_f32"]["flops"] > 0
    assert document["machine"]["ram_bytes"] > 0 and document["machine"]["cores"] >= 1
    assert set(document["versions"]) >= {"jax", "jaxlib", "flax", "torch", "transformers"}
    assert all(document["versions"][name] for name in ("jax", "jaxlib", "flax"))
    settings = document["settings"]
    assert (settings["preset"], settings["quick"], settings["repeats"]) == ("test", True, 1)
    assert settings["threads"]["xla"] >= 1


def test_every_case_has_its_jax_figures_positive_with_units(quick):
    cases = quick[0]["cases"]
    assert set(cases) == set(QUICK_CASES)
    for name, case in cases.items():
        assert JAX_FIGURES[name] <= set(case["figures"]), name
        for key, fig in case["figures"].items():
            assert isinstance(fig["unit"], str) and fig["unit"], (name, key)
            if key not in PEER_FIGURES[name] | RSS_FIGURES[name]:
                assert math.isfinite(fig["value"]) and fig["value"] > 0, (name, key, fig)
    assert 0 < cases["train"]["figures"]["sage_mfu"]["value"]
    assert 0 < cases["train"]["figures"]["sage_mfu_theoretical"]["value"] < 1


def test_recording_the_trace_costs_buffers(quick):
    figures = quick[0]["cases"]["trace_memory"]["figures"]
    assert figures["forward_trace_xla_bytes"]["value"] > figures["forward_xla_bytes"]["value"]
    inverse = quick[0]["cases"]["inverse_overhead"]["figures"]
    assert inverse["inverse_xla_bytes"]["value"] > inverse["plain_xla_bytes"]["value"]


def test_targets_carry_ratios_and_verdicts(quick):
    targets = quick[0]["targets"]
    assert {t["case"] for t in targets} == set(QUICK_CASES)
    for t in targets:
        if t["verdict"] == "skipped":
            assert t["ratio"] is None and t["met"] is None, t
            continue
        assert t["ratio"] > 0, t
        assert t["verdict"] in ("met", "-") or t["verdict"].startswith("missed by "), t
        assert t["met"] is None if not t["relation"] else isinstance(t["met"], bool), t


def test_without_torch_every_peer_figure_is_skipped(quick):
    document = quick[0]
    for name, case in document["cases"].items():
        reasons = {key: fig["skipped"] for key, fig in case["figures"].items() if "skipped" in fig}
        assert reasons == {**{key: peer_lib.SKIPPED for key in PEER_FIGURES[name]},
                           **{key: memory.RSS_OFF for key in RSS_FIGURES[name]}}, name
    assert not document["peer"]["available"] and document["peer"]["reason"] == peer_lib.SKIPPED
    assert document["settings"]["threads"]["torch"] is None and document["peer"]["peer_param_count"] is None
    verdicts = {t["name"]: t["verdict"] for t in document["targets"]}
    for name in ("tokens/s, sage / torch", "batch 1 tokens/s, sage / HF generate",
                 "32 tokens, 8 steps: torch per-step loop / exact"):
        assert verdicts[name] == "skipped", name
    assert verdicts["32 tokens, 8 steps: exact / one fwd+bwd"] != "skipped"


def test_without_torch_the_warning_is_loud(quick):
    assert run.MISSING_PEER_WARNING in quick[2] and "requirements-bench.txt" in quick[2]


def test_rss_probe_measures_a_fresh_process():
    rss = memory.rss_probe("forward_trace", "test", quick=True, eos_id=2)
    assert rss["peak_rss_bytes"] >= rss["before_rss_bytes"] > 0


def test_unknown_case_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown case"):
        run.run_benchmark(["nope"], "tiny", repeats=1, out=str(tmp_path), quick=True)


def test_nopeer_runs_without_the_peer_and_without_the_warning(tmp_path):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        document = run.run_benchmark(["trace_memory"], "tiny", repeats=1, out=str(tmp_path), quick=True, rss=False,
                                     use_peer=False)
    assert not document["peer"]["available"] and document["peer"]["reason"] == "not run (--nopeer)"
    assert "not installed" not in stderr.getvalue()
