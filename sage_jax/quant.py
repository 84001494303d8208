"""Weight-only int4 and int8: integer codes in groups along each weight's input axis, with one scale per group
(and one minimum, for the asymmetric schemes GGUF calls Q4_1), dequantised inside the jitted forward.

    qparams = quant.quantize(params, cfg, bits=4, group_size=32)    # a params pytree; forward, generate,
    out = sj.forward(qparams, tokens, cfg)                           # explain and Edits take it unchanged

A `QTensor` stands where the float weight stood, so the tree keeps its paths (checkpoints, partition rules by
path, `nn.scan`'s leading layer axis) and only the leaves change. Groups run along the axis a matmul contracts
(the input features), as GGUF's blocks do, so a GGUF Q4_0, Q4_1 or Q8_0 tensor is a `QTensor` byte for byte
(`sage_jax.interop.gguf.load_gguf(..., quantized=True)`). The codes are packed two to a byte for int4: XLA:CPU
stores `jnp.int4` one per byte and multiplies through it slower than through unpacked bytes (WORKSPACE).

Within a group, byte `j` holds code `j` in its low nibble and code `j + group_size / 2` in its high one (GGUF's
order). A weight reads `scale * (code - 8)` (symmetric int4, Q4_0), `scale * code + minimum` (asymmetric, Q4_1;
int8 likewise with 255 levels) or `scale * code` with signed int8 codes (symmetric int8, Q8_0).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.config import SageConfig

BITS = (4, 8)

QUANTIZED_AXES: Mapping[tuple[str, ...], int] = {
    ("embed",): -1,
    ("unembed", "kernel"): -2,
    ("layers", "attn", "q", "kernel"): -3,
    ("layers", "attn", "k", "kernel"): -3,
    ("layers", "attn", "v", "kernel"): -3,
    ("layers", "attn", "o"): -2,
    ("layers", "ffn", "wi_gate", "kernel"): -2,
    ("layers", "ffn", "wi_up", "kernel"): -2,
    ("layers", "ffn", "wo", "kernel"): -2,
}
"""The weights `quantize` replaces, and the axis each is grouped along (negative: the same with or without the
leading layer axis): the axis its matmul contracts (`o` `[H, d, D]` contracts heads and head width; groups run
along the head width), and the model width for the embedding, which the tied unembedding contracts. Norms,
biases, the reasoning gate and the meta head stay in floating point: together under 0.1% of any preset."""


@flax.struct.dataclass
class QTensor:
    """A quantized weight of logical shape `shape`, grouped along `axis`.

    Attributes:
      codes: `uint8` (int4 packed two to a byte, or asymmetric int8) or `int8` (symmetric int8); `shape` with
        `axis` halved for int4.
      scale: `shape` with `axis` divided by `group_size` (float16 unless quantized with another dtype).
      minimum: like `scale` for the asymmetric schemes, else `None`.
      axis: the grouped axis, negative so that stacking layers in front leaves it unchanged.
      bits: 4 or 8.
      group_size: weights per scale along `axis`.
    """

    codes: Any
    scale: Any
    minimum: Any = None
    axis: int = flax.struct.field(pytree_node=False, default=-1)
    bits: int = flax.struct.field(pytree_node=False, default=4)
    group_size: int = flax.struct.field(pytree_node=False, default=32)

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.codes.shape)
        shape[self.axis] *= 8 // self.bits
        return tuple(shape)

    @property
    def ndim(self) -> int:
        return self.codes.ndim

    @property
    def symmetric(self) -> bool:
        return self.minimum is None

    @property
    def T(self) -> QTensor:  # noqa: N802 (numpy's name)
        return self.transpose()

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        """The weight `[*shape]` in `dtype`, computed in float32 (exactly what GGUF's reference dequantiser
        computes for its block types)."""
        a = self.axis % self.ndim
        shape = self.shape
        n_groups = shape[a] // self.group_size
        grouped = shape[:a] + (n_groups, self.group_size) + shape[a + 1:]
        codes = jnp.asarray(self.codes)
        if self.bits == 4:
            codes = codes.reshape(shape[:a] + (n_groups, self.group_size // 2) + shape[a + 1:])
            codes = jnp.concatenate([codes & 0xF, codes >> 4], axis=a + 1)
        values = codes.reshape(grouped).astype(jnp.float32)
        if self.bits == 4 and self.symmetric:
            values = values - 8.0
        values = values * jnp.expand_dims(jnp.asarray(self.scale, jnp.float32), a + 1)
        if not self.symmetric:
            values = values + jnp.expand_dims(jnp.asarray(self.minimum, jnp.float32), a + 1)
        return values.reshape(shape).astype(dtype)

    def take_rows(self, ids: jax.Array, dtype: Any) -> jax.Array:
        """Rows `ids` of a table grouped along its last axis (the embedding), dequantised: `[*ids.shape, D]`.

        Only the rows asked for are dequantised. An id outside the table reads NaN, as `jnp.take` with
        `mode="fill", fill_value=nan` does on the float table."""
        if self.axis % self.ndim == 0:
            raise ValueError(f"take_rows needs a table grouped along a later axis than the rows, got axis {self.axis}")
        rows = jax.tree.map(lambda x: jnp.take(x, ids, axis=0, mode="fill", fill_value=0), self)
        scale = jnp.take(self.scale, ids, axis=0, mode="fill", fill_value=jnp.nan)
        return dataclasses.replace(rows, scale=scale).dequantize(dtype)

    def transpose(self, *axes: int) -> QTensor:
        """The same weight with its axes permuted (as `np.transpose`), the grouped axis following."""
        order = tuple(axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes) or tuple(
            reversed(range(self.ndim)))
        axis = order.index(self.axis % self.ndim) - self.ndim
        return dataclasses.replace(jax.tree.map(lambda x: x.transpose(order), self), axis=axis)

    def swapaxes(self, a: int, b: int) -> QTensor:
        order = list(range(self.ndim))
        order[a], order[b] = order[b], order[a]
        return self.transpose(order)

    def reshape(self, *shape: int) -> QTensor:
        """The weight reshaped (row-major, as `np.reshape`) where the groups allow it: the axes after the grouped
        one keep their product, and the grouped axis may split into `[outer, inner]` with `inner` a multiple of
        `group_size` (`inner` becomes the grouped axis), as turning `[H * d, D]` into `[H, d, D]` does.

        Raises:
          ValueError: a reshape that would cut through groups.
        """
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)
        old = self.shape
        a = self.axis % self.ndim
        after = int(np.prod(old[a + 1:]))
        for b in range(len(shape) - 1, -1, -1):
            if int(np.prod(shape[b + 1:])) == after and shape[b] % self.group_size == 0 and old[a] % shape[b] == 0:
                break
        else:
            raise ValueError(f"cannot reshape a QTensor of shape {old} grouped along axis {self.axis} "
                             f"(group size {self.group_size}) to {shape}: the reshape would cut through groups")
        per_byte = 8 // self.bits

        def with_axis(size: int) -> tuple[int, ...]:
            return shape[:b] + (size,) + shape[b + 1:]

        return dataclasses.replace(
            self, codes=self.codes.reshape(with_axis(shape[b] // per_byte)),
            scale=self.scale.reshape(with_axis(shape[b] // self.group_size)),
            minimum=None if self.minimum is None else self.minimum.reshape(with_axis(shape[b] // self.group_size)),
            axis=b - len(shape))


def stack(tensors: Sequence[QTensor]) -> QTensor:
    """`np.stack` of same-layout `QTensor`s along a new leading axis (the layer axis)."""
    first = tensors[0]
    if any((t.axis, t.bits, t.group_size, t.symmetric) != (first.axis, first.bits, first.group_size, first.symmetric)
           for t in tensors):
        raise ValueError("cannot stack QTensors of different layouts: "
                         + ", ".join(sorted({f"{t.bits}-bit groups of {t.group_size} along axis {t.axis}"
                                             f"{'' if t.symmetric else ' with minimums'}" for t in tensors})))
    return jax.tree.map(lambda *xs: np.stack(xs), *tensors)


def as_array(weight: Any, dtype: Any) -> jax.Array:
    """A float weight cast to `dtype`, or a `QTensor` dequantised to it: what a layer multiplies by."""
    return weight.dequantize(dtype) if isinstance(weight, QTensor) else jnp.asarray(weight).astype(dtype)


def embed_rows(table: Any, ids: jax.Array, dtype: Any) -> jax.Array:
    """`table[ids]` `[*ids.shape, D]` in `dtype` for a float or quantized embedding; out-of-range ids read NaN."""
    if isinstance(table, QTensor):
        return table.take_rows(ids, dtype)
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan).astype(dtype)


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "axis", "symmetric", "scale_dtype"))
def quantize_array(weight: Any, *, bits: int = 4, group_size: int = 32, axis: int = -1, symmetric: bool = True,
                   scale_dtype: Any = jnp.float16) -> QTensor:
    """`weight` in `bits`-bit codes, one scale (and minimum) per `group_size` values along `axis`.

    Symmetric int4 follows GGUF's Q4_0 (the value of largest magnitude maps to code 0, i.e. -8, so the grid
    spends its extra negative level on it), symmetric int8 Q8_0 (absolute maximum to 127), asymmetric both
    Q4_1 (minimum to code 0, maximum to the top code). Scales are rounded to `scale_dtype` before the codes are
    chosen, so the codes fit the scales the tensor stores.
    """
    x = jnp.asarray(weight, jnp.float32)
    a = axis % x.ndim
    n_groups = x.shape[a] // group_size
    groups = x.reshape(x.shape[:a] + (n_groups, group_size) + x.shape[a + 1:])
    levels = 2 ** bits - 1
    if symmetric:
        extreme = jnp.take_along_axis(groups, jnp.argmax(jnp.abs(groups), axis=a + 1, keepdims=True), axis=a + 1)
        scale = (extreme / -8.0 if bits == 4 else jnp.abs(extreme) / 127.0).astype(scale_dtype)
        inverse = jnp.where(scale == 0, 0.0, 1.0 / scale.astype(jnp.float32))
        if bits == 4:
            codes = jnp.clip(jnp.round(groups * inverse) + 8, 0, 15).astype(jnp.uint8)
        else:
            codes = jnp.clip(jnp.round(groups * inverse), -127, 127).astype(jnp.int8)
        minimum = None
    else:
        low, high = jnp.min(groups, axis=a + 1, keepdims=True), jnp.max(groups, axis=a + 1, keepdims=True)
        scale = ((high - low) / levels).astype(scale_dtype)
        minimum = low.astype(scale_dtype)
        inverse = jnp.where(scale == 0, 0.0, 1.0 / scale.astype(jnp.float32))
        codes = jnp.clip(jnp.round((groups - minimum.astype(jnp.float32)) * inverse), 0, levels).astype(jnp.uint8)
        minimum = jnp.squeeze(minimum, a + 1)
    if bits == 4:
        half = group_size // 2
        low_codes, high_codes = jnp.split(codes, [half], axis=a + 1)
        codes = low_codes | (high_codes << 4)
    codes = codes.reshape(x.shape[:a] + (-1,) + x.shape[a + 1:])
    return QTensor(codes, jnp.squeeze(scale, a + 1), minimum, axis=axis - x.ndim if axis >= 0 else axis, bits=bits,
                   group_size=group_size)


def quantize(params, cfg: SageConfig, *, bits: int = 4, group_size: Union[int, Mapping[str, int]] = 32,
             symmetric: bool = True, scale_dtype: Any = jnp.float16):
    """The params pytree with every weight of `QUANTIZED_AXES` as a `QTensor`; everything else unchanged.

    Args:
      params: float parameters of `cfg` (`init_params`, a checkpoint, `interop.load`).
      cfg: their config; the tree must have its shapes.
      bits: 4 or 8.
      group_size: weights per scale along each weight's grouped axis, one for all or `{path: size}` for each
        quantized weight (`"layers/ffn/wo/kernel"`; `largest_group_sizes` gives GGUF's 32 wherever it divides,
        as llama.cpp mixes block types per tensor); must divide that axis (and be even for int4, whose codes
        pair up within a group).
      symmetric: scale only (Q4_0, Q8_0), or scale and minimum (Q4_1).
      scale_dtype: dtype the scales (and minimums) are stored in; float16 as GGUF stores them.

    Raises:
      ValueError: an unsupported `bits`, a group size that does not divide a weight's axis (naming the
        parameter path), a tree that does not match `cfg`, or params that are already quantized.
    """
    from sage_jax.model import param_shapes  # the model's layers import this module

    if bits not in BITS:
        raise ValueError(f"quantize: bits={bits} is not supported; choose one of {BITS}")
    want = {path: leaf.shape for path, leaf in _flat(param_shapes(cfg)).items()}
    have = _flat(params)
    for path, leaf in have.items():
        if isinstance(leaf, QTensor):
            raise ValueError(f"quantize: params/{'/'.join(path)} is already quantized ({leaf.bits}-bit); quantize "
                             "the float parameters once")
    if set(have) != set(want):
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        raise ValueError(f"quantize: the params do not match config {cfg.name!r}: "
                         + (f"missing params/{'/'.join(missing[0])}" if missing else
                            f"unexpected params/{'/'.join(extra[0])}"))
    sizes = _sizes_by_path(group_size, [path for path in want if path in QUANTIZED_AXES], bits)
    for path, leaf in have.items():
        if tuple(np.shape(leaf)) != tuple(want[path]):
            raise ValueError(f"quantize: params/{'/'.join(path)} has shape {tuple(np.shape(leaf))}, config "
                             f"{cfg.name!r} needs {tuple(want[path])}")
        if path in sizes and want[path][QUANTIZED_AXES[path]] % sizes[path]:
            axis = QUANTIZED_AXES[path]
            raise ValueError(f"quantize: group_size={sizes[path]} does not divide axis {axis} (size "
                             f"{want[path][axis]}) of params/{'/'.join(path)} {tuple(want[path])}; group sizes "
                             f"that divide every quantized axis of {cfg.name!r}: {group_sizes(cfg, bits)}, or "
                             "one per weight: largest_group_sizes(cfg)")
    quantized = {path: (quantize_array(leaf, bits=bits, group_size=sizes[path], axis=QUANTIZED_AXES[path],
                                       symmetric=symmetric, scale_dtype=scale_dtype)
                        if path in sizes else leaf) for path, leaf in have.items()}
    return _unflat(quantized)


def _sizes_by_path(group_size: Union[int, Mapping[str, int]], paths: Sequence[tuple[str, ...]], bits: int
                   ) -> dict[tuple[str, ...], int]:
    """`{path: group size}` of every quantized weight, checked."""
    if isinstance(group_size, Mapping):
        named = {"/".join(path): path for path in paths}
        unknown = sorted(set(group_size) - set(named))
        if unknown:
            raise ValueError(f"quantize: group_size names {unknown[0]!r}, which is not a quantized weight of this "
                             f"config ({sorted(named)})")
        missing = sorted(set(named) - set(group_size))
        if missing:
            raise ValueError(f"quantize: group_size gives no size for {missing[0]!r} ({len(missing)} in all)")
        sizes = {named[name]: size for name, size in group_size.items()}
    else:
        sizes = {path: group_size for path in paths}
    for path, size in sizes.items():
        if not isinstance(size, (int, np.integer)) or size < 1 or (bits == 4 and size % 2):
            raise ValueError(f"quantize: group_size={size!r} for params/{'/'.join(path)} must be a positive"
                             f"{' even' if bits == 4 else ''} number of weights")
    return sizes


def group_sizes(cfg: SageConfig, bits: int = 4) -> tuple[int, ...]:
    """The single group sizes `quantize` accepts for `cfg`: the common divisors of every quantized axis (even for
    int4). The `tiny` preset's FFN width is 688 = 43 x 16, so 16 is its largest; SmolLM2 and `nano_4b` take 32.
    """
    sizes = set(_quantized_axes(cfg).values())
    common = np.gcd.reduce(np.array(sorted(sizes)))
    return tuple(g for g in range(1, int(common) + 1) if common % g == 0 and (bits != 4 or g % 2 == 0))


def largest_group_sizes(cfg: SageConfig, bits: int = 4, at_most: int = 32) -> dict[str, int]:
    """`{path: size}` for `quantize`: each quantized weight's largest group size up to `at_most` (GGUF's block).

    On `tiny` every weight takes 32 but `layers/ffn/wo/kernel`, whose input axis (688) takes 16 at most.
    """
    return {"/".join(path): max(g for g in range(2 if bits == 4 else 1, at_most + 1, 2 if bits == 4 else 1)
                                if size % g == 0)
            for path, size in _quantized_axes(cfg).items()}


def describe_groups(group_size: Union[int, Mapping[str, int]]) -> str:
    """A `quantize` group size in words: "groups of 32", or "groups of 32 (16: layers/ffn/wo/kernel)"."""
    if not isinstance(group_size, Mapping):
        return f"groups of {group_size}"
    sizes = list(group_size.values())
    common = max(set(sizes), key=sizes.count)
    others = ", ".join(f"{size}: {path}" for path, size in group_size.items() if size != common)
    return f"groups of {common}" + (f" ({others})" if others else "")


def _quantized_axes(cfg: SageConfig) -> dict[tuple[str, ...], int]:
    """`{path: size of its grouped axis}` of `cfg`'s quantized weights."""
    from sage_jax.model import param_shapes  # the model's layers import this module

    shapes = {path: leaf.shape for path, leaf in _flat(param_shapes(cfg)).items() if path in QUANTIZED_AXES}
    return {path: shape[QUANTIZED_AXES[path]] for path, shape in shapes.items()}


def dequantize(params, dtype: Optional[Any] = None):
    """The params pytree with every `QTensor` read back to floating point (`dtype`, default float32): the
    reference a quantized forward is compared with, and what float-only tools (export, training) take."""
    return jax.tree.map(lambda x: x.dequantize(dtype or jnp.float32) if isinstance(x, QTensor) else x, params,
                        is_leaf=lambda x: isinstance(x, QTensor))


def is_quantized(params) -> bool:
    """Whether any weight of `params` is a `QTensor`."""
    return any(isinstance(leaf, QTensor) for leaf in _flat(params).values())


def weight_bytes(params) -> int:
    """Bytes the parameter buffers hold (codes, scales and minimums for a `QTensor`)."""
    return sum(int(x.nbytes) for x in jax.tree.leaves(params))


def _flat(params) -> dict[tuple[str, ...], Any]:
    """`{path: leaf}` with `QTensor`s as leaves."""
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, QTensor))[0]
    return {tuple(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree
