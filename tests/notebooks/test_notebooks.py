"""The notebooks run top to bottom, headless (nbclient, the `python3` kernel of this environment), on one
small run trained once for the session, and are committed without outputs; the model they load is the
run's (`sage_jax.viz.notebook_model`)."""

from __future__ import annotations

import io
import pathlib

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from sage_jax.viz import notebook_model as nm

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
STEPS = (30, 60, 10)  # enough to write `<step>` chains now and then; the notebooks only need a trained run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """One small notebook run for every test here; the env vars point the notebooks (and any fallback) at it."""
    workdir = tmp_path_factory.mktemp("notebook_run")
    nm.train_notebook_run(workdir, steps=STEPS, progress_stream=io.StringIO())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(nm.RUN_DIR_ENV, str(workdir))
        patch.setenv(nm.NOTEBOOK_RUN_DIR_ENV, str(workdir))  # a notebook must never train into the repository
        patch.setenv("JAX_PLATFORMS", "cpu")
        yield workdir


def test_the_four_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01_trace.ipynb", "02_decision_points.ipynb",
                                           "03_causal_interventions.ipynb", "04_faithfulness.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} has outputs"


def test_load_or_train_loads_the_finished_run_from_the_env_var(run_dir):
    run = nm.load_or_train()
    assert run.run_dir == run_dir and not run.trained_here
    assert run.cfg.name == "test" and run.cfg.vocab_size == run.tokenizer.vocab_size == 512
    assert run.curriculum.stages[-1].steps == STEPS[-1]
    tokens = np.asarray(run.tokenizer.encode("1+2=?"))
    assert run.forward(tokens).logits.shape == (1, tokens.size, 512)


def test_a_missing_run_falls_back_to_the_notebook_run(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(nm.RUN_DIR_ENV, str(tmp_path / "absent"))
    run = nm.load_or_train()
    assert run.run_dir == run_dir and not run.trained_here


def test_a_run_without_config_json_is_read_with_the_config_file(run_dir, tmp_path, monkeypatch):
    """The demo's run has no config.json: its config file (experiments/configs/tiny.py by default) is used."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for stage in ("stage1", "stage2", "stage3"):
        (bare / stage).symlink_to(run_dir / stage)
    config_file = tmp_path / "run_config.py"
    config_file.write_text("import ml_collections\n\n\ndef get_config():\n    return ml_collections.ConfigDict("
                           f"{nm.notebook_curriculum('ignored', steps=STEPS)!r})\n")
    monkeypatch.setenv(nm.RUN_CONFIG_ENV, str(config_file))
    run = nm.load_run(bare)
    assert run.curriculum.workdir == str(bare) and run.cfg.max_seq_len == 64
    monkeypatch.setenv(nm.RUN_CONFIG_ENV, str(tmp_path / "nothing.py"))
    with pytest.raises(FileNotFoundError, match="nothing.py"):
        nm.load_run(bare)
    assert nm.run_config(bare, nm.DEMO_CONFIG).model.name == "tiny"  # the demo's own config file


def test_notebook_curriculum_rejects_bad_step_counts():
    with pytest.raises(ValueError, match="three positive"):
        nm.notebook_curriculum("x", steps=(1, 2))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, run_dir):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()  # raises on any cell error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    first = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert f"from {run_dir} (loaded)" in first, first
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook shows no figure"
