"""What every case shares: the model, the sizes, the repeat count, the peer, and the result shape."""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
from typing import Optional

import jax

import sage_jax as sj
from benchmarks import workloads
from benchmarks.report import Target

PRETRAINED = "smollm2-135m-instruct"
"""The `pretrained` case's default model (`sage_jax.interop.MODELS`)."""


@dataclasses.dataclass
class Context:
    """Attributes:
      cfg: the SAGE model under test.
      sizes: every case's shapes.
      repeats: timed rounds per comparison.
      quick: the seconds-long smoke sizes.
      peer: `benchmarks.peer.import_peer()`; `None` when torch or transformers is missing.
      threads: threads both sides compute with (XLA's CPU pool: the usable cores; torch is pinned to it).
      rss: measure peak RSS in fresh processes (`benchmarks.memory.rss_probe`).
      pretrained: the `pretrained` case's model: a named model, a `.gguf` file or a Hugging Face directory.
    """

    cfg: sj.SageConfig
    sizes: workloads.Sizes
    repeats: int
    quick: bool
    peer: Optional[types.SimpleNamespace]
    threads: int
    rss: bool = True
    pretrained: str = PRETRAINED

    @functools.cached_property
    def params(self):
        """The SAGE parameters every case uses (`init_params` at key 0, as in `workloads.build`)."""
        return sj.init_params(self.cfg, jax.random.key(0))

    def prompt(self, batch: int) -> jax.Array:
        """`[batch, prompt_len]` prompt: the first rows of `workloads.prompts` (as in `workloads.build`)."""
        return workloads.prompts(self.cfg, self.sizes)[:batch]

    @functools.cached_property
    def eos_id(self) -> int:
        """An end token that greedy decoding of every benchmark prompt never emits (`workloads.free_eos`)."""
        return workloads.free_eos(self.params, self.cfg, workloads.prompts(self.cfg, self.sizes),
                                  self.sizes.new_tokens)

    def log(self, case: str, message: str) -> None:
        print(f"[{case}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class CaseResult:
    """settings: the case's shapes and choices; figures: name -> figure (`benchmarks.report.figure`);
    targets: its table lines."""

    settings: dict
    figures: dict
    targets: list[Target]

    def to_dict(self) -> dict:
        return dict(settings=self.settings, figures=self.figures, targets=[t.to_dict() for t in self.targets])
