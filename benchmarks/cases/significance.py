"""Exact significance (Eq. 7) for all steps of a chain against one forward plus backward, and against the
peer's way of getting the same numbers: a torch loop of one backward pass per step.

Chains: `chain_lengths` random tokens with `chain_steps` `<step>`-led steps (`workloads.chain`), the context
widened to the longest (`cfg.replace(max_seq_len=...)`; parameters do not depend on it).

- SAGE: `sage_jax.interpret.significance.significance` (one forward recording attention, one `vjp` whose
  pullback is vmapped over the steps).
- One forward + backward: the gradient of the summed step losses with respect to the same layer-0 probe
  (`probe_edits`), no attention recorded: the least any exact method that differentiates through the model
  must pay.
- Peer: the mirrored Llama with eager attention (the implementation that returns attention weights), one
  forward with `output_attentions=True` from `inputs_embeds`, then per step `torch.autograd.grad(L_i, embeds,
  retain_graph=True)` and the same combination `w * ||grad|| * H` normalised by its maximum; only the
  embeddings require gradients, as in the JAX vjp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import memory, peer as peer_lib, workloads
from benchmarks.cases.context import CaseResult, Context
from benchmarks.report import Target, describe, figure, ratio, skipped
from benchmarks.timing import side_by_side
from sage_jax import model
from sage_jax.interpret.significance import probe_edits, significance
from sage_jax.interpret.steps import step_losses
from sage_jax.layout import Steps


def forward_backward(cfg, params, tokens: jax.Array, steps: Steps, probe: jax.Array) -> jax.Array:
    """`[T, D]` the gradient of the summed step losses with respect to the layer-0 probe (no Trace recorded)."""
    def summed_loss(delta):
        out = model.forward(params, tokens[None], cfg, edits=probe_edits(cfg, 0, delta))
        return jnp.sum(step_losses(out.logits[0], tokens, steps))

    return jax.grad(summed_loss)(probe)


def peer_loop(torch, llama, tokens: np.ndarray, steps: Steps):
    """The peer's exact significance of `tokens [T]` (a blocking call returning `[n, T]`): one forward with
    attention weights from `inputs_embeds`, one `autograd.grad` per step (module docstring); `llama` must use
    eager attention and hold no parameter that requires gradients."""
    ids = torch.tensor(tokens, dtype=torch.long)[None]
    mask = torch.tensor(np.asarray(steps.mask), dtype=torch.float32)
    queries = torch.tensor(np.asarray(steps.queries), dtype=torch.float32)
    sources = torch.tensor(np.asarray(steps.sources), dtype=torch.float32)
    embed = llama.get_input_embeddings()

    def run():
        embeds = embed(ids).detach().requires_grad_(True)
        out = llama(inputs_embeds=embeds, output_attentions=True, use_cache=False)
        logp = torch.log_softmax(out.logits[0, :-1], dim=-1)
        nll = torch.cat([logp.new_zeros(1), -logp.gather(-1, ids[0, 1:, None])[:, 0]])
        entropy = torch.cat([logp.new_zeros(1), -(logp.exp() * logp).sum(-1)])
        losses = mask @ nll
        step_entropy = (mask @ entropy) / mask.sum(-1).clamp(min=1)
        attention = torch.stack(out.attentions)[:, 0].mean(dim=(0, 1))  # [T, T]
        weight = (queries @ attention) / queries.sum(-1, keepdim=True).clamp(min=1)
        norms = torch.stack([torch.autograd.grad(losses[i], embeds, retain_graph=True)[0][0].norm(dim=-1)
                             for i in range(losses.shape[0])])
        raw = weight * norms * step_entropy[:, None] * sources
        return (raw / raw.max()).detach()

    return run


def run(ctx: Context) -> CaseResult:
    s = ctx.sizes
    cfg = ctx.cfg.replace(max_seq_len=max(s.chain_lengths))
    params = ctx.params
    llama = None
    if ctx.peer is not None:
        llama = peer_lib.build_model(ctx.peer, cfg, attention="eager")
        llama.eval()
        llama.requires_grad_(False)
    figures, targets = {}, []
    for length in s.chain_lengths:
        tokens, steps = workloads.chain(cfg, length, s.chain_steps)
        probe = jnp.zeros((length, cfg.d_model), cfg.compute_dtype)
        sig, sig_s = workloads.aot(lambda p, t, st: significance(p, cfg, t, st).score, params, tokens, steps)
        fwd_bwd, fwd_bwd_s = workloads.aot(lambda p, t, st, z: forward_backward(cfg, p, t, st, z), params, tokens,
                                           steps, probe)
        figures[f"significance_{length}_compile_s"] = figure(sig_s, "s")
        figures[f"forward_backward_{length}_compile_s"] = figure(fwd_bwd_s, "s")
        contenders = {"significance": lambda: jax.block_until_ready(sig(params, tokens, steps)),
                      "forward_backward": lambda: jax.block_until_ready(fwd_bwd(params, tokens, steps, probe))}
        if llama is not None:
            contenders["peer_loop"] = peer_loop(ctx.peer.torch, llama, np.asarray(tokens), steps)
        timings = side_by_side(contenders, ctx.repeats)
        for name in ("significance", "forward_backward", "peer_loop"):
            if name in timings:
                figures[f"{name}_{length}_s"] = figure(timings[name].median_s, "s")
                figures[f"{name}_{length}_warmup_s"] = figure(timings[name].warmup_s, "s")
            else:
                figures[f"{name}_{length}_s"] = skipped("s")
                figures[f"{name}_{length}_warmup_s"] = skipped("s")
        figures[f"significance_{length}_xla_bytes"] = figure(memory.stage_bytes(sig), "bytes")
        figures[f"forward_backward_{length}_xla_bytes"] = figure(memory.stage_bytes(fwd_bwd), "bytes")
        exact, single, loop = (figures[f"{n}_{length}_s"] for n in ("significance", "forward_backward", "peer_loop"))
        ctx.log("significance", f"{length} tokens: exact {describe(exact, 1e3, 'ms')}, fwd+bwd "
                                f"{describe(single, 1e3, 'ms')}, torch loop {describe(loop, 1e3, 'ms')}")
        targets += [
            Target("significance", f"{length} tokens, {s.chain_steps} steps: exact / one fwd+bwd", "<=", 3.0,
                   ratio(exact, single), f"{describe(exact, 1e3, 'ms')} vs {describe(single, 1e3, 'ms')}"),
            Target("significance", f"{length} tokens, {s.chain_steps} steps: torch per-step loop / exact", ">=", 4.0,
                   ratio(loop, exact), f"{describe(loop, 1e3, 'ms')} vs {describe(exact, 1e3, 'ms')}"),
        ]
    settings = dict(chain_lengths=list(s.chain_lengths), steps=s.chain_steps, max_seq_len=cfg.max_seq_len,
                    probe_layer=0, peer_attention="eager (output_attentions)")
    return CaseResult(settings, figures, targets)
