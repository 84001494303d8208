"""Memory (and time) of a forward pass recording the full `Trace` (`record="all"`) against a plain forward,
on `[trace_batch, trace_seq]` tokens. Memory: XLA buffer peaks and fresh-process peak RSS (`benchmarks.memory`).
The issue sets no target: the ratios are reported."""

from __future__ import annotations

from benchmarks import memory, workloads
from benchmarks.cases.context import CaseResult, Context
from benchmarks.report import Target, describe, ratio
from benchmarks.timing import side_by_side


def run(ctx: Context) -> CaseResult:
    s = ctx.sizes
    pipelines = {name: workloads.build(name, ctx.cfg, s, ctx.cfg.eos_id) for name in ("forward", "forward_trace")}
    timings = side_by_side({name: p.run for name, p in pipelines.items()}, ctx.repeats)
    figures = {}
    for name, pipeline in pipelines.items():
        figures.update(memory.pipeline_figures(name, pipeline, timings[name]))
        figures.update(memory.rss_figures(name, name, ctx.cfg.name, ctx.quick, ctx.cfg.eos_id, ctx.rss))
    f = {k: v.get("value") for k, v in figures.items()}
    mib = 2 ** 20
    ctx.log("trace_memory", f"XLA buffers {f['forward_trace_xla_bytes'] / mib:.3g} MiB with the Trace vs "
                            f"{f['forward_xla_bytes'] / mib:.3g} MiB without")
    targets = [
        Target("trace_memory", "peak XLA buffers, record='all' / plain forward", "", None,
               f["forward_trace_xla_bytes"] / f["forward_xla_bytes"],
               f"{f['forward_trace_xla_bytes'] / mib:.3g} MiB vs {f['forward_xla_bytes'] / mib:.3g} MiB"),
        Target("trace_memory", "fresh-process peak RSS, record='all' / plain forward", "", None,
               ratio(figures["forward_trace_peak_rss_bytes"], figures["forward_peak_rss_bytes"]),
               f"{describe(figures['forward_trace_peak_rss_bytes'], 1 / mib, 'MiB', 4)} vs "
               f"{describe(figures['forward_peak_rss_bytes'], 1 / mib, 'MiB', 4)}"),
        Target("trace_memory", "time, record='all' / plain forward", "", None,
               f["forward_trace_s"] / f["forward_s"],
               f"{1e3 * f['forward_trace_s']:.3g} ms vs {1e3 * f['forward_s']:.3g} ms"),
    ]
    settings = dict(batch=s.trace_batch, seq_len=s.trace_seq, record="all", memory=memory.__doc__.strip())
    return CaseResult(settings, figures, targets)
