r"""Why the demo's significance maps miss the true dependencies: where their top-k slots go, by token class,
and how much deleting one token (by edge cut) costs a step, by the same classes.

    python -m benchmarks.explanation_diagnostics --workdir=runs/demo --out=benchmarks/results/explanation_diagnostics.json

Needs a finished demo run (`make demo`). Classes: a true dependency of the step, one of the format tokens
`<bos> <question> =? <step>`, or other.
"""

from __future__ import annotations

import collections
import json
import pathlib

import jax
import numpy as np
from absl import app, flags

import sage_jax as sj
from sage_jax.evaluate import procedural_by_difficulty
from sage_jax.evaluate.explanations import encode_true_chains, explanation_metrics
from sage_jax.interpret import faithfulness, ranking

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "A finished run (`sage_jax.load_run`).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/explanation_diagnostics.json", "Where to write the JSON.")
_PER_DIFFICULTY = flags.DEFINE_integer("per_difficulty", 5, "Problems per number of steps (1-4).")
_K = flags.DEFINE_integer("k", 3, "Top-k slots per step.")
_OCCLUDE_EVERY = flags.DEFINE_integer("occlude", 2, "Single-token deletions on the first N problems of each "
                                      "difficulty (one forward per candidate token and step).")

_FORMAT = ("<bos>", "<question>", "=?", "<step>")


def _token_class(name: str, is_dependency: bool) -> str:
    if is_dependency:
        return "true dependency"
    return name if name in _FORMAT else "other"


def main(argv):
    del argv
    run = sj.load_run(_WORKDIR.value)
    params, tokenizer = run.params, run.tokenizer
    n = _PER_DIFFICULTY.value
    examples = procedural_by_difficulty(run.curriculum.chain_sum, (1, 2, 3, 4), n, seed=7).examples
    encoded = encode_true_chains(tokenizer, examples)
    metrics = explanation_metrics(params, run.cfg, tokenizer, examples, k=_K.value, key=jax.random.key(7))
    slots, effects = collections.Counter(), collections.defaultdict(list)
    for i in range(len(examples)):
        names = [tokenizer.render([t]) for t in encoded.tokens[i]]
        mask = encoded.steps.mask[i]
        candidates = np.asarray(faithfulness.context_candidates(mask))
        occlude = i % n < _OCCLUDE_EVERY.value
        drops = (np.asarray(faithfulness.token_deletion_effects(params, run.cfg, encoded.tokens[i], mask))
                 if occlude else None)
        for s in range(int(encoded.n_steps[i])):
            for t in ranking.top_k_positions(np.asarray(metrics.attribution[i, s]), candidates[s], _K.value):
                slots[_token_class(names[t], bool(encoded.deps[i, s, t]))] += 1
            if drops is not None:
                for t in np.flatnonzero(candidates[s]):
                    effects[_token_class(names[t], bool(encoded.deps[i, s, t]))].append(float(drops[s, t]))
    total = sum(slots.values())
    report = dict(top_k_slot_share={c: v / total for c, v in slots.most_common()},
                  single_token_deletion_drop={c: dict(mean=float(np.mean(v)), n=len(v)) for c, v in effects.items()})
    print(json.dumps(report, indent=2))
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(report, indent=2))
    out.with_suffix(".tmp").replace(out)


if __name__ == "__main__":
    app.run(main)
