"""What loading and exporting real checkpoints can return or raise.

`Pretrained` bundles what a checkpoint holds: the config, the parameter pytree and, when the checkpoint carries
one, its tokenizer and chat template. `LoadError` is the one error a bad checkpoint raises; its message names
the file and, where one is at fault, the tensor or the config field.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from sage_jax.config import SageConfig


class LoadError(ValueError):
    """A checkpoint that cannot be loaded (or a config that cannot be exported); names the file and tensor."""


class Pretrained(NamedTuple):
    """A loaded checkpoint.

    Attributes:
      cfg: the homogeneous, Llama-compatible `SageConfig` the weights fit.
      params: the parameter pytree (`sage_jax.forward(params, tokens, cfg)` runs it).
      tokenizer: a `tokenizers.Tokenizer`, or `None` when the checkpoint has none.
      chat_template: the Jinja chat template the checkpoint ships, or `None`.
      source: the file or directory it came from.
      architecture: the checkpoint's architecture (`"LlamaForCausalLM"`, GGUF `"llama"`, ...).
    """

    cfg: SageConfig
    params: Any
    tokenizer: Optional[Any]
    chat_template: Optional[str]
    source: str
    architecture: str
