"""The `probes` case on the quick sizes (`test` preset, one timed round): registered, every figure finite and positive,
and its byte counts what the shapes imply: each compiled program returns the plain forward's outputs plus exactly its
`Trace` (and a pointer per extra output buffer), and one field at one layer returns at least `n_layers` times fewer
bytes than the full cache. No timing value is compared with anything."""

import json
import math

import numpy as np
import pytest

import sage_jax as sj
from benchmarks import workloads
from benchmarks.cases import CASES, probes
from benchmarks.cases.context import Context
from sage_jax.trace import trace_shapes

CONTENDERS = ("plain", "one_layer", "one_field", "one_field_mean", "full_cache")


@pytest.fixture(scope="module")
def ctx() -> Context:
    cfg = sj.configs.get("test")
    return Context(cfg=cfg, sizes=workloads.sizes_for(cfg, True), repeats=1, quick=True, peer=None, threads=1,
                   rss=False)


@pytest.fixture(scope="module")
def result(ctx):
    return probes.run(ctx).to_dict()


def values(result) -> dict[str, float]:
    return {name: fig["value"] for name, fig in result["figures"].items()}


def test_the_case_is_registered():
    assert CASES["probes"] is probes.run


def test_every_figure_is_finite_and_positive(result):
    recorders = [name for name in CONTENDERS if name != "plain"]
    expected = {f"{name}_{key}" for name in CONTENDERS for key in ("s", "warmup_s", "compile_s", "xla_bytes",
                                                                    "output_bytes")}
    assert set(result["figures"]) == expected | {f"{name}_trace_bytes" for name in recorders}
    for name, fig in result["figures"].items():
        assert fig["unit"] in ("s", "bytes") and math.isfinite(fig["value"]) and fig["value"] > 0, (name, fig)
    assert json.dumps(result)  # serialisable as `benchmarks.run` writes it


def test_outputs_are_the_plain_outputs_plus_exactly_the_trace(ctx, result):
    f, cfg, s = values(result), ctx.cfg, ctx.sizes
    b, t, n = s.trace_batch, s.trace_seq, cfg.n_layers

    def nbytes(record):  # from trace.py's shapes, independently of the compiled programs
        return sum(np.prod(x.shape) * x.dtype.itemsize for x in trace_shapes(cfg, record, b, t, t).values())

    assert f["one_layer_trace_bytes"] == nbytes(sj.Record(resid_mid=True)) == b * t * cfg.d_model * 4
    assert f["one_field_trace_bytes"] == n * nbytes(sj.Record(mlp_hidden=True)) == n * b * t * cfg.d_ff * 4
    assert f["one_field_mean_trace_bytes"] * t == f["one_field_trace_bytes"]
    assert f["full_cache_trace_bytes"] == n * nbytes(sj.Record.all())
    for name in CONTENDERS[1:]:
        fields = len(sj.Record.all().names) if name == "full_cache" else 1
        extra = f[f"{name}_output_bytes"] - f["plain_output_bytes"] - f[f"{name}_trace_bytes"]
        assert 0 <= extra <= 8 * fields, name  # XLA's output tuple holds one pointer per buffer


def test_one_field_at_one_layer_returns_a_layer_count_fewer_bytes_than_the_full_cache(ctx, result):
    f = values(result)
    assert f["one_layer_output_bytes"] * ctx.cfg.n_layers <= f["full_cache_output_bytes"]
    assert all(f[f"{name}_xla_bytes"] < f["full_cache_xla_bytes"] for name in CONTENDERS[:-1])


def test_targets_are_ratios_to_the_full_cache(ctx, result):
    targets = result["targets"]
    assert len(targets) == 3 * (len(CONTENDERS) - 1)
    assert all(t["case"] == "probes" and t["name"].endswith("/ full cache") for t in targets)
    assert all(t["relation"] == "" and t["verdict"] == "-" and t["ratio"] > 0 for t in targets), targets
    ratios = {t["name"]: t["ratio"] for t in targets}
    f = values(result)
    layer = ctx.cfg.n_layers // 2
    assert ratios[f"output bytes, resid_mid at layer {layer} / full cache"] == pytest.approx(
        f["one_layer_output_bytes"] / f["full_cache_output_bytes"], rel=1e-12)
    assert ratios[f"output bytes, resid_mid at layer {layer} / full cache"] <= 1 / ctx.cfg.n_layers
    assert result["settings"]["records"]["one_layer"]["layers"] == (layer,)
    assert result["settings"]["records"]["full_cache"]["fields"] == list(sj.Record.all().names)
