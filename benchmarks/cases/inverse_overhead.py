"""Inverse-reasoning overhead (the paper's Table 4 measure): tracked generation plus the amortised analysis
against plain generation, in time and in peak memory.

Both generate `new_tokens` tokens greedily after the same batch-1 prompt. The inverse side generates with
tracked attention and records the final sequence's attention, value norms and hidden states as it goes
(`generate(record=..., return_hidden=True)`), then runs the Inverse Analysis Layer on them
(`sage_jax.interpret.amortised.analyse_recorded`, parameters from `init_inverse_params`), the generated tokens
split into `analysis_steps` equal steps: no second forward pass over the chain. Memory: XLA buffer peaks (judged)
and fresh-process peak RSS (reported); see `benchmarks.memory`.

`generation_overhead` is the same measure for any model, prompt and IAL, without the fresh-process RSS (the
probe knows presets only): the `pretrained` case and `benchmarks/inverse_pretrained.py` run it on a pretrained
chat model.
"""

from __future__ import annotations

import dataclasses

import jax

import sage_jax as sj
from benchmarks import memory, workloads
from benchmarks.cases.context import CaseResult, Context
from benchmarks.report import Target, describe, figure, ratio
from benchmarks.timing import Timing, side_by_side

ROUNDS_PER_REPEAT = 3
"""Each call is ~0.1 s on `tiny` and the ratio sought is a few percent: medians of 5 single calls swung between
0.98x and 1.19x across runs, so this case times three rounds per `--repeats`."""


def run(ctx: Context) -> CaseResult:
    s = ctx.sizes
    prompt = ctx.prompt(1)
    plain = workloads.build("generate", ctx.cfg, s, ctx.eos_id)
    inverse = workloads.build("generate_tracked_analysed", ctx.cfg, s, ctx.eos_id)
    tracked_gen, _ = workloads.aot(workloads.generation(ctx.cfg, s.new_tokens, ctx.eos_id, track=True,
                                                        record=("attn", "value_norms"), return_hidden=True),
                                   ctx.params, prompt)
    timings = side_by_side({"plain": plain.run, "inverse": inverse.run,
                            "tracked_only": lambda: jax.block_until_ready(tracked_gen(ctx.params, prompt))},
                           ROUNDS_PER_REPEAT * ctx.repeats)
    figures = {f"{name}_s": figure(t.median_s, "s") for name, t in timings.items()}
    figures.update({f"{name}_warmup_s": figure(t.warmup_s, "s") for name, t in timings.items()})
    figures["plain_compile_s"] = figure(plain.compile_s, "s")
    figures["inverse_compile_s"] = figure(inverse.compile_s, "s")
    figures["plain_xla_bytes"] = figure(memory.xla_peak_bytes(plain), "bytes")
    figures["inverse_xla_bytes"] = figure(memory.xla_peak_bytes(inverse), "bytes")
    for name, workload in (("plain", "generate"), ("inverse", "generate_tracked_analysed")):
        figures.update(memory.rss_figures(name, workload, ctx.cfg.name, ctx.quick, ctx.eos_id, ctx.rss))
    f = {k: v.get("value") for k, v in figures.items()}
    time_ratio = f["inverse_s"] / f["plain_s"]
    memory_ratio = f["inverse_xla_bytes"] / f["plain_xla_bytes"]
    ctx.log("inverse_overhead", f"time x{time_ratio:.2f}, XLA memory x{memory_ratio:.2f}")
    mib = 2 ** 20
    targets = [
        Target("inverse_overhead", "time, (tracked generation + analysis) / plain generation", "<=", 1.1, time_ratio,
               f"{1e3 * f['inverse_s']:.3g} ms vs {1e3 * f['plain_s']:.3g} ms (tracked, recording generation "
               f"alone {1e3 * f['tracked_only_s']:.3g} ms)"),
        Target("inverse_overhead", "peak XLA buffers, inverse / plain", "<=", 1.1, memory_ratio,
               f"{f['inverse_xla_bytes'] / mib:.3g} MiB vs {f['plain_xla_bytes'] / mib:.3g} MiB"),
        Target("inverse_overhead", "fresh-process peak RSS, inverse / plain", "", None,
               ratio(figures["inverse_peak_rss_bytes"], figures["plain_peak_rss_bytes"]),
               f"{describe(figures['inverse_peak_rss_bytes'], 1 / mib, 'MiB', 4)} vs "
               f"{describe(figures['plain_peak_rss_bytes'], 1 / mib, 'MiB', 4)}"),
    ]
    settings = dict(batch=1, prompt_len=s.prompt_len, new_tokens=s.new_tokens, analysis_steps=s.analysis_steps,
                    rounds=ROUNDS_PER_REPEAT * ctx.repeats,
                    memory=memory.__doc__.strip())
    return CaseResult(settings, figures, targets)


@dataclasses.dataclass(frozen=True)
class GenerationOverhead:
    """What inverse reasoning adds to one greedy generation, measured side by side (`generation_overhead`).

    Attributes:
      timings: `plain` (greedy generation), `inverse` (generation that records what the IAL reads, then the IAL)
        and `recording_only` (that generation without the IAL), timed alternately.
      compile_s: seconds compiling the `plain` and the `inverse` pipeline.
      xla_bytes: XLA buffer bytes (`benchmarks.memory`) of the `plain` and `inverse` pipelines (their largest
        stage) and of the inverse side's two stages, `recording_generation` and `ial`.
    """

    timings: dict[str, Timing]
    compile_s: dict[str, float]
    xla_bytes: dict[str, int]

    @property
    def time_ratio(self) -> float:
        """Median time, inverse / plain: the paper's Table 4 time overhead."""
        return self.timings["inverse"].median_s / self.timings["plain"].median_s

    @property
    def recording_ratio(self) -> float:
        """Median time, recording generation alone / plain: the share of the overhead that is not the IAL."""
        return self.timings["recording_only"].median_s / self.timings["plain"].median_s

    @property
    def memory_ratio(self) -> float:
        """Peak XLA buffers, inverse / plain: the paper's Table 4 memory overhead."""
        return self.xla_bytes["inverse"] / self.xla_bytes["plain"]


def generation_overhead(cfg: sj.SageConfig, params, inverse_params, prompt: jax.Array, new_tokens: int,
                        analysis_steps: int, eos_id: int, rounds: int) -> GenerationOverhead:
    """Plain greedy generation of `new_tokens` tokens after `prompt [1, P]` against generation that records what
    the IAL reads followed by the IAL (`workloads.tracked_analysed`, `analysis_steps` equal steps), `rounds`
    alternating rounds after a warm-up call each, so both sides run under the same load.

    `eos_id` must be a token greedy decoding of `prompt` never emits (`workloads.free_eos`), so that both sides
    generate exactly `new_tokens` tokens. The weights are arguments of both sides, so the memory ratio is that
    of a whole inference.
    """
    plain = workloads.plain_generation(cfg, params, prompt, new_tokens, eos_id)
    inverse = workloads.tracked_analysed(cfg, params, inverse_params, prompt, new_tokens, analysis_steps, eos_id)
    recording, ial = inverse.compiled
    timings = side_by_side({"plain": plain.run, "inverse": inverse.run,
                            "recording_only": lambda: jax.block_until_ready(recording(params, prompt))}, rounds)
    return GenerationOverhead(
        timings=timings, compile_s={"plain": plain.compile_s, "inverse": inverse.compile_s},
        xla_bytes={"plain": memory.xla_peak_bytes(plain), "inverse": memory.xla_peak_bytes(inverse),
                   "recording_generation": memory.stage_bytes(recording), "ial": memory.stage_bytes(ial)})
