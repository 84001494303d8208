r"""Attribution patching against the activation patching it estimates: rank agreement and time, side by side.

    python -m benchmarks.attribution_patching --run_dir=runs/demo --out=benchmarks/results/attribution_patching.json
    python -m benchmarks.attribution_patching --run_dir=runs/demo --smollm2 --out=...   # SmolLM2-135M too

Problems: worked sums, teacher-forced with their true chain. On a trained run (`sage_jax.load_run`), held-out
problems of its own `chain_sum` task in its own layout; on SmolLM2-135M-Instruct (`--smollm2`), sums of small
numbers in its chat template (`benchmarks.cases.pretrained`'s wording). Corruption: the question's last digit
changed to another digit (seeded), every other token kept, so the two runs align token for token and the
rationale still writes the clean operand; the problems of one model all have the first one's length (one compiled
program per call). Metrics (`--metrics`), on the clean chain's tokens: `chain`, the summed log-probability of every
step and answer token; `logit_diff`, the logit of the clean digit minus the corrupted one's where the last step
writes the clean digit (the standard metric of the attribution-patching papers). The answer's own log-probability
is no metric here: teacher-forced, the answer copies the last step's result and moves by 1e-4 nats.

For each problem and metric (`sage_jax.probes.patching`):

- heads `[L, H]`: the head-output estimate summed over positions against patching each head at every position;
- heads x positions `[L, T, H]` (`--positions`): against patching each head at each position;
- residual `[L, T]` (`--residual`): the stream entering each layer at each position, estimate against patch.

SmolLM2 gets heads `[L, H]` alone: its `L T H` and `L T` patched runs (30 layers, 9 heads, 79 tokens) would take
hours of this CPU.

Spearman (average ranks, `sage_jax.interpret.ranking.spearman`) and Pearson are taken per problem; over positions
they count only positions from the corrupted one on (earlier sites are exactly 0 on both sides and would inflate
both). The table reports their mean and minimum over problems. Time: on the first problem, every contender
compiled and run once (the warm-up, reported apart), then `--repeats` rounds alternating
(`benchmarks.timing.side_by_side`): one attribution call gives both head granularities, each patching call one.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import sage_jax as sj
from benchmarks.timing import side_by_side
from sage_jax.evaluate import procedural_by_difficulty
from sage_jax.interpret import ranking
from sage_jax.interpret.patching import step_log_probs
from sage_jax.layout import SAGE, from_spans
from sage_jax.probes.patching import activation_patching, attribution_patching

_RUN_DIR = flags.DEFINE_string("run_dir", "runs/demo", "A trained run (`sage_jax.load_run`); skipped when absent.")
_SMOLLM2 = flags.DEFINE_bool("smollm2", False, "Also measure SmolLM2-135M-Instruct (`sage_jax.interop.load`).")
_PROBLEMS = flags.DEFINE_integer("problems", 8, "Problems of the trained run.")
_SMOLLM2_PROBLEMS = flags.DEFINE_integer("smollm2_problems", 3, "Problems of SmolLM2 (270 patched runs of 79 tokens "
                                                                "per problem and metric).")
_N_STEPS = flags.DEFINE_integer("n_steps", 2, "Rationale steps per problem.")
_SEED = flags.DEFINE_integer("seed", 1011, "Seed of the problems and corruptions.")
_METRICS = flags.DEFINE_list("metrics", ["chain", "logit_diff"], "Metrics among 'chain' and 'logit_diff'.")
_POSITIONS = flags.DEFINE_bool("positions", True, "On the trained run, patch heads x positions (L*T*H runs).")
_RESIDUAL = flags.DEFINE_bool("residual", True, "On the trained run, patch the stream per (layer, position) (L*T "
                                                "runs).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Patched runs per vmapped chunk (each holds a full-size delta: "
                                                    "49 MB of head outputs on SmolLM2).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds after the warm-up.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/attribution_patching.json", "Where to write the JSON.")


class Problem(NamedTuple):
    """One clean chain and its corruption.

    Attributes:
      clean, corrupt: `[1, T]` ids, equal but at `position`.
      steps: `[S, T]` bool, the rationale steps' tokens; answer: `[T]` bool, the answer's tokens.
      copies: `[T]` bool, the last step's tokens equal to the clean token at `position` (where the chain writes
        the corrupted operand's digit).
      ids: `[2]` int32, the clean and the corrupted token at `position`.
      position: the corrupted position.
    """

    clean: jax.Array
    corrupt: jax.Array
    steps: jax.Array
    answer: jax.Array
    copies: jax.Array
    ids: jax.Array
    position: int

    def metric(self, name: str) -> jax.tree_util.Partial:
        """`METRICS[name]` of this problem, its arrays traced (one compiled program serves every problem)."""
        return jax.tree_util.Partial(METRICS[name], self.clean[0], self.steps, self.answer, self.copies, self.ids)


def chain_log_prob(tokens, steps, answer, copies, ids, out):
    """Summed log-probability of the steps' and the answer's tokens (`tokens [T]`, `steps [S, T]`, `answer [T]`)."""
    log_probs = step_log_probs(out.logits[0], tokens, steps, answer)
    return log_probs.step.sum() + log_probs.answer


def logit_diff(tokens, steps, answer, copies, ids, out):
    """`logit(clean digit) - logit(corrupted digit)` summed over the positions that predict a copy (`copies [T]`)."""
    before = out.logits[0, :-1, ids[0]] - out.logits[0, :-1, ids[1]]  # position t predicts token t + 1
    return jnp.sum(jnp.where(copies[1:], before, 0.0))


METRICS = dict(chain=chain_log_prob, logit_diff=logit_diff)


def corrupt_question(question: str, rng: np.random.Generator) -> str:
    """`question` with its last digit changed to another digit drawn by `rng`."""
    last = max(i for i, c in enumerate(question) if c.isdigit())
    digit = (int(question[last]) + int(rng.integers(1, 10))) % 10
    return question[:last] + str(digit) + question[last + 1:]


def pair(layout, codec, question: str, steps, answer: str, rng: np.random.Generator) -> Optional[Problem]:
    """The problem and its corruption, or None when the corrupted question does not tokenize to the same length with
    one token changed, or the last step never writes the clean token."""
    clean = layout.encode(codec, question, list(steps), answer)
    corrupt = layout.encode(codec, corrupt_question(question, rng), list(steps), answer).tokens
    changed = np.flatnonzero(clean.tokens != corrupt) if len(corrupt) == len(clean) else ()
    if len(changed) != 1:
        return None
    position = int(changed[0])
    start, end = clean.step_spans[-1]
    copies = np.zeros(len(clean), bool)
    copies[start:end] = clean.tokens[start:end] == clean.tokens[position]
    if not copies.any():
        return None
    return Problem(jnp.asarray(clean.tokens)[None], jnp.asarray(corrupt)[None],
                   jnp.asarray(from_spans(clean.step_spans, len(clean)).mask), jnp.asarray(clean.answer_mask),
                   jnp.asarray(copies), jnp.asarray([clean.tokens[position], corrupt[position]], jnp.int32), position)


def run_problems(params, cfg, problems, granularities: dict[str, bool], batch_size: int) -> dict[str, Any]:
    """The side-by-side time on the first problem (timed first, so that each warm-up includes its compilation), and
    the correlations of every granularity and metric over `problems`."""
    first = problems[0]
    calls = calls_for(params, cfg, first.clean, first.corrupt, first.metric(_METRICS.value[0]), granularities,
                      batch_size)
    timings = side_by_side({key: lambda fn=fn: jax.block_until_ready(fn()) for key, fn in calls.items()},
                           _REPEATS.value)
    results: dict[str, dict[str, list]] = {}
    for index, problem in enumerate(problems):
        for name in _METRICS.value:
            calls = calls_for(params, cfg, problem.clean, problem.corrupt, problem.metric(name), granularities,
                              batch_size)
            out = {key: np.asarray(fn()) for key, fn in calls.items()}
            later = np.arange(problem.clean.shape[1]) >= problem.position
            pairs = {"heads [L,H]": (out["attribution_heads"].sum(1), out["patching_heads"], None)}
            if "patching_heads_positions" in out:
                pairs["heads x positions [L,T,H]"] = (out["attribution_heads"], out["patching_heads_positions"],
                                                      np.broadcast_to(later[None, :, None],
                                                                      out["attribution_heads"].shape))
            if "patching_residual" in out:
                pairs["residual [L,T]"] = (out["attribution_residual"], out["patching_residual"],
                                           np.broadcast_to(later[None], out["attribution_residual"].shape))
            for granularity, (estimate, real, where) in pairs.items():
                row = results.setdefault(f"{granularity} {name}", {"spearman": [], "pearson": [], "max_abs_real": []})
                spearman, pearson = correlations(estimate, real, where)
                row["spearman"].append(spearman)
                row["pearson"].append(pearson)
                row["max_abs_real"].append(float(np.abs(real).max()))
        print(f"  problem {index + 1}/{len(problems)} done", flush=True)
    summary = {key: {stat: dict(mean=float(np.mean(v)), min=float(np.min(v)), per_problem=v) for stat, v in row.items()}
               for key, row in results.items()}
    time_s = {key: dict(median_s=t.median_s, warmup_s=t.warmup_s, runs_s=list(t.runs_s)) for key, t in timings.items()}
    return dict(correlations=summary, time=time_s, time_metric=_METRICS.value[0],
                seq_len=int(first.clean.shape[1]))


def calls_for(params, cfg, clean, corrupt, metric, granularities: dict[str, bool], batch_size: int
              ) -> dict[str, Callable[[], jax.Array]]:
    """The zero-argument calls of every contender on one problem: attribution first, then the patching runs."""
    args = (params, cfg, clean, corrupt, metric)
    calls = {"attribution_heads": lambda: attribution_patching(*args, at="head_out"),
             "patching_heads": lambda: activation_patching(*args, per_position=False, batch_size=batch_size)}
    if granularities["positions"]:
        calls["patching_heads_positions"] = lambda: activation_patching(*args, batch_size=batch_size)
    if granularities["residual"]:
        calls["attribution_residual"] = lambda: attribution_patching(*args, at="residual")
        calls["patching_residual"] = lambda: activation_patching(*args, at="residual", batch_size=batch_size)
    return calls


def correlations(estimate: np.ndarray, real: np.ndarray, where) -> tuple[float, float]:
    """Spearman and Pearson of two maps over the sites `where` (all when None)."""
    where = np.ones(real.shape, bool) if where is None else np.asarray(where)
    x, y = np.asarray(estimate, np.float64)[where], np.asarray(real, np.float64)[where]
    spearman = float(ranking.spearman(jnp.asarray(x), jnp.asarray(y), jnp.ones(x.shape, bool)))
    pearson = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0
    return spearman, pearson


def same_length(candidates, n: int) -> list[Problem]:
    """The first `n` problems as long as the first one (so that every call compiles once), from an iterable of
    problems and Nones; fewer when it runs out."""
    problems = []
    for problem in candidates:
        if problem is not None and (not problems or problem.clean.shape == problems[0].clean.shape):
            problems.append(problem)
            if len(problems) == n:
                break
    return problems


def trained_problems(run, n: int, n_steps: int, seed: int) -> list[Problem]:
    """Held-out problems of the run's `chain_sum` task in its own layout, with their corruptions."""
    examples = procedural_by_difficulty(run.curriculum.chain_sum, (n_steps,), 20 * n, seed=seed).examples
    rng = np.random.default_rng(seed)
    return same_length((pair(SAGE, run.tokenizer, e.question, e.steps, e.answer, rng) for e in examples), n)


def smollm2_problems(chat, n: int, n_steps: int, seed: int) -> list[Problem]:
    """Sums of `n_steps + 1` numbers in 2..19 in SmolLM2's chat template, with their corruptions."""
    rng = np.random.default_rng(seed)

    def candidates():
        for _ in range(20 * n):
            numbers = [int(x) for x in rng.integers(2, 20, n_steps + 1)]
            steps, total = [], numbers[0]
            for x in numbers[1:]:
                steps.append(f"{total} + {x} = {total + x}")
                total += x
            yield pair(chat, chat.codec, f"What is {' + '.join(map(str, numbers))}?", steps, str(total), rng)

    return same_length(candidates(), n)


def print_table(model: str, result: dict[str, Any]) -> None:
    print(f"\n{model} (T={result['seq_len']})")
    print(f"{'granularity and metric':36s} {'spearman mean/min':>18s} {'pearson mean/min':>18s} {'max|effect|':>12s}")
    for key, row in result["correlations"].items():
        s, p = row["spearman"], row["pearson"]
        print(f"{key:36s} {s['mean']:8.3f} / {s['min']:6.3f} {p['mean']:8.3f} / {p['min']:6.3f} "
              f"{row['max_abs_real']['mean']:12.4f}")
    print(f"{'time (' + result['time_metric'] + ', first problem)':36s} {'median s':>10s} {'warm-up s':>10s}")
    for key, t in result["time"].items():
        print(f"{key:36s} {t['median_s']:10.4f} {t['warmup_s']:10.2f}")


def main(argv):
    del argv
    unknown = sorted(set(_METRICS.value) - set(METRICS))
    if unknown:
        raise app.UsageError(f"--metrics: unknown {unknown}; choose from {sorted(METRICS)}")
    report: dict[str, Any] = dict(settings=dict(problems=_PROBLEMS.value, smollm2_problems=_SMOLLM2_PROBLEMS.value,
                                                n_steps=_N_STEPS.value, seed=_SEED.value,
                                                metrics=_METRICS.value, batch_size=_BATCH_SIZE.value,
                                                repeats=_REPEATS.value, backend=jax.default_backend()))
    run_dir = pathlib.Path(_RUN_DIR.value)
    if (run_dir / "config.json").exists():
        run = sj.load_run(run_dir)
        problems = trained_problems(run, _PROBLEMS.value, _N_STEPS.value, _SEED.value)
        print(f"trained run {run_dir} ({run.cfg.name}, stage {run.stage}): {len(problems)} problems", flush=True)
        start = time.perf_counter()
        result = run_problems(run.params, run.cfg, problems, dict(positions=_POSITIONS.value,
                                                                  residual=_RESIDUAL.value), _BATCH_SIZE.value)
        report["trained"] = dict(result, run_dir=str(run_dir), model=run.cfg.name, stage=run.stage,
                                 wall_s=time.perf_counter() - start)
        print_table(f"trained run {run_dir}", result)
    else:
        print(f"no trained run at {run_dir} (no config.json): `make demo` writes runs/demo", file=sys.stderr)
        report["trained"] = dict(skipped=f"no run at {run_dir}")
    if _SMOLLM2.value:
        from sage_jax import interop
        from sage_jax.chat import ChatLayout
        model = interop.load("smollm2-135m-instruct")
        problems = smollm2_problems(ChatLayout.for_pretrained(model), _SMOLLM2_PROBLEMS.value, _N_STEPS.value,
                                    _SEED.value)
        print(f"SmolLM2-135M-Instruct: {len(problems)} problems", flush=True)
        start = time.perf_counter()
        result = run_problems(model.params, model.cfg, problems, dict(positions=False, residual=False),
                              _BATCH_SIZE.value)
        report["smollm2"] = dict(result, model="smollm2-135m-instruct", wall_s=time.perf_counter() - start)
        print_table("SmolLM2-135M-Instruct", result)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
