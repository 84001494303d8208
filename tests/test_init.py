"""`import sage_jax as sj` reaches every concept in one hop: interpretation is loaded with the package, training
(orbax, grain) only when first used, and the lazy names are the real objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sage_jax as sj

_CHECK = """
import sys
import sage_jax as sj
assert "sage_jax.interpret" in sys.modules and "sage_jax.interpret.faithfulness" in sys.modules
loaded = sorted(m for m in sys.modules if m.split(".")[:2] in (["sage_jax", "train"], ["sage_jax", "evaluate"],
                                                               ["sage_jax", "viz"], ["sage_jax", "data"]))
assert not loaded, loaded
assert "orbax" not in sys.modules and "grain" not in sys.modules
sj.load_run
assert "sage_jax.train.run" in sys.modules
"""


def test_import_loads_interpret_and_not_training():
    done = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_concept_is_one_hop_away():
    from sage_jax.interpret import explain, faithfulness, interventions, significance
    from sage_jax.train import run

    assert sj.interpret.explain is explain and sj.interpret.decision_points is not None
    assert sj.interpret.significance is significance and sj.interpret.interventions is interventions
    assert sj.interpret.faithfulness is faithfulness
    assert sj.load_run is run.load_run and sj.Run is run.Run
    assert sj.train.run is run and sj.evaluate.procedural_by_difficulty is not None and sj.viz.attention_figure
    assert sj.data.Tokenizer is not None
    assert set(sj.__all__) <= set(dir(sj))
    with pytest.raises(AttributeError, match="module 'sage_jax' has no attribute 'nothing'"):
        sj.nothing
