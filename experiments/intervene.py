r"""Intervene on a model's own explanation: cut the attention edges it names, and as many random ones.

    python -m experiments.intervene --workdir=runs/demo --question='3+1+9+8=?'   # the model writes its chain
    python -m experiments.intervene --workdir=runs/demo --steps=3               # a held-out procedural problem
    python -m experiments.intervene --preset=tiny --steps=2                     # no run: a fresh initialisation

With `--workdir`, the model is the trained run there (`sage_jax.load_run`: the final parameters of `--stage`,
default the last), and a held-out problem comes from the run's own evaluation task and difficulty knobs (the
`eval` section saved with it). Without one, parameters are freshly initialised from `--preset` and
`--init_seed`, and a held-out problem is a chained sum of the data defaults whose true chain is explained
unless `--rationale` is given (an untrained model writes no chain). Explains the problem's chain
(exact path), cuts, for every step, the edges from its queries to the tokens its explanation names (and, as
the control, as many random edges drawn with `--seed`), re-runs, and prints how the regenerated chain, the
answer, the step log-probabilities and the explanation change (`sage_jax.evaluate.intervene`). Writes
`intervention.json` and `intervention.md` into `--out_dir` (default `<workdir>/intervene`, or
`intervene_out` without a run).
"""

from __future__ import annotations

import pathlib
from typing import Optional

import jax
from absl import app, flags
from absl import logging as absl_logging

import sage_jax as sj
from sage_jax.data import ChainSumKnobs, Example, Tokenizer
from sage_jax.evaluate import procedural_by_difficulty
from sage_jax.evaluate.intervene import intervene

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's directory; without it, a fresh --preset model.")
_STAGE = flags.DEFINE_integer("stage", None, "With --workdir: this stage's final parameters (default: the last).")
_PRESET = flags.DEFINE_enum("preset", "tiny", sj.configs.names(), "Model preset (without --workdir).")
_INIT_SEED = flags.DEFINE_integer("init_seed", 0, "Initialisation seed (without --workdir).")
_QUESTION = flags.DEFINE_string("question", "", "Question text; '' takes a held-out procedural problem.")
_STEPS = flags.DEFINE_integer("steps", 2, "Steps of the held-out procedural problem (without --question).")
_RATIONALE = flags.DEFINE_string("rationale", "", r"The chain, one step per line ('\n' separates lines); '' lets "
                                 "the model write it.")
_ANSWER = flags.DEFINE_string("answer", "", "The given chain's answer ('' for none).")
_SEED = flags.DEFINE_integer("seed", 0, "Key of the random control's edges.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.3, "Significance threshold of the dependencies that are cut.")
_K = flags.DEFINE_integer("k", 3, "Top tokens reported per step of each map.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 48, "Budget of the regenerated chains.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where intervention.{json,md} go (default <workdir>/intervene, or "
                               "intervene_out without a run).")


def held_out_problem(run: Optional[sj.Run]) -> Example:
    """A held-out problem of `--steps` steps: the run's evaluation task and knobs, else default chained sums."""
    if run is None:
        knobs, seed = ChainSumKnobs(), 2
    else:
        if "eval" not in run.config:
            raise app.UsageError(f"{run.run_dir}/config.json has no `eval` section to draw a held-out problem "
                                 "from: pass --question")
        knobs, seed = getattr(run.curriculum, run.config["eval"]["procedural"]), run.config["eval"]["seed"] + 2
    return procedural_by_difficulty(knobs, (_STEPS.value,), 1, seed=seed).examples[0]


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    if _WORKDIR.value is not None:
        run = sj.load_run(_WORKDIR.value, stage=_STAGE.value)
        cfg, params, tokenizer = run.cfg, run.params, run.tokenizer
        out = pathlib.Path(_OUT_DIR.value or run.run_dir / "intervene")
    else:
        run, cfg = None, sj.configs.get(_PRESET.value)
        params, tokenizer = sj.init_params(cfg, jax.random.key(_INIT_SEED.value)), Tokenizer.load(cfg.vocab_size)
        out = pathlib.Path(_OUT_DIR.value or "intervene_out")
    question, rationale = _QUESTION.value, _RATIONALE.value.replace("\\n", "\n") or None
    answer = (_ANSWER.value or None) if rationale else None
    if not question:
        problem = held_out_problem(run)
        question = problem.question
        if run is None and rationale is None:  # a fresh model writes no chain: explain the true one
            rationale, answer = "\n".join(problem.steps), problem.answer
    report = intervene(params, cfg, tokenizer, question, key=jax.random.key(_SEED.value), rationale=rationale,
                       answer=answer, threshold=_THRESHOLD.value, k=_K.value, max_new_tokens=_MAX_NEW_TOKENS.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "intervention.json").write_text(report.to_json(), encoding="utf-8")
    (out / "intervention.md").write_text(report.to_markdown(), encoding="utf-8")
    print(report.to_markdown())
    print(f"wrote {out / 'intervention.json'} and {out / 'intervention.md'}")


if __name__ == "__main__":
    app.run(main)
