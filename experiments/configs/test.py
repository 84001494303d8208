"""The `test` curriculum: the `test` model preset, a few steps per stage, for tests and smoke runs (seconds)."""

import ml_collections

from experiments.configs import tiny


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.model = "test"
    config.model_overrides = dict(max_seq_len=64, vocab_size=512)  # the shipped tokenizer; room for explanations
    config.workdir = "runs/test"
    config.source_size = 1000
    config.progress_every = 1
    config.data.chain_sum.n_terms = (2, 3)
    config.data.chain_sum.n_terms_weights = ()  # uniform: tiny's weights are for its 2-4 terms
    config.stage1 = tiny.stage(steps=3, mixture=f"{tiny.CHAIN_SUM}:1", loss_segments="prompt,rationale,answer",
                               seq_len=32, batch_size=4, warmup_steps=1, checkpoint_every=2, eval_batches=1)
    config.stage2 = tiny.stage(steps=4, mixture=f"{tiny.CHAIN_SUM}:1", loss_segments="rationale,answer",
                               seq_len=32, batch_size=4, warmup_steps=1, checkpoint_every=2, eval_every=2,
                               eval_batches=1)
    config.stage3 = tiny.stage(steps=3, mixture=f"{tiny.CHAIN_SUM}:0.5:explain,{tiny.SELF_CHAIN_SUM}:0.5",
                               loss_segments="rationale,answer,explanation", seq_len=40, batch_size=4,
                               warmup_steps=1, checkpoint_every=2, eval_batches=1,
                               **tiny.meta_learning(self_problems=8, consistency_teacher_rows=1,
                                                    consistency_max_steps=2))
    config.eval.steps = (1, 2)
    config.eval.per_difficulty = 4
    config.eval.max_new_tokens = 24
    config.eval.batch_size = 4
    return config
