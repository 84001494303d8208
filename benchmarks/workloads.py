"""The JAX workloads the benchmark times and whose memory it measures, built the same way in the timing run
and in the fresh process that measures peak RSS (`benchmarks.memory_probe`).

A `Pipeline` is a blocking `run()` plus its stages compiled ahead of time (so compilation is timed apart, and
`benchmarks.memory` reads XLA's buffer accounting from the very executables that ran).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import sage_jax as sj
from sage_jax import layout
from sage_jax.interpret.amortised import analyse_recorded
from sage_jax.layout import Steps, from_spans
from sage_jax.nn.inverse import init_inverse_params

MEMORY_WORKLOADS = ("generate", "generate_tracked_analysed", "forward", "forward_trace")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Shapes of every case.

    Attributes:
      train_batch, train_seq: the train step's batch (the demo's stage-2 batch on `tiny`).
      train_inner: train steps per timed sample.
      prompt_len, new_tokens: decoding (and the inverse-reasoning overhead case, at batch 1).
      decode_batches: batch sizes of the decoding case.
      analysis_steps: steps the generated chain is split into for the amortised analysis.
      chain_lengths, chain_steps: the exact-significance chains (the context is widened to the longest).
      trace_batch, trace_seq: the Trace-recording forward.
      gemm_sizes: square f32 matmul sizes tried for the GEMM peak (the fastest counts).
    """

    train_batch: int
    train_seq: int
    train_inner: int
    prompt_len: int
    new_tokens: int
    decode_batches: tuple[int, ...]
    analysis_steps: int
    chain_lengths: tuple[int, ...]
    chain_steps: int
    trace_batch: int
    trace_seq: int
    gemm_sizes: tuple[int, ...]

    def check(self, cfg: sj.SageConfig) -> None:
        """Raises when a size does not fit `cfg`'s context."""
        for name, length in (("train_seq", self.train_seq), ("trace_seq", self.trace_seq),
                             ("prompt_len + new_tokens", self.prompt_len + self.new_tokens)):
            if length > cfg.max_seq_len:
                raise ValueError(f"Sizes.{name} = {length} exceeds max_seq_len={cfg.max_seq_len} of preset "
                                 f"{cfg.name!r}")
        if self.new_tokens < self.analysis_steps:
            raise ValueError(f"Sizes.new_tokens={self.new_tokens} cannot hold {self.analysis_steps} steps")


def sizes_for(cfg: sj.SageConfig, quick: bool) -> Sizes:
    """The full sizes (the train batch and length of the demo's stage 2, the issue's 256/1024-token chains of
    8 steps), or seconds-long `quick` ones."""
    if quick:
        sizes = Sizes(train_batch=4, train_seq=16, train_inner=1, prompt_len=8, new_tokens=8,
                      decode_batches=(1, 8), analysis_steps=4, chain_lengths=(32,), chain_steps=8,
                      trace_batch=2, trace_seq=cfg.max_seq_len, gemm_sizes=(256,))
    else:
        from experiments.configs import tiny as demo  # the demo's batch shape is the train case's
        stage2 = demo.get_config().stage2
        sizes = Sizes(train_batch=stage2.batch_size, train_seq=stage2.seq_len, train_inner=3, prompt_len=32,
                      new_tokens=64, decode_batches=(1, 8), analysis_steps=8, chain_lengths=(256, 1024),
                      chain_steps=8, trace_batch=8, trace_seq=cfg.max_seq_len, gemm_sizes=(1024, 2048))
    sizes.check(cfg)
    return sizes


def random_tokens(cfg: sj.SageConfig, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Ordinary (non-special) token ids, with `<bos>` first in each row."""
    tokens = np.array(jax.random.randint(jax.random.key(seed), shape, layout.NUM_SPECIAL, cfg.vocab_size),
                      np.int32)
    tokens[..., 0] = layout.BOS
    return tokens


def equal_steps(start: int, end: int, n: int, length: int) -> Steps:
    """`n` consecutive steps of (nearly) equal size covering tokens `[start, end)` of a `length`-token row."""
    bounds = np.linspace(start, end, n + 1).astype(int)
    return from_spans(list(zip(bounds[:-1], bounds[1:])), length)


def chain(cfg: sj.SageConfig, length: int, n_steps: int) -> tuple[jax.Array, Steps]:
    """A random `length`-token chain with `n_steps` `<step>`-led steps after an 8-token prompt (the shape of
    `benchmarks.significance_scaling`'s problems)."""
    tokens = np.array(jax.random.randint(jax.random.key(length), (length,), layout.NUM_SPECIAL, cfg.vocab_size),
                      np.int32)
    tokens[:2] = [layout.BOS, layout.QUESTION]
    bounds = np.linspace(8, length - 1, n_steps + 1).astype(int)
    tokens[bounds[:-1]] = layout.STEP
    return jnp.asarray(tokens), from_spans([(b + 1, e) for b, e in zip(bounds[:-1], bounds[1:])], length)


def prompts(cfg: sj.SageConfig, sizes: Sizes) -> jax.Array:
    """`[max(decode_batches), prompt_len]` prompts; a batch of `b` uses the first `b` rows (rows decode
    independently, so a row generates the same tokens in any batch)."""
    return jnp.asarray(random_tokens(cfg, (max(sizes.decode_batches), sizes.prompt_len), seed=1))


def free_eos(params, cfg: sj.SageConfig, prompt: jax.Array, new_tokens: int) -> int:
    """A token id that greedy decoding of `prompt [B, P]` never emits, so that no row stops early: used as the
    end token of both sides, which then always generate exactly `new_tokens` tokens."""
    candidate = cfg.eos_id
    for _ in range(cfg.vocab_size):
        out = sj.generate(params, cfg, prompt, max_new_tokens=new_tokens, eos_id=candidate)
        emitted = set(np.asarray(out.tokens[:, prompt.shape[1]:]).ravel().tolist())
        complete = bool(np.all(np.asarray(out.num_generated) == new_tokens))
        if complete and candidate not in emitted:
            return candidate
        candidate = min(set(range(layout.NUM_SPECIAL, cfg.vocab_size)) - emitted)
    raise RuntimeError("greedy decoding emits every token id; no end token leaves the generation uncut")


class Pipeline(NamedTuple):
    """`run()` does the work with the compiled stages and blocks; `compiled` are those stages
    (`jax.stages.Compiled`, for XLA's memory accounting); `compile_s` the seconds compiling them took."""

    run: Callable[[], object]
    compiled: tuple[jax.stages.Compiled, ...]
    compile_s: float


def aot(fn: Callable, *args) -> tuple[jax.stages.Compiled, float]:
    """`jax.jit(fn)` compiled ahead of time for `args` (arrays or `ShapeDtypeStruct`s), and the seconds it took."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def generation(cfg: sj.SageConfig, new_tokens: int, eos_id: int, *, track: bool, record=None,
               return_hidden: bool = False) -> Callable:
    """`generate` as one function of `(params, prompt [B, P])` (plain or tracked, greedy), to jit."""
    return lambda p, x: sj.generate(p, cfg, x, max_new_tokens=new_tokens, eos_id=eos_id, track=track,
                                    record=record, return_hidden=return_hidden)


def build(name: str, cfg: sj.SageConfig, sizes: Sizes, eos_id: int) -> Pipeline:
    """The memory workload `name` (one of `MEMORY_WORKLOADS`), compiled, parameters from fixed keys."""
    params = sj.init_params(cfg, jax.random.key(0))
    if name in ("generate", "generate_tracked_analysed"):
        prompt = prompts(cfg, sizes)[:1]
        if name == "generate":
            return plain_generation(cfg, params, prompt, sizes.new_tokens, eos_id)
        return tracked_analysed(cfg, params, init_inverse_params(cfg, jax.random.key(1)), prompt, sizes.new_tokens,
                                sizes.analysis_steps, eos_id)
    if name in ("forward", "forward_trace"):
        tokens = jnp.asarray(random_tokens(cfg, (sizes.trace_batch, sizes.trace_seq), seed=2))
        record = "all" if name == "forward_trace" else None
        fwd, seconds = aot(lambda p, t: sj.forward(p, t, cfg, record=record), params, tokens)
        return Pipeline(lambda: jax.block_until_ready(fwd(params, tokens)), (fwd,), seconds)
    raise ValueError(f"unknown workload {name!r}; choose one of {MEMORY_WORKLOADS}")


def plain_generation(cfg: sj.SageConfig, params, prompt: jax.Array, new_tokens: int, eos_id: int) -> Pipeline:
    """Plain greedy generation of `new_tokens` tokens after `prompt [B, P]`, compiled: the baseline of every
    overhead measure."""
    gen, seconds = aot(generation(cfg, new_tokens, eos_id, track=False), params, prompt)
    return Pipeline(lambda: jax.block_until_ready(gen(params, prompt)), (gen,), seconds)


def tracked_analysed(cfg: sj.SageConfig, params, inverse_params, prompt: jax.Array, new_tokens: int,
                     analysis_steps: int, eos_id: int) -> Pipeline:
    """Tracked generation of `new_tokens` tokens after one prompt (`prompt [1, P]`) that also records what the
    Inverse Analysis Layer reads (attention, value norms, hidden states), then the IAL (`analyse_recorded`) over
    the generated chain, its generated tokens split into `analysis_steps` equal steps: no second forward pass.
    Its stages are `(recording generation, IAL)`."""
    generate = generation(cfg, new_tokens, eos_id, track=False, record=("attn", "value_norms"),
                          return_hidden=True)  # the recorded trace holds every row `track` would
    gen, gen_s = aot(generate, params, prompt)
    prompt_len = prompt.shape[1]
    length = prompt_len + new_tokens
    step_mask = equal_steps(prompt_len, length, analysis_steps, length).mask[None]
    recorded = jax.eval_shape(generate, params, prompt)
    analysis, analysis_s = aot(lambda ip, h, tr, m: analyse_recorded(ip, cfg, h, tr, m), inverse_params,
                               recorded.hidden, recorded.trace, step_mask)

    def run():
        out = gen(params, prompt)
        return jax.block_until_ready((out, analysis(inverse_params, out.hidden, out.trace, step_mask)))

    return Pipeline(run, (gen, analysis), gen_s + analysis_s)
