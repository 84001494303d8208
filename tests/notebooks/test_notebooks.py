"""The notebooks run top to bottom, headless (nbclient, the `python3` kernel of this environment), and are committed
without outputs. 01-04 run on the session's trained run (`trained_run_dir` in tests/conftest.py; the run they load
is chosen by `experiments.notebook_run`); 05 on the pretrained model `$SAGE_MODEL` names, here a random Hugging Face
chat checkpoint (SmolLM2 itself is what it loads by default: WORKSPACE records that run); 06 on both."""

from __future__ import annotations

import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

from experiments import notebook_run as nr
from experiments.configs import notebook
from sage_jax.data import Tokenizer
from sage_jax.train.curriculum.data import stage_pipeline
from sage_jax.train.curriculum.parse import curriculum_from_dict
from tests.test_chat import save_random_chat_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
RUN_NOTEBOOKS = [p for p in NOTEBOOKS if p.name not in ("05_pretrained_model.ipynb", "06_probes.ipynb")]


@pytest.fixture
def run_dir(trained_run_dir, tmp_path_factory):
    """The env vars point the notebooks at the session's run, and any fallback at an empty directory (a notebook
    must never train into the repository, nor here: the session's run is finished)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(nr.RUN_DIR_ENV, str(trained_run_dir))
        patch.setenv(nr.NOTEBOOK_RUN_DIR_ENV, str(tmp_path_factory.mktemp("no_notebook_run")))
        patch.setenv("JAX_PLATFORMS", "cpu")
        yield trained_run_dir


def test_the_six_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01_trace.ipynb", "02_decision_points.ipynb",
                                           "03_causal_interventions.ipynb", "04_faithfulness.ipynb",
                                           "05_pretrained_model.ipynb", "06_probes.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} has outputs"


def test_notebook_run_loads_the_finished_run_from_the_env_var(run_dir, capsys):
    run = nr.notebook_run()
    assert run.run_dir == run_dir and run.stage == 3 and run.inverse is not None
    assert run.cfg.name == "test" and run.cfg.vocab_size == run.tokenizer.vocab_size == 512
    assert capsys.readouterr().out == ""  # nothing trained


@pytest.mark.parametrize("missing", ["absent", "no_config_json"])
def test_a_missing_run_falls_back_to_the_finished_notebook_run(missing, run_dir, tmp_path, monkeypatch, capsys):
    wanted = tmp_path / missing
    if missing == "no_config_json":
        wanted.mkdir()
        (wanted / "stage3").symlink_to(run_dir / "stage3")
    monkeypatch.setenv(nr.RUN_DIR_ENV, str(wanted))
    monkeypatch.setenv(nr.NOTEBOOK_RUN_DIR_ENV, str(run_dir))
    run = nr.notebook_run()
    assert run.run_dir == run_dir and capsys.readouterr().out == ""


def test_relative_run_dirs_are_taken_from_the_repository_root():
    assert nr.resolve("runs/demo") == ROOT / "runs" / "demo"
    assert nr.resolve("/abs/run") == pathlib.Path("/abs/run")


def test_the_notebook_fallback_config_parses_and_every_stage_has_data():
    """What `notebook_run` would train when no run exists: its config is valid and no stage's mixture loses
    every example to its sequence length (the training itself is the library's, tested in tests/train)."""
    cfg = curriculum_from_dict(notebook.get_config().to_dict())
    tokenizer = Tokenizer.load(cfg.model.vocab_size)
    assert cfg.model.name == "test" and [s.stage for s in cfg.stages] == [1, 2, 3]
    for stage in cfg.stages:
        batch = next(iter(stage_pipeline(cfg, stage, tokenizer)))
        assert batch["tokens"].shape == (stage.batch_size, stage.seq_len)


def _execute(path: pathlib.Path):
    """The notebook, run; and its code cells' outputs."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()  # raises on any cell error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return nb, outputs


def test_the_pretrained_model_notebook_runs_on_the_model_sage_model_names(tmp_path, monkeypatch):
    model_dir = save_random_chat_model(tmp_path / "model")
    monkeypatch.setenv("SAGE_MODEL", str(model_dir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb, outputs = _execute(NOTEBOOK_DIR / "05_pretrained_model.ipynb")
    first = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert f"from {model_dir}:" in first, first
    text = "".join(o.get("text", "") for o in outputs)
    assert "step 1 " in text and "cut: step" in text and "regenerated:" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, "the notebook shows fewer than two figures"


@pytest.mark.parametrize("path", RUN_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, run_dir):
    nb, outputs = _execute(path)
    first = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert f"model, stage 3 of {run_dir}:" in first and "training" not in first, first
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook shows no figure"


def test_the_probes_notebook_runs_on_the_trained_run_and_on_the_model_sage_model_names(run_dir, tmp_path,
                                                                                      monkeypatch):
    model_dir = save_random_chat_model(tmp_path / "model")
    monkeypatch.setenv("SAGE_MODEL", str(model_dir))
    nb, outputs = _execute(NOTEBOOK_DIR / "06_probes.ipynb")
    first = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert f"model, stage 3 of {run_dir}:" in first and "training" not in first, first
    text = "".join(o.get("text", "") for o in outputs)
    assert f"from {model_dir}:" in text
    sums = re.findall(r"= (-?\d+\.\d+); the direct attributions sum to (-?\d+\.\d+)", text)
    assert len(sums) == 2, text  # one per model; each sum is the logit difference to the printed digits
    for difference, total in sums:
        assert abs(float(difference) - float(total)) <= 2e-4, (difference, total)
    assert len(re.findall(r"Spearman over \d+ heads between the estimate and real patching", text)) == 2
    assert text.count("strongest induction") == 2 and text.count("mean-ablating its neurons") == 2
    assert text.count("strongest receiver_kurtosis") == 1  # the six-step chain's, not the trained default's sums
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures == 9, f"{figures} figures: expected lens, DLA, detectors, patching per model, and receiver heads"
