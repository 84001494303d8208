"""The PyTorch peer: a Hugging Face `LlamaForCausalLM` built to mirror a `SageConfig`.

torch and transformers are optional (`requirements-bench.txt`): `import_peer()` returns `None` when either is
missing, and every peer figure is then recorded as `SKIPPED` instead of failing the run.

Where the architectures coincide. A SAGE model without the reasoning gate and the meta-cognitive head, with
every attention span `None` (`mirror_config`), is a Llama decoder: pre-RMSNorm blocks, rotary attention with
grouped KV heads, a SwiGLU FFN, a final RMSNorm, tied or untied embeddings. Its parameter count equals the
peer's exactly (tested). What the SAGE model has on top is listed by `differences`.
"""

from __future__ import annotations

import importlib
import types
from typing import Optional

import jax
import numpy as np

from sage_jax import model
from sage_jax.config import SageConfig

SKIPPED = "skipped: install requirements-bench.txt"


def import_peer() -> Optional[types.SimpleNamespace]:
    """`torch` and `transformers` as `.torch` / `.transformers`, or `None` when either is not installed
    (`benchmarks/__init__.py` has set torch's OpenMP wait policy before this runs)."""
    try:
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
    except ImportError:
        return None
    return types.SimpleNamespace(torch=torch, transformers=transformers)


def mirror_config(cfg: SageConfig) -> SageConfig:
    """`cfg` reduced to the Llama architecture: no reasoning gate, no meta head, full-context attention."""
    return cfg.replace(reasoning_gate=False, meta_head=False, reasoning_span=None, memory_span=None,
                       meta_span=None)


def llama_kwargs(cfg: SageConfig, max_positions: Optional[int] = None) -> dict:
    """`LlamaConfig` arguments with the width, depth, heads, KV heads, FFN width, vocabulary, context, norm
    epsilon, rotary base, embedding tying and init scale of `cfg`."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
                max_position_embeddings=max_positions or cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
                tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
                initializer_range=cfg.init_std, pad_token_id=cfg.pad_id, bos_token_id=cfg.bos_id,
                eos_token_id=None, use_cache=True)


def build_model(peer: types.SimpleNamespace, cfg: SageConfig, *, seed: int = 0, attention: str = "sdpa",
                max_positions: Optional[int] = None):
    """A float32 `LlamaForCausalLM` mirroring `cfg`, randomly initialised from `seed`.

    Args:
      peer: what `import_peer` returned.
      cfg: the SAGE config to mirror.
      seed: torch seed of the initialisation.
      attention: the transformers attention implementation ("sdpa" is its fastest CPU path; "eager" is the one
        that returns attention weights).
      max_positions: context length, when a case widens `cfg`'s.
    """
    peer.torch.manual_seed(seed)
    config = peer.transformers.LlamaConfig(**llama_kwargs(cfg, max_positions), dtype="float32")
    config._attn_implementation = attention
    llama = peer.transformers.LlamaForCausalLM(config)
    llama.generation_config.eos_token_id = None
    llama.generation_config.pad_token_id = cfg.pad_id
    return llama


def param_count(llama) -> int:
    """Distinct parameters of a torch module (a tied embedding counts once)."""
    return sum(p.numel() for p in llama.parameters())


def differences(cfg: SageConfig) -> dict:
    """What the SAGE model has that the peer does not, with the parameters it costs."""
    shapes = model.param_shapes(cfg)
    extra = {}
    if cfg.reasoning_gate:
        ffn = shapes["layers"]["ffn"]
        extra["reasoning_gate"] = int(np.prod(ffn["gate_w"].shape) + np.prod(ffn["gate_b"].shape))
    if cfg.meta_head:
        extra["meta_head"] = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["meta_head"]))
    notes = ["SAGE adds a per-token sigmoid reasoning gate on every FFN output (w_r [D] + b per layer)",
             "SAGE adds the meta-cognitive confidence head (RMSNorm + linear over the meta heads' values); its BCE "
             "term is part of the SAGE train loss, the peer trains on next-token cross-entropy only",
             f"SAGE attention spans (reasoning, memory, meta) = {cfg.group_spans}; the peer attends to the full "
             "causal context (a span only changes work when the sequence is longer than it)",
             "the peer uses transformers' sdpa attention (eager where attention weights are returned)"]
    return dict(extra_params=extra, notes=notes)


def set_threads(peer: types.SimpleNamespace, threads: int) -> int:
    """Pins torch's intra-op and inter-op thread pools to `threads`; returns what torch reports."""
    peer.torch.set_num_threads(threads)
    try:
        peer.torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable before the first parallel op; the intra-op pool is what matters
        pass
    return peer.torch.get_num_threads()
