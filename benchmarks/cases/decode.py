"""KV-cache decoding throughput: `sage_jax.generate` against Hugging Face `generate` on the mirrored Llama.

Greedy, the same `[batch, prompt_len]` prompt, exactly `new_tokens` new tokens per row on both sides (the end
token is one greedy decoding never emits, `workloads.free_eos`; the peer has no end token and
`min_new_tokens = max_new_tokens`), `use_cache=True`. Tokens/s counts generated tokens over the whole call
(prefill included).
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks import peer as peer_lib
from benchmarks.cases.context import CaseResult, Context
from benchmarks.report import Target, describe, figure, ratio, skipped
from benchmarks.timing import side_by_side
from benchmarks.workloads import aot, generation


def peer_generate(torch, llama, prompt: np.ndarray, n: int):
    """A blocking call of HF `generate`: greedy, exactly `n` new tokens per row of `prompt [B, P]`."""
    ids = torch.tensor(prompt, dtype=torch.long)
    attention = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            out = llama.generate(input_ids=ids, attention_mask=attention, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, use_cache=True)
        if out.shape != (ids.shape[0], ids.shape[1] + n):
            raise RuntimeError(f"HF generate returned shape {tuple(out.shape)}; expected "
                               f"{(ids.shape[0], ids.shape[1] + n)}")

    return run


def run(ctx: Context) -> CaseResult:
    s = ctx.sizes
    llama = None
    if ctx.peer is not None:
        llama = peer_lib.build_model(ctx.peer, ctx.cfg)
        llama.eval()
    figures, targets = {}, []
    for batch in s.decode_batches:
        prompt = ctx.prompt(batch)
        gen, compile_s = aot(generation(ctx.cfg, s.new_tokens, ctx.eos_id, track=False), ctx.params, prompt)
        figures[f"sage_b{batch}_compile_s"] = figure(compile_s, "s")
        contenders = {"sage": lambda g=gen, p=prompt: jax.block_until_ready(g(ctx.params, p))}
        if llama is not None:
            contenders["peer"] = peer_generate(ctx.peer.torch, llama, np.asarray(prompt), s.new_tokens)
        timings = side_by_side(contenders, ctx.repeats)
        for side in ("sage", "peer"):
            if side in timings:
                t = timings[side]
                figures[f"{side}_b{batch}_tokens_per_s"] = figure(batch * s.new_tokens / t.median_s, "tokens/s")
                figures[f"{side}_b{batch}_warmup_s"] = figure(t.warmup_s, "s")
            else:
                figures[f"{side}_b{batch}_tokens_per_s"] = skipped("tokens/s")
                figures[f"{side}_b{batch}_warmup_s"] = skipped("s")
        sage, peer = figures[f"sage_b{batch}_tokens_per_s"], figures[f"peer_b{batch}_tokens_per_s"]
        measured = f"sage {describe(sage)}, HF {describe(peer)}"
        ctx.log("decode", f"batch {batch}: {measured}")
        targets.append(Target("decode", f"batch {batch} tokens/s, sage / HF generate", ">=", 1.0,
                              ratio(sage, peer), measured))
    settings = dict(prompt_len=s.prompt_len, new_tokens=s.new_tokens, batches=list(s.decode_batches),
                    greedy=True, eos_id=ctx.eos_id, peer_attention="sdpa")
    return CaseResult(settings, figures, targets)
