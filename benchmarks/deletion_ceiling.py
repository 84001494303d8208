r"""The best deletion ratio any map could reach on a run: every `k`-subset of each step's content candidates cut.

    python -m benchmarks.deletion_ceiling --workdir=runs/demo --seed=1011 --out=benchmarks/results/deletion_ceiling.json

The explanation table's deletion ratio (`sage_jax.evaluate.truth`) cuts each step's top-`k` content candidates
(edges from the step's queries, every layer and head) and compares with `k` random ones. This brute force finds
the `k`-subset whose cut drops the step most, and the mean over all subsets (the exact random baseline): their
quotient, over the steps with more than `k` candidates, is the ceiling of that ratio for any ranking. Content
candidates are the substitution truth's tested tokens (tokens before the step with a kind).
"""

from __future__ import annotations

import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import sage_jax as sj
from sage_jax.evaluate import procedural_by_difficulty, truth as tr
from sage_jax.interpret import faithfulness
from sage_jax.interpret.patching import baseline_log_probs

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "A finished run (`sage_jax.load_run`).")
_STAGE = flags.DEFINE_integer("stage", None, "The stage whose final parameters to use (default: the last).")
_SEED = flags.DEFINE_integer("seed", 1011, "Seed of the held-out problems.")
_PER_DIFFICULTY = flags.DEFINE_integer("per_difficulty", 5, "Problems per number of steps (1-3).")
_K = flags.DEFINE_integer("k", 3, "Tokens cut per step.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/deletion_ceiling.json", "Where to write the JSON.")


def main(argv):
    del argv
    run = sj.load_run(_WORKDIR.value, stage=_STAGE.value)
    k = _K.value
    examples = procedural_by_difficulty(run.curriculum.chain_sum, (1, 2, 3), _PER_DIFFICULTY.value,
                                        seed=_SEED.value).examples
    chains = tr.encode_chains(run.tokenizer, examples)
    truth = tr.counterfactual_truth(run.params, run.cfg, run.tokenizer, chains, key=jax.random.key(0), n_rollouts=0)
    tested = np.asarray(truth.substitution.tested)
    best, mean = [], []
    for i, n_steps in enumerate(chains.encoded.n_steps):
        tokens, mask = jnp.asarray(chains.encoded.tokens[i]), jnp.asarray(chains.encoded.steps.mask[i])
        base = np.asarray(baseline_log_probs(run.params, run.cfg, tokens, mask).step)
        for step in range(int(n_steps)):
            candidates = np.flatnonzero(tested[i, step])
            if len(candidates) <= k:
                continue
            subsets = list(itertools.combinations(candidates, k))
            deleted = np.zeros((len(subsets),) + mask.shape, bool)
            for r, subset in enumerate(subsets):
                deleted[r, step, list(subset)] = True
            lp = np.asarray(faithfulness.deleted_log_probs(run.params, run.cfg, tokens, mask, jnp.asarray(deleted),
                                                           batch_size=64))[:, step]
            drops = base[step] - lp
            best.append(float(drops.max()))
            mean.append(float(drops.mean()))
        print(f"problem {i + 1}/{len(examples)}: {len(best)} steps so far", flush=True)
    result = {"workdir": str(run.run_dir), "stage": run.stage, "seed": _SEED.value, "k": k,
              "steps_with_a_choice": len(best), "best_subset_drop": float(np.mean(best)),
              "mean_subset_drop": float(np.mean(mean)), "ceiling_ratio": float(np.mean(best) / np.mean(mean))}
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
