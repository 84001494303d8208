"""Attribution patching: the first-order estimate of activation patching, for every site at once.

Activation patching (noising) runs the clean input with one activation `a` replaced by its value on a corrupted
input and measures how far a metric moves. Attribution patching (Nanda, "Attribution Patching: Activation
Patching At Industrial Scale", 2023; Syed, Rager and Conmy, "Attribution Patching Outperforms Automated Circuit
Discovery", 2023) linearises the metric around the clean run:

    m(clean with a <- a_corrupt) - m(clean)  ~=  (a_corrupt - a_clean) . dm/da |_clean

so one forward of each run and one backward of the clean run estimate the effect of every site together: each
head at each position, each layer's residual stream at each position, and so on. The gradient is the gradient of
the metric with respect to an edit probe held at zero (`Edits.head_delta`, `Edits.residual_delta`, or the named
activation's `Edit.add`): the same edit that `activation_patching` sets to the difference, so both functions
differentiate and evaluate one function `delta -> m(forward(clean, edits=delta))`, at zero and at one site's
difference. The estimate is exact where the metric is linear in the activation (e.g. a metric linear in the last
`resid_post`, for the last layer's `mlp_out`), and it misses the saturation of softmaxes and norms elsewhere.

Sites (`at`), each a `Trace` field, its leading layer axis kept, its batch axis summed and its trailing width
axis contracted (a site is one whole vector):

- `"head_out"` `[L, T, H]`: a head's contribution to the residual stream at a position (`Edits.head_delta`). A
  head's output reaches the logits only through the residual stream here: the meta-cognitive readout
  (`ForwardOutput.meta`) reads the weighted values before the output projection and keeps its clean value, in the
  estimate and in the real patch alike.
- `"residual"` (or `"resid_pre"`) `[L, T]`: the stream entering block `l` (`Edits.residual_delta`).
- `"queries"` `[L, T, H]`, `"keys"` and `"values"` `[L, T, K]`: a head's query, a key/value head's key or value.
- `"scores"` `[L, H, T, S]`: one attention logit (no width to contract).
- `"attn_out"`, `"resid_mid"`, `"mlp_hidden"`, `"mlp_out"`, `"resid_post"` `[L, T]`.

`per_position=False` takes every position of a site together (`[L, H]` for `"head_out"`, `[L]` for the stream):
for the estimate the sum over positions (first order is additive), for the real patch one patch of all of them.

One problem at a time: the tokens are `[1, T]` (vmap over problems), and `metric(ForwardOutput) -> []` reads that
batch of one, as `sage_jax.interpret.patching` does. Noising is the direction here; pass the corrupted tokens
first for denoising (patch the clean activation into the corrupted run, gradient at the corrupted run).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from sage_jax.config import SageConfig
from sage_jax.interpret.patching import sweep
from sage_jax.model import ForwardOutput, Params, forward
from sage_jax.trace import ACTIVATIONS, Edit, Edits, Record, edit_shapes

Array = jax.Array
Metric = Callable[[ForwardOutput], Array]

_POSITION_AXES = ("query", "key")
_SUMMED_AXES = ("batch", "width")


class Site(NamedTuple):
    """What one `at` patches.

    Attributes:
      field: the `Trace` field whose clean and corrupted values are differenced.
      edit_field: the `Edits` field that adds a delta of that field's shape to the activation (a named
        activation's `Edit.add`, or `head_delta` / `residual_delta`); at zero it is the gradient's probe.
      axes: the names of the field's axes: `layer`, `batch`, `query`, `key`, `head`, `kv_head`, `width`.
    """

    field: str
    edit_field: str
    axes: tuple[str, ...]

    def edits(self, delta: Array) -> Edits:
        """`Edits` that add `delta` (the field's full shape) to the activation."""
        if self.edit_field in ACTIVATIONS:
            return Edits(**{self.edit_field: Edit(add=delta)})
        return Edits(**{self.edit_field: delta})

    def kept(self, per_position: bool) -> tuple[int, ...]:
        """The indices of the axes a site is indexed by (the result's axes, in the field's order)."""
        dropped = _SUMMED_AXES + (() if per_position else _POSITION_AXES)
        return tuple(i for i, axis in enumerate(self.axes) if axis not in dropped)


_STREAM = ("layer", "batch", "query", "width")
SITES = dict(
    head_out=Site("head_out", "head_delta", ("layer", "batch", "query", "head", "width")),
    residual=Site("residual", "residual_delta", _STREAM),
    queries=Site("queries", "queries", ("layer", "batch", "query", "head", "width")),
    keys=Site("keys", "keys", ("layer", "batch", "query", "kv_head", "width")),
    values=Site("values", "values", ("layer", "batch", "query", "kv_head", "width")),
    scores=Site("scores", "scores", ("layer", "batch", "head", "query", "key")),
    **{name: Site(name, name, _STREAM) for name in ("attn_out", "resid_mid", "mlp_hidden", "mlp_out", "resid_post")},
)
"""Every `at` and how it is patched; `"resid_pre"` (TransformerLens's name) is `"residual"`."""
ALIASES = dict(resid_pre="residual")


def site(at: str) -> Site:
    """The `Site` of `at` (a key of `SITES` or `ALIASES`); raises `ValueError` naming the choices."""
    name = ALIASES.get(at, at)
    if name not in SITES:
        raise ValueError(f"at={at!r} is not a patchable activation; choose from {sorted(SITES) + sorted(ALIASES)}")
    return SITES[name]


def attribution_patching(params: Params, cfg: SageConfig, clean_tokens: Array, corrupt_tokens: Array,
                         metric: Metric, *, at: str = "head_out", per_position: bool = True,
                         record: Sequence[str] = ()) -> Array:
    """First-order estimate of patching each site of `at` from the corrupted run into the clean one.

    `estimate[site] = sum((a_corrupt - a_clean) * dm/da)` over the site's vector (and the batch of one), with
    the gradient taken on the clean run: one forward of the corrupted run and one forward and backward of the
    clean run, whatever the number of sites.

    Args:
      params, cfg: the model (`cfg` static).
      clean_tokens: `[1, T]` the run that is patched and differentiated.
      corrupt_tokens: `[1, T]` the run the activations come from.
      metric: `ForwardOutput -> []` of the clean run's output (batch of one), e.g. the log-probability of the
        answer or a logit difference. A plain function is static under `jit` (a new closure compiles anew); a
        `jax.tree_util.Partial(fn, *arrays)`, called as `fn(*arrays, out)`, traces its arrays, so one compiled
        program serves every problem of a shape.
      at: the activation (module docstring: `"head_out"`, `"residual"`/`"resid_pre"`, or a named activation).
      per_position: `False` sums the estimate over positions (query and key): the estimate of patching a
        whole head (`[L, H]`) or a whole layer's stream (`[L]`).
      record: names of further `Trace` fields the metric reads (recorded in the clean run).

    Returns:
      `[L, T, H]` for `"head_out"`, `[L, T]` for the streams, ... (module docstring), in `cfg.accum_dtype`.

    Raises:
      ValueError: unknown `at`, tokens not `[1, T]` or of different shapes, a metric that is not a scalar.
    """
    _check_tokens(clean_tokens, corrupt_tokens)
    where = site(at)
    return _attribution(params, cfg, jnp.asarray(clean_tokens), jnp.asarray(corrupt_tokens), _as_partial(metric),
                        where, per_position, _record(where, record))


def activation_patching(params: Params, cfg: SageConfig, clean_tokens: Array, corrupt_tokens: Array,
                        metric: Metric, *, at: str = "head_out", per_position: bool = True,
                        record: Sequence[str] = (), batch_size: Optional[int] = None) -> Array:
    """The real patching that `attribution_patching` estimates: one clean run per site with that site patched.

    The site's difference `a_corrupt - a_clean` is added through the same edit that `attribution_patching`
    differentiates, so the patched site takes exactly the corrupted run's value (every edit sits downstream of
    nothing else edited). The runs go through `sage_jax.interpret.patching.sweep` (vmapped, in chunks of
    `batch_size`), never a Python loop of forward passes.

    Args:
      params, cfg, clean_tokens, corrupt_tokens, metric, at, record: as `attribution_patching`.
      per_position: `False` patches every position of a site together (a whole head at every position: `[L, H]`).
      batch_size: patched runs per vmapped chunk; `None` runs them all in one vmap (memory: one full-size
        delta of the activation per run).

    Returns:
      `metric(patched) - metric(clean)`, the shape of `attribution_patching`'s result.
    """
    _check_tokens(clean_tokens, corrupt_tokens)
    where = site(at)
    return _activation(params, cfg, jnp.asarray(clean_tokens), jnp.asarray(corrupt_tokens), _as_partial(metric),
                       where, per_position, _record(where, record), batch_size)


@functools.partial(jax.jit, static_argnames=("cfg", "where", "per_position", "record"))
def _attribution(params, cfg: SageConfig, clean, corrupt, metric, where: Site, per_position: bool, record: Record):
    corrupt_act = getattr(forward(params, corrupt, cfg, record=(where.field,)).trace, where.field)
    probe = jnp.zeros(edit_shapes(cfg, 1, clean.shape[1], clean.shape[1])[where.edit_field], cfg.accum_dtype)

    def clean_metric(delta):
        out = forward(params, clean, cfg, edits=where.edits(delta), record=record)
        return _scalar(metric(out)), getattr(out.trace, where.field)

    grad, clean_act = jax.grad(clean_metric, has_aux=True)(probe)
    product = (corrupt_act.astype(grad.dtype) - clean_act.astype(grad.dtype)) * grad
    kept = where.kept(per_position)
    return product.sum(axis=tuple(i for i in range(product.ndim) if i not in kept))


@functools.partial(jax.jit, static_argnames=("cfg", "where", "per_position", "record", "batch_size"))
def _activation(params, cfg: SageConfig, clean, corrupt, metric, where: Site, per_position: bool, record: Record,
                batch_size: Optional[int]):
    clean_out = forward(params, clean, cfg, record=record)
    corrupt_act = getattr(forward(params, corrupt, cfg, record=(where.field,)).trace, where.field)
    diff = corrupt_act - getattr(clean_out.trace, where.field)
    kept = where.kept(per_position)
    sites = tuple(diff.shape[i] for i in kept)
    # a one-hot over the sites, with size 1 on every axis a site does not index (batch, width, maybe positions)
    expanded = tuple(diff.shape[i] if i in kept else 1 for i in range(diff.ndim))

    def make_edits(index):
        selected = (jnp.arange(math.prod(sites)) == index).reshape(expanded)
        return where.edits(jnp.where(selected, diff, jnp.zeros((), diff.dtype)))

    patched = sweep(params, cfg, clean[0], make_edits, jnp.arange(math.prod(sites)),
                    lambda out: _scalar(metric(out)), record=record, batch_size=batch_size)
    return (patched - _scalar(metric(clean_out))).reshape(sites)


def _as_partial(metric: Metric) -> jax.tree_util.Partial:
    """`metric` as a pytree: a `Partial`'s arguments are traced, a plain function is static (its treedef)."""
    if not callable(metric):
        raise TypeError(f"metric must be a function ForwardOutput -> scalar, got {type(metric).__name__}")
    return metric if isinstance(metric, jax.tree_util.Partial) else jax.tree_util.Partial(metric)


def _record(where: Site, extra: Sequence[str]) -> Record:
    """The static `Record` of the site's field and the metric's fields."""
    names = (extra,) if isinstance(extra, str) else tuple(extra)
    return Record.of((where.field,) + names)


def _scalar(value) -> Array:
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(f"metric must return a scalar, got shape {value.shape} (reduce it, e.g. sum over positions)")
    return value


def _check_tokens(clean_tokens, corrupt_tokens) -> None:
    clean_shape, corrupt_shape = tuple(jnp.shape(clean_tokens)), tuple(jnp.shape(corrupt_tokens))
    if len(clean_shape) != 2 or clean_shape[0] != 1:
        raise ValueError(f"clean_tokens has shape {clean_shape}; expected one problem [1, T] "
                         "(vmap over problems for several)")
    if corrupt_shape != clean_shape:
        raise ValueError(f"corrupt_tokens has shape {corrupt_shape}; expected {clean_shape} like clean_tokens "
                         "(patching needs the two runs position for position)")
