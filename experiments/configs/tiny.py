r"""The `tiny` curriculum on offline procedural data: what `make demo` trains on 2 CPU cores in minutes.

    python -m experiments.train --config=experiments/configs/tiny.py --config.stage2.steps=1200

Tasks and budget follow DESIGN.md's learnability numbers: chained sums of 2-4 one-digit terms (1-3 rationale
steps) written as a chain of thought, which a model of this size learns in minutes; named-variable chains
learn far slower, so they are left out of the default. Short rows (40 tokens hold every 4-term chain, 104 a
4-term chain with its stage-3 explanation) make a step several times cheaper than the preset's 256-token
context. Stage 3 sees every chain length (a shorter row that dropped the 3-step chains made the model forget
them) at a lower learning rate, so that learning to explain does not undo stage 2.
"""

import ml_collections

CHAIN_SUM = "procedural/chain_sum"


def stage(**fields) -> ml_collections.ConfigDict:
    """One stage section with the defaults every stage shares."""
    defaults = dict(peak_lr=3e-3, warmup_steps=20, end_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
                    weight_decay=0.1, max_grad_norm=1.0, microbatches=1, lambda_explanation=1.0, lambda_meta=0.1,
                    consistency_weight=0.0, checkpoint_every=100, eval_every=0, eval_batches=4, keep=2)
    return ml_collections.ConfigDict({**defaults, **fields})


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "tiny"
    config.workdir = "runs/tiny"
    config.seed = 0
    config.source_size = 100_000
    config.peak_flops = 1.9e11  # this machine's measured XLA f32 GEMM peak (DESIGN.md), for MFU
    config.progress_every = 25
    config.data = ml_collections.ConfigDict(dict(
        chain_sum=dict(n_terms=(2, 4), max_value=(9, 9)),
        variable_chain=dict(n_steps=(2, 3), n_distractors=(0, 2), max_value=(9, 9)),
        max_steps=16))
    # Stage 1: language modelling on all text of the chains (prompt included).
    config.stage1 = stage(steps=150, mixture=f"{CHAIN_SUM}:1", loss_segments="prompt,rationale,answer",
                          seq_len=40, batch_size=16)
    # Stage 2: chain-of-thought fine-tuning, loss on rationale and answer only.
    config.stage2 = stage(steps=900, mixture=f"{CHAIN_SUM}:1", loss_segments="rationale,answer",
                          seq_len=40, batch_size=16, peak_lr=2e-3, warmup_steps=20)
    # Stage 3: explanations rendered from the true dependencies, loss on them as well.
    config.stage3 = stage(steps=150, mixture=f"{CHAIN_SUM}:1:explain", loss_segments="rationale,answer,explanation",
                          seq_len=104, batch_size=8, peak_lr=5e-4, warmup_steps=10, eval_batches=8)
    config.eval = ml_collections.ConfigDict(dict(
        procedural="chain_sum", steps=(1, 2, 3, 4), per_difficulty=100, max_new_tokens=40, batch_size=50,
        gym_tasks="", gym_size=50, seed=7))
    return config
