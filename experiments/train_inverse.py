r"""Train an Inverse Analysis Layer for a pretrained chat model, the model frozen, and measure it on held-out problems.

    python -m experiments.train_inverse --model=smollm2-135m-instruct --workdir=/tmp/ial_smol \
        --problems=300 --heldout=60 --train_steps=400

The problems are `spoken_sum`'s ("What is 3 + 4 + 5?"; `--chain_steps` rationale steps each), their TRUE chains
written as the assistant's reply in the model's chat template and teacher-forced (the model need not be able to
write them itself: SmolLM2-135M answers 5-20% of them). `sage_jax.train.inverse_only` computes each problem's
teachers once (the IAL's features, the forward's next-token logits on the step tokens, the exact Eq. 7 map) into
`<workdir>/teachers/train`, then trains the IAL on them with stage 3's loss, checkpointing into `<workdir>/ckpt`
(a rerun resumes both). Held-out problems (another seed; questions seen in training are dropped) get their
exact maps the same way (`<workdir>/teachers/heldout`), and `<workdir>/agreement.json` reports, with the
measures `experiments.evaluate` gives the trained default (`sage_jax.evaluate.consistency`):

- the trained IAL (`amortised_agreement`: consistency, fidelity, map agreement, Spearman, top-k overlap);
- the same IAL untrained (its initialisation);
- attention alone (`w_ij` of Eq. 7 on each step's sources, normalised like the exact map: the free baseline);
- a uniform map over each step's sources.

With `--own_replies=N`, the same table is also measured on the model's OWN greedy replies to N held-out questions
spread over the step counts (`--reply_tokens` new tokens at most, each non-blank line of the reply a step): the
chains an explanation of a generation analyses, unlike any the IAL was trained on.

`--train_on=own_replies` trains on the model's own greedy replies to the training questions instead (each
non-blank line a step, whatever the reply says).

Use the trained IAL with `python -m experiments.explain --model=... --method=amortised --inverse_dir=<workdir>`.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from absl import app, flags

from sage_jax import interop
from sage_jax.chat import ChatLayout
from sage_jax.data.procedural import SpokenSumKnobs
from sage_jax.evaluate.accuracy import generate_batched
from sage_jax.evaluate.consistency import amortised_agreement, map_agreement, summarise_amortised
from sage_jax.evaluate.explanations import Encoded, encode_true_chains
from sage_jax.evaluate.heldout import procedural_by_difficulty
from sage_jax.layout import LayoutError, find_steps, from_spans, stack_steps
from sage_jax.train.inverse_only import InverseOnlyConfig, compute_teachers, initial_state, train_inverse_only

_MODEL = flags.DEFINE_string("model", None, "A pretrained chat model: a name (sage_jax.interop.MODELS), a GGUF file "
                             "or a Hugging Face directory with a chat template.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the teachers, checkpoints, logs and agreement.json go.")
_PROBLEMS = flags.DEFINE_integer("problems", 300, "Training problems, split evenly over --chain_steps.")
_HELDOUT = flags.DEFINE_integer("heldout", 60, "Held-out problems drawn (before dropping those seen in training).")
_CHAIN_STEPS = flags.DEFINE_list("chain_steps", ["1", "2", "3"], "Rationale step counts of the problems.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the training problems, the IAL's initialisation and the data order.")
_HELDOUT_SEED = flags.DEFINE_integer("heldout_seed", 7, "Seeds the held-out problems.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 300, "IAL updates.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Problems per update.")
_LR = flags.DEFINE_float("lr", 3e-3, "Peak learning rate.")
_WARMUP = flags.DEFINE_integer("warmup", 30, "Warmup steps.")
_MAP_WEIGHT = flags.DEFINE_float("map_weight", 1.0, "Weight of the map term against the reconstruction's KL.")
_TEACHER_BATCH = flags.DEFINE_integer("teacher_batch", 4, "Problems per jitted chunk of teachers (memory).")
_SAVE_EVERY = flags.DEFINE_integer("save_every", 100, "Checkpoint every this many updates.")
_EVAL = flags.DEFINE_boolean("eval", True, "Measure the IAL and the baselines on the held-out problems.")
_K = flags.DEFINE_integer("k", 3, "The k of the top-k overlap.")
_TRAIN_ON = flags.DEFINE_enum("train_on", "true_chains", ["true_chains", "own_replies"],
                               "What the IAL learns on: the training problems' true chains, or the model's own greedy "
                               "replies to their questions (--reply_tokens long).")
_OWN_REPLIES = flags.DEFINE_integer("own_replies", 0, "Also measure on the model's own greedy replies to this many "
                                    "held-out questions (0: not).")
_REPLY_TOKENS = flags.DEFINE_integer("reply_tokens", 64, "With --own_replies: new tokens per reply at most.")
flags.mark_flags_as_required(["model", "workdir"])


def problems(params, cfg, codec, layout):
    """`(training Encoded, held-out Encoded, {step count: held-out problems}, held-out examples)` in `layout`: the
    held-out problems' true chains; the training problems' true chains, or with `--train_on=own_replies` the
    model's replies to their questions."""
    steps = tuple(int(s) for s in _CHAIN_STEPS.value)
    per = max(1, _PROBLEMS.value // len(steps))
    train = procedural_by_difficulty(SpokenSumKnobs(), steps, per, seed=_SEED.value).examples
    seen = {ex.question for ex in train}
    drawn = procedural_by_difficulty(SpokenSumKnobs(), steps, max(1, _HELDOUT.value // len(steps)),
                                     seed=_HELDOUT_SEED.value).examples
    heldout = [ex for ex in drawn if ex.question not in seen]
    if not heldout:
        raise app.UsageError("every held-out question was seen in training; draw more with --heldout")
    counts = {k: sum(len(ex.steps) == k for ex in heldout) for k in steps}
    print(f"{len(train)} training problems, {len(heldout)} held out ({len(drawn) - len(heldout)} seen in training "
          f"dropped; by steps {counts})")
    chains = own_replies(params, cfg, layout, train) if _TRAIN_ON.value == "own_replies" else \
        encode_true_chains(codec, train, layout)
    return chains, encode_true_chains(codec, heldout, layout), counts, heldout


def own_replies(params, cfg, layout, examples) -> Encoded:
    """The model's greedy replies to `examples`' questions as chains (`Encoded` without dependencies: `deps` and
    `content` all False), each non-blank reply line a step; replies without a line are left out."""
    prompts = [layout.prompt(layout.codec, ex.question) for ex in examples]
    replies = generate_batched(params, cfg, prompts, max_new_tokens=_REPLY_TOKENS.value,
                               batch_size=min(len(prompts), 32), eos_id=layout.eos_id)
    chains, spans = [], []
    for prompt, reply in zip(prompts, replies):
        tokens = np.asarray(list(prompt) + list(reply), np.int32)
        try:
            found = find_steps(tokens, layout=layout)
        except LayoutError:
            continue
        chains.append(tokens)
        spans.append(list(zip(np.asarray(found.starts).tolist(), np.asarray(found.ends).tolist())))
    if not chains:
        raise app.UsageError("no reply had a step to analyse")
    length = max(len(c) for c in chains)
    tokens = np.stack([np.pad(c, (0, length - len(c)), constant_values=layout.pad_id) for c in chains])
    steps = stack_steps([from_spans(s, length) for s in spans])
    empty = np.zeros(steps.mask.shape, bool)
    print(f"{len(chains)} of {len(prompts)} replies have steps ({length} tokens, {steps.mask.shape[1]} steps at most)")
    return Encoded(tokens, steps, empty, np.asarray([len(s) for s in spans], np.int32), empty[:, 0])


def measure(params, cfg, inverse, untrained, encoded, teachers, k: int, chunk: int) -> dict:
    """The IAL, its initialisation and two baselines against the exact maps, overall and by step count."""
    exact = teachers.exact
    by_chunk = []
    for start in range(0, len(encoded.tokens), chunk):
        part = jax.tree_util.tree_map(lambda x: x[start:start + chunk], encoded)
        by_chunk.append([amortised_agreement(params, p, cfg, part, exact[start:start + chunk], k=k)
                         for p in (inverse, untrained)])
    trained, initial = (jax.tree_util.tree_map(lambda *x: np.concatenate(x), *parts) for parts in zip(*by_chunk))
    sources = np.asarray(encoded.steps.sources) & np.asarray(encoded.steps.mask).any(-1, keepdims=True)
    uniform = sources / np.maximum(sources.sum(-1, keepdims=True), 1)
    results = {"trained IAL": trained, "untrained IAL": initial,
               "attention alone": map_agreement(teachers.attention_map, exact, encoded.steps, k=k),
               "uniform over the sources": map_agreement(uniform, exact, encoded.steps, k=k)}
    n_steps = np.asarray(encoded.n_steps)
    table = {}
    for name, result in results.items():
        table[name] = {"all": summarise_amortised(result)}
        for s in sorted(set(n_steps.tolist())):
            table[name][f"{s} steps"] = summarise_amortised(jax.tree_util.tree_map(lambda x: x[n_steps == s],
                                                                                   result))
    return table


def main(argv):
    del argv
    workdir = pathlib.Path(_WORKDIR.value)
    loaded = interop.load(_MODEL.value)
    cfg, params = loaded.cfg, loaded.params
    layout = ChatLayout.for_pretrained(loaded)
    print(f"training an IAL for {loaded.architecture} from {loaded.source} in {workdir}")
    config = InverseOnlyConfig(steps=_TRAIN_STEPS.value, batch_size=_BATCH.value, peak_lr=_LR.value,
                               warmup_steps=_WARMUP.value, map_weight=_MAP_WEIGHT.value,
                               teacher_batch=_TEACHER_BATCH.value, save_every=_SAVE_EVERY.value)
    train, heldout, counts, heldout_examples = problems(params, cfg, layout.codec, layout)
    print(f"training chains: {train.tokens.shape[1]} tokens, {train.steps.mask.shape[1]} steps at most")
    teachers = compute_teachers(params, cfg, train.tokens, train.steps, workdir / "teachers" / "train", config,
                                log_fn=print)
    key = jax.random.key(_SEED.value)
    state = train_inverse_only(teachers, cfg, workdir, key, config)
    if not _EVAL.value:
        return
    held = compute_teachers(params, cfg, heldout.tokens, heldout.steps, workdir / "teachers" / "heldout", config,
                            log_fn=print)
    untrained = initial_state(cfg, key, config).params
    table = measure(params, cfg, state.params, untrained, heldout, held, _K.value, _TEACHER_BATCH.value)
    report = {"model": _MODEL.value, "problems": int(train.tokens.shape[0]), "heldout_by_steps": counts,
              "k": _K.value, "config": config.__dict__, "agreement": table}
    print_table("held-out true chains", table)
    if _OWN_REPLIES.value:
        spread = max(1, len(heldout_examples) // _OWN_REPLIES.value)  # every step count, not the first ones
        replies = own_replies(params, cfg, layout, heldout_examples[::spread][:_OWN_REPLIES.value])
        taught = compute_teachers(params, cfg, replies.tokens, replies.steps, workdir / "teachers" / "own_replies",
                                  config, log_fn=print)
        report["own_replies"] = {"n": int(replies.tokens.shape[0]), "reply_tokens": _REPLY_TOKENS.value,
                                 "agreement": measure(params, cfg, state.params, untrained, replies, taught,
                                                      _K.value, _TEACHER_BATCH.value)}
        print_table("the model's own replies", report["own_replies"]["agreement"])
    (workdir / "agreement.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"wrote {workdir / 'agreement.json'}")


def print_table(title: str, table: dict) -> None:
    """The overall row of each map as a Markdown table."""
    names = ["consistency", "fidelity", "map_agreement", "rank_correlation", "top_k_overlap"]
    print(f"{title}:\n| map | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for name, rows in table.items():
        print(f"| {name} | " + " | ".join(f"{rows['all'][m]:.3f}" if m in rows["all"] else "-" for m in names) + " |")


if __name__ == "__main__":
    app.run(main)
