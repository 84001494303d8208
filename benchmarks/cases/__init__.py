"""The benchmark cases, by name: each is `run(ctx: Context) -> CaseResult`."""

from benchmarks.cases import (decode, inverse_overhead, pretrained, probes, quantized, significance, trace_memory,
                              train)

CASES = {"train": train.run, "decode": decode.run, "inverse_overhead": inverse_overhead.run,
         "significance": significance.run, "trace_memory": trace_memory.run,
         "pretrained": pretrained.run, "quantized": quantized.run, "probes": probes.run}
