"""A bare weight matrix under the parameter path `nn.Dense` would give it (`<name>/kernel`), float or quantized.

The attention and FFN blocks fuse their projections into one matmul each (q|k|v, gate|up), which a
`[B * T, D]` input and one wide weight make cheaper on CPU than several `[B, T, D]` Dense calls, above all in
the backward pass. `Weight` lets them keep the parameter tree of separate `Dense`/`DenseGeneral` layers
(checkpoints, partition rules by path) while they multiply by the concatenated matrices themselves.

`param` is where a quantized weight (`sage_jax.quant.QTensor`) enters a layer: every weight a layer multiplies
by goes through it and `quant.as_array`, which dequantises inside the jitted forward.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax

from sage_jax.config import SageConfig
from sage_jax.quant import QTensor, as_array


def param(module: nn.Module, name: str, init: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """`module.param(name, init, shape, dtype)`, or the `QTensor` stored under `name`.

    Flax checks a stored parameter's leaves against the initialiser's shape, which a `QTensor`'s packed codes
    would fail; its logical shape is checked here instead.
    """
    if module.has_variable("params", name):
        value = module.get_variable("params", name)
        if isinstance(value, QTensor):
            if value.shape != tuple(shape):
                raise ValueError(f"quantized parameter {'/'.join(module.scope.path)}/{name} has shape {value.shape}, "
                                 f"the layer needs {tuple(shape)}")
            return value
    return module.param(name, init, shape, dtype)


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
        kernel = param(self, "kernel", lambda key, _, dtype: self.init(key, flat, dtype).reshape(shape), shape,
                       self.cfg.params_dtype)
        return as_array(kernel, self.cfg.compute_dtype)
