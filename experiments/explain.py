r"""Explain a chain of thought: print the Markdown explanation, write it as JSON and HTML.

    python -m experiments.explain --preset=tiny --question='3+1+9+8=?' \
        --rationale='3+1=4\n4+9=13\n13+8=21' --answer=21 --out_dir=/tmp/explain

`--rationale=''` generates the chain greedily from the question (an untrained model tends to repeat one token,
which `explain` reports as a chain without steps). Parameters are freshly initialised (an
untrained model: the analysis is real, the reasoning is noise) until a checkpoint flag lands with the
training issue. Text is encoded with the shipped tokenizer of the preset's vocabulary size
(`sage_jax.data.Tokenizer`).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from absl import app, flags

import sage_jax as sj
from sage_jax.data import Tokenizer
from sage_jax.interpret import ExplainConfig, agreement, attribute, explain, find_steps, methods
from sage_jax.interpret.significance import WEIGHTINGS
from sage_jax.nn.inverse import init_inverse_params

_PRESET = flags.DEFINE_enum("preset", "tiny", sj.configs.names(), "Model preset.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed.")
_QUESTION = flags.DEFINE_string("question", "3+1+9+8=?", "Question text.")
_RATIONALE = flags.DEFINE_string("rationale", r"3+1=4\n4+9=13\n13+8=21",
                                 r"Chain of thought, one step per line ('\n' separates lines); '' generates it.")
_ANSWER = flags.DEFINE_string("answer", "21", "Final answer of the given chain ('' for none).")
_METHOD = flags.DEFINE_enum("method", "exact", ["exact", "amortised"],
                            "Analysis path; 'amortised' uses a freshly initialised Inverse Analysis Layer.")
_WEIGHTING = flags.DEFINE_enum("weighting", "attention", list(WEIGHTINGS), "w_ij of Eq. 7.")
_HEADS = flags.DEFINE_string("heads", None, "Head group of w_ij (reasoning, memory, meta); all by default.")
_LAYER = flags.DEFINE_integer("layer", 0, "Layer whose hidden states are differentiated (0: embeddings).")
_THRESHOLD = flags.DEFINE_float("threshold", 0.3, "Significance threshold of decision points.")
_CONTINUATIONS = flags.DEFINE_boolean("continuations", False, "Generate where each alternative leads.")
_AGREEMENT = flags.DEFINE_boolean("agreement", False,
                                  "Also print how much every registered attribution method agrees on this chain.")
_OUT_DIR = flags.DEFINE_string("out_dir", "explain_out", "Directory for explanation.json and explanation.html.")


def main(argv):
    del argv
    cfg = sj.configs.get(_PRESET.value)
    codec = Tokenizer.load(cfg.vocab_size)
    key_model, key_inverse = jax.random.split(jax.random.key(_SEED.value))
    params = sj.init_params(cfg, key_model)
    rationale = _RATIONALE.value.replace("\\n", "\n") or None
    config = ExplainConfig(method=_METHOD.value, weighting=_WEIGHTING.value, heads=_HEADS.value, layer=_LAYER.value,
                           threshold=_THRESHOLD.value, continuations=_CONTINUATIONS.value)
    explanation = explain(
        params, cfg, _QUESTION.value, rationale, tokenizer=codec,
        answer=(_ANSWER.value or None) if rationale else None, config=config,
        inverse_params=init_inverse_params(cfg, key_inverse) if _METHOD.value == "amortised" else None)
    print(explanation.to_markdown())
    if _AGREEMENT.value:
        tokens = np.asarray(explanation.tokens)
        steps = find_steps(tokens)
        maps = {m: attribute(m, params, cfg, tokens, steps) for m in methods()}
        print(agreement(maps, steps).to_markdown() + "\n")
    out = pathlib.Path(_OUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "explanation.json").write_text(explanation.to_json(), encoding="utf-8")
    (out / "explanation.html").write_text(explanation.to_html(), encoding="utf-8")
    print(f"wrote {out / 'explanation.json'} and {out / 'explanation.html'}")


if __name__ == "__main__":
    app.run(main)
