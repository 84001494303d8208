"""The small run the notebooks fall back to when no trained run is there: the `test` model preset on chained
sums of 2-3 one-digit terms, about a minute on 2 CPU cores (`experiments/notebook_run.py` trains it on first use).

    python -m experiments.train --config=experiments/configs/notebook.py     # train it ahead, into runs/notebook

Stage 1 models all text of the chains, stage 2 only the chain and answer, stage 3 adds rendered explanations; a
64-token context holds a 3-term chain with its explanation.
"""

import ml_collections

from experiments.configs import tiny


def _stage(steps: int, **fields) -> ml_collections.ConfigDict:
    return tiny.stage(steps=steps, warmup_steps=max(1, min(20, steps // 10)), checkpoint_every=0, eval_batches=1,
                      keep=1, **fields)


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.model = "test"
    config.model_overrides = dict(vocab_size=512, max_seq_len=64)  # the shipped tokenizer
    config.workdir = "runs/notebook"
    config.source_size = 10_000
    config.measured_gemm_flops = None  # tiny's is the dev machine's; MFU stays against the theoretical peak
    config.progress_every = 400
    config.data.chain_sum.n_terms = (2, 3)
    config.data.chain_sum.n_terms_weights = ()  # uniform: tiny's weights are for its 2-4 terms
    config.stage1 = _stage(150, mixture=f"{tiny.CHAIN_SUM}:1", loss_segments="prompt,rationale,answer", seq_len=32,
                           batch_size=16, peak_lr=1e-2)
    config.stage2 = _stage(400, mixture=f"{tiny.CHAIN_SUM}:1", loss_segments="rationale,answer", seq_len=32,
                           batch_size=16, peak_lr=5e-3)
    config.stage3 = _stage(60, mixture=f"{tiny.CHAIN_SUM}:1:explain", loss_segments="rationale,answer,explanation",
                           seq_len=64, batch_size=8, peak_lr=1e-3)
    config.eval.steps = (1, 2)
    config.eval.per_difficulty = 20
    config.eval.max_new_tokens = 24
    config.eval.batch_size = 20
    return config
