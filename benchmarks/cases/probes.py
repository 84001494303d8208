"""What recording only what a probe needs saves, against the TransformerLens-style full cache (`Record.all()`: every
`Trace` field at every layer, what `run_with_cache` keeps), on `[trace_batch, trace_seq]` tokens of one model.

Side by side, same parameters and tokens: a plain forward (nothing recorded); one field at one layer (`resid_mid`
at layer `L // 2`, what a single-site probe reads); one field at every layer (`mlp_hidden`, the widest per-token
field), and its mean over positions (`reduce="mean"`); and the full cache, the baseline of every ratio. For each:
median time, the compiled program's XLA buffer peak (`benchmarks.memory.stage_bytes`: arguments + outputs +
temporaries - aliased), its output bytes, and the bytes of the `Trace` alone. The issue sets no target: the
ratios to the full cache are reported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import sage_jax as sj
from benchmarks import memory, workloads
from benchmarks.cases.context import CaseResult, Context
from benchmarks.report import Target, figure
from benchmarks.timing import side_by_side
from benchmarks.workloads import Pipeline

BASELINE = "full_cache"


def records(cfg: sj.SageConfig) -> dict[str, tuple[str, sj.Record]]:
    """Contender name -> (what it records, in words; its `Record`), the baseline last."""
    middle = cfg.n_layers // 2
    return dict(
        plain=("plain forward (nothing recorded)", sj.Record()),
        one_layer=(f"resid_mid at layer {middle}", sj.Record(resid_mid=True, layers=(middle,))),
        one_field=("mlp_hidden at every layer", sj.Record.of(("mlp_hidden",))),
        one_field_mean=("mlp_hidden at every layer, mean over positions", sj.Record(mlp_hidden=True, reduce="mean")),
        full_cache=("every field at every layer (Record.all(), the full cache)", sj.Record.all()),
    )


def recording(cfg: sj.SageConfig, params, tokens: jax.Array, record: sj.Record) -> Pipeline:
    """`forward` recording `record` on `tokens [B, T]`, compiled ahead of time."""
    compiled, seconds = workloads.aot(lambda p, t: sj.forward(p, t, cfg, record=record), params, tokens)
    return Pipeline(lambda: jax.block_until_ready(compiled(params, tokens)), (compiled,), seconds)


def trace_bytes(compiled: jax.stages.Compiled) -> int:
    """Bytes of the `Trace` a compiled `forward` returns, from its output shapes."""
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(compiled.out_info.trace))


def run(ctx: Context) -> CaseResult:
    """Times every contender side by side and reads its compiled program's buffers; ratios to the full cache."""
    s, cfg = ctx.sizes, ctx.cfg
    params = ctx.params
    tokens = jnp.asarray(workloads.random_tokens(cfg, (s.trace_batch, s.trace_seq), seed=2))
    contenders = records(cfg)
    built = {name: recording(cfg, params, tokens, record) for name, (_, record) in contenders.items()}
    timings = side_by_side({name: pipeline.run for name, pipeline in built.items()}, ctx.repeats)
    figures = {}
    for name, pipeline in built.items():
        figures.update(memory.pipeline_figures(name, pipeline, timings[name]))
        (compiled,) = pipeline.compiled
        figures[f"{name}_output_bytes"] = figure(compiled.memory_analysis().output_size_in_bytes, "bytes")
        if contenders[name][1].names:
            figures[f"{name}_trace_bytes"] = figure(trace_bytes(compiled), "bytes")
    f = {k: v["value"] for k, v in figures.items()}
    mib = 2 ** 20
    targets = []
    for name, (words, _) in contenders.items():
        if name == BASELINE:
            continue
        targets += [
            Target("probes", f"time, {words} / full cache", "", None, f[f"{name}_s"] / f[f"{BASELINE}_s"],
                   f"{1e3 * f[f'{name}_s']:.4g} ms vs {1e3 * f[f'{BASELINE}_s']:.4g} ms"),
            Target("probes", f"peak XLA buffers, {words} / full cache", "", None,
                   f[f"{name}_xla_bytes"] / f[f"{BASELINE}_xla_bytes"],
                   f"{f[f'{name}_xla_bytes'] / mib:.4g} MiB vs {f[f'{BASELINE}_xla_bytes'] / mib:.4g} MiB"),
            Target("probes", f"output bytes, {words} / full cache", "", None,
                   f[f"{name}_output_bytes"] / f[f"{BASELINE}_output_bytes"],
                   f"{f[f'{name}_output_bytes'] / mib:.4g} MiB vs {f[f'{BASELINE}_output_bytes'] / mib:.4g} MiB"),
        ]
    ctx.log("probes", f"XLA buffers {f['one_layer_xla_bytes'] / mib:.4g} MiB for one field at one layer vs "
                      f"{f[f'{BASELINE}_xla_bytes'] / mib:.4g} MiB for the full cache")
    settings = dict(batch=s.trace_batch, seq_len=s.trace_seq, baseline=BASELINE,
                    records={name: dict(what=words, fields=list(record.names), layers=record.layers,
                                        reduce=record.reduce) for name, (words, record) in contenders.items()},
                    memory=memory.__doc__.strip())
    return CaseResult(settings, figures, targets)
