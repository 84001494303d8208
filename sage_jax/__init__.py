"""sage_jax: SAGE-nano in JAX/Flax, with traceable, editable attention.

The public surface:

- `SageConfig`, `configs.get(name)`: static configuration and presets.
- `init_params(cfg, key)`, `forward(params, tokens, cfg, *, edits, record)`: the pure functional core.
- `generate(params, cfg, prompt, *, max_new_tokens, ...)`: KV-cache decoding, plain or tracked.
- `Trace`, `Edits`, `Record`: what a forward pass recorded, what to change, what to record.
"""

from sage_jax import configs
from sage_jax.config import ConfigError, SageConfig
from sage_jax.decode import GenerateOutput, generate
from sage_jax.model import ForwardOutput, forward, init_params, param_count, param_shapes
from sage_jax.trace import Edits, Record, Trace

__all__ = ["ConfigError", "Edits", "ForwardOutput", "GenerateOutput", "Record", "SageConfig", "Trace", "configs",
           "forward", "generate", "init_params", "param_count", "param_shapes"]
