r"""Intervene on a trained run's own explanation: cut the attention edges it names, and as many random ones.

    python -m experiments.intervene --config=experiments/configs/tiny.py --config.workdir=runs/demo \
        --question='3+1+9+8=?'                       # the model writes its chain, which is explained
    python -m experiments.intervene --config.workdir=runs/demo --steps=3   # a held-out procedural problem

Loads the final parameters of `--stage` (default: the last), explains the problem's chain (exact path), cuts,
for every step, the edges from its queries to the tokens its explanation names (and, as the control, as many
random edges drawn with `--seed`), re-runs, and prints how the regenerated chain, the answer, the step
log-probabilities and the explanation change (`sage_jax.evaluate.intervene`). Writes `intervention.json` and
`intervention.md` into `--out_dir` (default `<workdir>/intervene`).
"""

from __future__ import annotations

import pathlib

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from sage_jax.data.tokenizer import Tokenizer
from sage_jax.evaluate import procedural_by_difficulty
from sage_jax.evaluate.intervene import intervene
from sage_jax.train import curriculum_from_dict, final_state

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/tiny.py", "Curriculum config file.")
_STAGE = flags.DEFINE_integer("stage", None, "Use this stage's final parameters (default: the last stage).")
_QUESTION = flags.DEFINE_string("question", "", "Question text; '' takes a held-out procedural problem.")
_STEPS = flags.DEFINE_integer("steps", 2, "Steps of the held-out procedural problem (without --question).")
_RATIONALE = flags.DEFINE_string("rationale", "", r"The chain, one step per line ('\n' separates lines); '' lets "
                                 "the model write it.")
_ANSWER = flags.DEFINE_string("answer", "", "The given chain's answer ('' for none).")
_SEED = flags.DEFINE_integer("seed", 0, "Key of the random control's edges.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.3, "Significance threshold of the dependencies that are cut.")
_K = flags.DEFINE_integer("k", 3, "Top tokens reported per step of each map.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 48, "Budget of the regenerated chains.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where intervention.{json,md} go (default <workdir>/intervene).")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    config = _CONFIG.value
    cfg = curriculum_from_dict(config.to_dict())
    stage = cfg.stages[-1].stage if _STAGE.value is None else _STAGE.value
    params = final_state(cfg, stage).params
    question = _QUESTION.value
    if not question:
        task = config.eval.procedural
        question = procedural_by_difficulty(getattr(cfg, task), (_STEPS.value,), 1,
                                            seed=config.eval.seed + 2).examples[0].question
    rationale = _RATIONALE.value.replace("\\n", "\n") or None
    report = intervene(params, cfg.model, Tokenizer.load(cfg.model.vocab_size), question,
                       key=jax.random.key(_SEED.value), rationale=rationale,
                       answer=(_ANSWER.value or None) if rationale else None, threshold=_THRESHOLD.value, k=_K.value,
                       max_new_tokens=_MAX_NEW_TOKENS.value)
    out = pathlib.Path(_OUT_DIR.value or pathlib.Path(cfg.workdir) / "intervene")
    out.mkdir(parents=True, exist_ok=True)
    (out / "intervention.json").write_text(report.to_json(), encoding="utf-8")
    (out / "intervention.md").write_text(report.to_markdown(), encoding="utf-8")
    print(report.to_markdown())
    print(f"wrote {out / 'intervention.json'} and {out / 'intervention.md'}")


if __name__ == "__main__":
    app.run(main)
