"""Flax Linen modules of SAGE-nano. Pure: parameters in, arrays out; no state beyond `params`."""

from sage_jax.nn.attention import Attention, LayerCache
from sage_jax.nn.block import Block
from sage_jax.nn.ffn import GatedFFN
from sage_jax.nn.lm import LMOutput, SageLM
from sage_jax.nn.masks import attention_mask, boundary_flags
from sage_jax.nn.meta import MetaHead
from sage_jax.nn.norm import RMSNorm
from sage_jax.nn.rotary import apply_rotary

__all__ = ["Attention", "Block", "GatedFFN", "LMOutput", "LayerCache", "MetaHead", "RMSNorm", "SageLM",
           "apply_rotary", "attention_mask", "boundary_flags"]
