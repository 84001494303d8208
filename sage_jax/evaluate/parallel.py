"""Corpus analysis across devices: a function of one chain mapped over `[N, ...]` chains, the chains split over
the devices with `jax.shard_map`.

Every corpus measure (the counterfactual truth, every attribution map and its scores, the faithfulness and
dependency metrics) is a function of one chain and the parameters, and the chains are independent: data
parallelism with nothing to communicate until the per-chain results are gathered and summarised on the host (the
metrics are reduced at the end, by `truth.summarise_scores` and `explanations.summarise`). `over_chains` pads the
chains to a multiple of the device count (repeating the last one), gives each device its contiguous share, maps
the function over it there (vmapped, or one chain at a time when memory asks for it) with the parameters
replicated, and returns the results in chain order, padding removed. On one device it is the plain map.

`shard_map` rather than `pmap` (in maintenance since jax 0.8, and a second compilation path) or a `jit` with
shardings (whose partitioner would be free to split a chain's own work across devices, and to move data to do it).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

AXIS = "chains"


def over_chains(fn: Callable[..., Any], *xs, shared: Any = None, batch_size: Optional[int] = None,
                devices: Optional[Sequence[jax.Device]] = None) -> Any:
    """`fn` over the leading chain axis of the pytrees `xs`, the chains split over `devices`.

    Args:
      fn: the measure of one chain, `fn(*x_i)`, or `fn(shared, *x_i)` when `shared` is given.
      xs: pytrees whose leaves all have the leading chain axis `[N, ...]`.
      shared: a pytree every chain reads (the parameters), replicated on every device; pass it here rather
        than closing over it, so that outside `jit` it is an argument and not a constant of the program.
      batch_size: None maps `fn` with `vmap` over a device's chains; otherwise one chain at a time
        (`lax.map`), so that only one chain's intermediates are live (a pretrained vocabulary needs it).
      devices: the devices to split over (default: all of this process's devices; one device: no `shard_map`).

    Returns:
      `fn`'s outputs stacked over the `N` chains, in their order.
    """
    devices = list(jax.local_devices() if devices is None else devices)

    def local(s, *shard):
        each = fn if shared is None else functools.partial(fn, s)
        return jax.vmap(each)(*shard) if batch_size is None else jax.lax.map(lambda x: each(*x), shard)

    if len(devices) == 1:
        return local(shared, *xs)
    n = jax.tree.leaves(xs)[0].shape[0]
    padded_n = -(-n // len(devices)) * len(devices)
    padded = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded_n - n, axis=0)]), xs)
    mesh = Mesh(np.array(devices), (AXIS,))
    # No collectives inside: `check_vma` would have every scan in the per-chain code annotate which of its carries
    # vary over the chains (`lax.pcast`), for nothing to check.
    out = jax.shard_map(local, mesh=mesh, in_specs=(P(),) + (P(AXIS),) * len(xs), out_specs=P(AXIS),
                        check_vma=False)(shared, *padded)
    return jax.tree.map(lambda y: y[:n], out)
