"""The standard probes of a transformer, each a pure function over a `Trace` (and the weights it needs).

- `lens`: the logit lens, the residual stream decoded at every layer through the final norm and unembedding;
- `decompose`: the residual stream as a sum of its writers (embedding, each head, each FFN) and their direct
  logit attribution, which sums to the logit;
- `detectors`: head scores from attention patterns: previous-token, duplicate-token, induction, and the
  receiver heads of Thought Anchors (heads whose attention concentrates on a few earlier steps);
- `patching`: attribution patching, the first-order estimate of activation patching for every head and position
  at once from one forward and one backward, and the real patching it estimates.
"""

from sage_jax.probes import decompose, detectors, lens, patching
from sage_jax.probes.decompose import direct_logit_attribution, residual_decomposition
from sage_jax.probes.detectors import detect_heads
from sage_jax.probes.lens import logit_lens
from sage_jax.probes.patching import activation_patching, attribution_patching

__all__ = ["activation_patching", "attribution_patching", "decompose", "detect_heads", "detectors",
           "direct_logit_attribution", "lens", "logit_lens", "patching", "residual_decomposition"]
