"""What the probe tests share: a tied-embedding, gate-free variant of the `test` preset."""

import sage_jax as sj

TIED = sj.configs.get("test", tie_embeddings=True, reasoning_gate=False)


def tied(params):
    """The fixture's perturbed parameters as those of `TIED`, which lacks the unembedding and the FFN gate (built
    from them rather than initialised: one compile fewer)."""
    ffn = {k: v for k, v in params["layers"]["ffn"].items() if k not in ("gate_w", "gate_b")}
    return {**{k: v for k, v in params.items() if k != "unembed"}, "layers": {**params["layers"], "ffn": ffn}}
