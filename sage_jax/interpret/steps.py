"""Per-step scores of a laid-out chain: the step loss `L_i` and the step entropy `H_i` (paper, Eq. 7).

Which tokens a step owns is the layout's business (`sage_jax.layout.Steps`: a step owns its text, markers
excluded, and is predicted by the positions just before its tokens). Shapes: `n` steps, `T` tokens, `V`
vocabulary; a batch of problems adds a leading axis to `Steps` (`sage_jax.layout.stack_steps`; steps beyond a
problem's count are empty rows whose loss and entropy are 0), and every function here composes with `jax.vmap`
and `jax.jit`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sage_jax.layout import Steps


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`[...]` negative log-likelihood `logsumexp(logits) - logits[target]` of each target under the logits at
    its own position, in float32 at least: the package's one NLL. The training losses pass next-token targets
    (`sage_jax.train.losses.shift_targets`); the analyses score a sequence's own tokens with `sequence_nll`.

    Args:
      logits: `[..., V]` logits.
      targets: `[...]` ids in `[0, V)`.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def sequence_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """`[T]` negative log-likelihood of each token under the logits of the position before it (0 at token 0):
    `token_nll` with the targets a sequence's own next tokens.

    It reads the value off `log_softmax`, the form every analysis was measured with: `logsumexp - logit` equals
    it only to a float32 rounding (about 1e-6), and the analyses' numbers (step losses, log-probability drops)
    are kept bit for bit. The gradients of the two forms are the same expression, `softmax - onehot`.

    Args:
      logits: `[T, V]` next-token logits.
      tokens: `[T]` token ids.
    """
    logp = jax.nn.log_softmax(logits[:-1].astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[1:, None], axis=-1)[:, 0]
    return jnp.concatenate([jnp.zeros((1,), nll.dtype), nll])


def token_entropy(logits: jax.Array) -> jax.Array:
    """`[T]` entropy (nats) of the distribution each token was predicted from (0 at token 0).

    Args:
      logits: `[T, V]` next-token logits.
    """
    logp = jax.nn.log_softmax(logits[:-1].astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.concatenate([jnp.zeros((1,), entropy.dtype), entropy])


def step_losses(logits: jax.Array, tokens: jax.Array, steps: Steps) -> jax.Array:
    """`[n]` `L_i = -log P(s_i | s_<i, x)`: the summed token NLL of each step's tokens."""
    return steps.mask.astype(logits.dtype) @ sequence_nll(logits, tokens)


def step_entropies(logits: jax.Array, steps: Steps) -> jax.Array:
    """`[n]` `H_i`: the mean predictive entropy over each step's tokens (0 for an empty padding step)."""
    weights = steps.mask.astype(logits.dtype)
    count = jnp.sum(weights, axis=-1)
    return (weights @ token_entropy(logits)) / jnp.maximum(count, 1)
