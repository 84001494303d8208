"""The optimizer: AdamW with linear warmup, cosine decay and global-norm clipping, from a frozen config.

Weight decay applies to matrices only (kernels, the embedding, the attention output projection), chosen by
parameter path rather than by rank, because scanned block parameters carry a leading `[n_layers]` axis that
makes norm scales and gate vectors rank 2.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import optax

from sage_jax.train.paths import path_str

_DECAY_PATTERN = re.compile(r"(kernel|(^|/)embed|attn/o)$")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer hyper-parameters (static, hashable).

    Attributes:
      peak_lr: learning rate at the end of warmup.
      warmup_steps: steps of linear warmup from 0 to `peak_lr`.
      total_steps: length of the schedule; cosine decay runs from `warmup_steps` to here.
      end_lr_ratio: final learning rate as a fraction of `peak_lr`.
      b1, b2, eps: Adam moments.
      weight_decay: decoupled weight decay (AdamW) of matrix parameters.
      max_grad_norm: clip the global gradient norm to this (0 turns clipping off).
    """

    peak_lr: float = 3e-3
    warmup_steps: int = 100
    total_steps: int = 1000
    end_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0

    def __post_init__(self):
        checks = {
            "peak_lr": self.peak_lr > 0, "warmup_steps": 0 <= self.warmup_steps < self.total_steps,
            "total_steps": self.total_steps > 0, "end_lr_ratio": 0 <= self.end_lr_ratio <= 1,
            "b1": 0 <= self.b1 < 1, "b2": 0 <= self.b2 < 1, "eps": self.eps > 0,
            "weight_decay": self.weight_decay >= 0, "max_grad_norm": self.max_grad_norm >= 0,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"OptimConfig.{field}={getattr(self, field)!r} is out of range "
                                 f"(warmup_steps must lie in [0, total_steps), ratios in [0, 1], rates > 0)")


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine decay to `end_lr_ratio * peak_lr`
    at `total_steps` (constant after)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.peak_lr, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.total_steps, end_value=cfg.peak_lr * cfg.end_lr_ratio)


def weight_decay_mask(params) -> object:
    """A pytree of bools like `params`: `True` where weight decay applies (matrices, by path)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: bool(_DECAY_PATTERN.search(path_str(path))), params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the `learning_rate_schedule`."""
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=weight_decay_mask)
    if cfg.max_grad_norm == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)
