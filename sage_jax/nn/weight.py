"""A bare weight matrix under the parameter path `nn.Dense` would give it (`<name>/kernel`).

The attention and FFN blocks fuse their projections into one matmul each (q|k|v, gate|up), which a
`[B * T, D]` input and one wide weight make cheaper on CPU than several `[B, T, D]` Dense calls, above all in
the backward pass. `Weight` lets them keep the parameter tree of separate `Dense`/`DenseGeneral` layers
(checkpoints, partition rules by path) while they multiply by the concatenated matrices themselves.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from sage_jax.config import SageConfig


class Weight(nn.Module):
    """Returns the `kernel` parameter of shape `(in_features,) + out_shape`, in `cfg.compute_dtype`.

    Initialised as `nn.DenseGeneral` initialises its kernel (over the flattened `[in, prod(out)]` matrix,
    then reshaped), so `init_params` draws the same values as the separate layers did.
    """

    cfg: SageConfig
    in_features: int
    out_shape: tuple[int, ...]
    init: nn.initializers.Initializer

    @nn.compact
    def __call__(self) -> jax.Array:
        shape = (self.in_features,) + tuple(self.out_shape)
        flat = (self.in_features, math.prod(self.out_shape))
        kernel = self.param("kernel", lambda key, _, dtype: self.init(key, flat, dtype).reshape(shape), shape,
                            self.cfg.params_dtype)
        return kernel.astype(self.cfg.compute_dtype)
