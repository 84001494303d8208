"""Shared fixtures: the `test` preset with perturbed parameters, so that no weight sits at its init value
(an all-zero gate vector or all-one norm scales would hide bugs in those paths); one trained run per `make test`,
shared by the xdist workers.

Compiled executables are dropped after every test module. Each one holds about seven memory maps, and one process
that ran the whole suite passed Linux's default limit of 65,530 maps (`vm.max_map_count`) after 80% of it: the
next XLA compile then segfaulted (in tests/train/test_curriculum.py, measured with /proc/PID/maps every 30 s).

The suite compiles far more than it runs (tiny models, hundreds of distinct programs), so XLA's backend
optimisation is switched off for it and for the entry points its tests start as subprocesses (`XLA_FLAGS` is
read when the backend starts, after this module is imported): tests/test_model.py with
tests/interpret/test_significance.py took 138 s instead of 241 s. XLA:CPU's older fusion emitters compile in
half the time of its MLIR ones (tests/interpret: 67 s of backend compilation instead of 128 s, 135 s in all
instead of 195 s). Every result the tests check is either exact between two programs compiled alike or held to
a stated tolerance.

The same programs are compiled again and again: by tests in different modules (the caches above are dropped
between them), by both xdist workers, and by every entry point, notebook kernel and benchmark the tests start as
a subprocess. So one `pytest` keeps a persistent compilation cache in a temporary directory that its workers and
subprocesses inherit through the environment, and removes it at exit: the whole suite took 447 s instead of
486 s, and one `experiments.explain --preset=tiny` 4.5 s instead of 9.0 s (cache cold: 9.6 s). An executable
read from the cache is the one XLA would compile (its key is the program, the flags and the versions). The cache
is not kept between runs: each starts cold, as CI's fresh clone does."""

from __future__ import annotations

import atexit
import fcntl
import functools
import io
import os
import pathlib
import shutil
import tempfile

import chex
import jax
import jax.numpy as jnp
import pytest

import sage_jax as sj

COMPILE_FAST = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), COMPILE_FAST]))

_CACHE_VAR = "SAGE_JAX_TESTS_COMPILATION_CACHE"
if _CACHE_VAR not in os.environ:  # the process the user started: it owns the cache
    os.environ[_CACHE_VAR] = tempfile.mkdtemp(prefix="sage_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ[_CACHE_VAR], ignore_errors=True)
_CACHE_SETTINGS = {"jax_compilation_cache_dir": os.environ[_CACHE_VAR],
                   "jax_persistent_cache_min_compile_time_secs": 0, "jax_persistent_cache_min_entry_size_bytes": 0}
for _name, _value in _CACHE_SETTINGS.items():
    os.environ[_name.upper()] = str(_value)  # for the subprocesses
    jax.config.update(_name, _value)  # for this one: jax read the environment when it was imported


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_executables():
    yield
    jax.clear_caches()


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def perturbed_params(cfg, seed: int = 0, scale: float = 0.05):
    params = sj.init_params(cfg, jax.random.key(seed))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


@pytest.fixture(scope="session")
def cfg():
    return sj.configs.get("test")


@pytest.fixture(scope="session")
def params(cfg):
    return perturbed_params(cfg)


@pytest.fixture(scope="session")
def tokens(cfg):
    """[2, 12] ids with step-boundary tokens (id 3) at known places."""
    toks = jax.random.randint(jax.random.key(7), (2, 12), 4, cfg.vocab_size)
    return toks.at[0, 2].set(3).at[1, 5].set(3)


def make_tokens(cfg, shape, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 4, cfg.vocab_size, dtype=jnp.int32)


def params_for(cfg, params):
    """`params` (of the `test` preset) cut to the tree of `cfg` and cast to its `param_dtype`: the parameters of a
    variant that only drops parts (tied embeddings, no gate) or changes dtype, without compiling that variant's
    `perturbed_params` (about 2 s per config). Each leaf kept is a perturbed parameter of the same shape."""
    shapes = sj.param_shapes(cfg)

    def cut(tree, like):
        if isinstance(like, dict):
            return {name: cut(tree[name], value) for name, value in like.items()}
        return jnp.asarray(tree, like.dtype)

    out = cut(params, shapes)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, shapes)
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "record"))
def jit_forward(params, tokens, cfg, *, edits=None, record=None, mask=None):
    """`sage_jax.forward` compiled as one program (`cfg` and `record` static), for the tests that check what the
    forward computes rather than how it runs op by op: an eager forward compiles each of its ~100 operations at the
    first call with new shapes or edits (1.5-2 s), this whole program 0.2-0.4 s. Token values are not checked
    here (they are tracers): the tests of bad tokens call `sage_jax.forward`."""
    return sj.forward(params, tokens, cfg, edits=edits, record=record, mask=mask)


@pytest.fixture(scope="session")
def trained_run_dir(tmp_path_factory, worker_id) -> pathlib.Path:
    """One run of the `test` curriculum (`experiments/configs/test.py`: three stages, the IAL trained in stage 3)
    trained once per `make test` through the library (`train_run`, which also writes `config.json`), for every
    test that needs a trained run without testing training itself. The first xdist worker to ask trains it under a
    file lock in the directory all workers share; the others wait and read it. Tests must not change what is in
    it."""
    from experiments.configs import test as test_config  # imported here: training pulls in orbax and grain
    from sage_jax.train.run import train_run

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    workdir, finished = root / "trained_run", root / "trained_run.finished"
    with open(root / "trained_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not finished.exists():
            config = test_config.get_config()
            config.workdir = str(workdir)
            train_run(config.to_dict(), progress_stream=io.StringIO())
            finished.touch()
    return workdir


@pytest.fixture(scope="session")
def trained_run(trained_run_dir) -> "sj.Run":
    """`sage_jax.load_run` of `trained_run_dir`."""
    return sj.load_run(trained_run_dir)
