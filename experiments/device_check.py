r"""A device smoke check: does sage_jax compute on this backend what it computes on the CPU?

    python -m experiments.device_check                  # the default backend (Metal with metaljax, a GPU, ...)
    python -m experiments.device_check --preset=tiny --platform=METAL

The check a Mac user runs after installing a Mac profile (`requirements-metal.txt`: jax-metal, or
`requirements-metaljax.txt`: metaljax), and the short check a lent GPU runs. On the `--preset` model (fresh
parameters, key 0), each of these runs on the backend and on the CPU and is compared: a forward with the trace
recorded (logits and attention), greedy decoding (the tokens), the exact significance (Eq. 7) of one chain's
steps, the same forward with int4 weights (`sage_jax.quant`), and one gradient of the loss. Each line says the
largest difference and whether it is within `--atol`; the exit status is 1 when one is not (or the backend is
missing), so a script can gate on it.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import sage_jax as sj
from sage_jax import quant
from sage_jax.interpret.significance import significance
from sage_jax.layout import Steps

_PRESET = flags.DEFINE_string("preset", "test", "Model preset (sage_jax.configs).")
_PLATFORM = flags.DEFINE_string("platform", None, "The backend to check (default: jax's default backend).")
_ATOL = flags.DEFINE_float("atol", 2e-3, "Largest difference from the CPU accepted (float32 on another backend "
                                         "sums in another order; Metal and TF32 GPUs round more).")


def checks(cfg: sj.SageConfig) -> dict:
    """`{name: fn(params) -> array}` of what is compared; each a pure function of the parameters."""
    t = min(cfg.max_seq_len, 24)
    tokens = (jnp.arange(2 * t, dtype=jnp.int32).reshape(2, t) % (cfg.vocab_size - 3)) + 3
    spans = [(4, 8), (9, 14), (15, t - 1)]
    mask = jnp.zeros((len(spans), t), bool)
    for i, (a, b) in enumerate(spans):
        mask = mask.at[i, a:b].set(True)
    steps = Steps(mask, jnp.array([a for a, _ in spans]), jnp.array([b for _, b in spans]))

    def loss(p):
        return jnp.mean(sj.forward(p, tokens, cfg).logits ** 2)

    group = quant.largest_group_sizes(cfg)
    return {
        "forward logits": lambda p: sj.forward(p, tokens, cfg).logits,
        "forward attention": lambda p: sj.forward(p, tokens, cfg, record="attn").trace.attn,
        "greedy decoding": lambda p: sj.generate(p, cfg, tokens[:, :6], max_new_tokens=8, eos_id=0).tokens,
        "exact significance": lambda p: significance(p, cfg, tokens[0], steps).score,
        "int4 forward logits": lambda p: sj.forward(quant.quantize(p, cfg, group_size=group), tokens, cfg).logits,
        "gradient of a loss": lambda p: jax.grad(loss)(p)["layers"]["attn"]["q"]["kernel"],
    }


def main(argv):
    del argv
    try:
        device = jax.devices(_PLATFORM.value)[0] if _PLATFORM.value else jax.devices()[0]
    except RuntimeError as err:
        sys.exit(f"backend {_PLATFORM.value!r} is not available ({err}); installed: jax {jax.__version__}, "
                 f"devices {jax.devices()}")
    cpu = jax.devices("cpu")[0]
    cfg = sj.configs.get(_PRESET.value)
    print(f"jax {jax.__version__}; checking {device.platform} ({device.device_kind}) against {cpu.platform}, "
          f"preset {cfg.name!r}")
    params = sj.init_params(cfg, jax.random.key(0))
    failed = []
    for name, fn in checks(cfg).items():
        start = time.perf_counter()
        with jax.default_device(device):
            got = np.asarray(fn(jax.device_put(params, device)))
        with jax.default_device(cpu):
            want = np.asarray(fn(jax.device_put(params, cpu)))
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
        ok = got.shape == want.shape and diff <= _ATOL.value
        failed += [] if ok else [name]
        print(f"{'ok  ' if ok else 'FAIL'} {name}: shape {got.shape}, max |diff| {diff:.2e} "
              f"({time.perf_counter() - start:.1f} s)")
    print("all checks passed" if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    app.run(main)
