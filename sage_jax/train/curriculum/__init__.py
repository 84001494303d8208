"""The three-stage curriculum: stage 1 pretraining, stage 2 chain-of-thought fine-tuning, stage 3 meta-learning.

Each stage is one `StageConfig`: its own data mixture (whose `loss_segments` choose the target tokens, see
`sage_jax.train.step`), sequence length, batch size, optimizer schedule and loss weights, and its own directory
`<workdir>/stage<N>/` holding `ckpt/` (orbax checkpoints) and `logs/` (`metrics.jsonl` + TensorBoard events).

- Stage 1 starts from a fresh initialisation (`CurriculumConfig.seed`); every later stage starts from the
  *final* parameters of the stage before it in `CurriculumConfig.stages`, with a fresh optimizer state, step 0
  and its own PRNG key. A stage whose predecessor has not finished is an error, never a silent fresh start.
- Resume is automatic: `run_stage` restores the newest checkpoint of its stage that restores (model, optimizer,
  step, PRNG key and the grain iterator's position together) and continues from there; a finished stage is
  not run again. Batches are a pure function of the iterator position, so an interrupted and resumed stage
  is bitwise the run that was never interrupted (tested).
- Stage 3 trains on explanations from three kinds of source, mixed by weight in its mixture: rendered from the
  true dependencies of procedural problems (`procedural/<task>:w:explain`), rendered from the exact analysis that
  the model the stage starts from makes of its training problems (`self/<task>:w`, `sage_jax.train.targets`;
  the rendered pool is cached as `<stage dir>/targets/self_<task>[_heldout].jsonl`), and user-supplied annotated
  explanations (`StageConfig.targets.annotated_path`, JSONL, `sage_jax.data.annotated`).
- The Inverse Analysis Layer trains jointly where a stage sets `inverse_optim` (stage 3 by default): its params
  are `TrainState.inverse`, created when the stage starts unless the previous stage's state has them, and the
  consistency loss defaults to `sage_jax.train.consistency.IALConsistency` (weight
  `StageConfig.loss.lambda_consistency`). `run_stage(consistency=fn)` replaces it with any
  `fn(params, batch, out, key) -> scalar`. A positive weight with neither an IAL nor a function is an error (the
  run would not train what its config says).
- Evaluation during training (every `eval_every` steps and at the end of a stage): teacher-forced loss, token
  accuracy and the meta head's calibration error on held-out batches of the stage's own mixture (a pipeline
  with another seed), logged as `eval/...` beside the training metrics. A stage trains in pieces between
  evaluation points (`sage_jax.train.loop.train` per piece), and each piece ends with a checkpoint.
- Metrics are appended to `logs/metrics.jsonl`; a run that crashed after its last checkpoint logs the steps
  since that checkpoint again when resumed (same values, as resume is exact): keep the last row per step.

Modules, one concern each (`sage_jax.train` re-exports what a run needs):

- `config`: `CurriculumConfig`, `StageConfig`, `TargetsConfig`, the frozen configs and their validation.
- `parse`: `curriculum_from_dict` and `parse_mixture`, from ml_collections mappings and mixture text to configs.
- `data`: `build_sources` and `stage_pipeline`, a stage's training and held-out batches, including the `self/`
  and `annotated/` explanation sources.
- `handoff`: `initial_state` and `final_state`, the state a stage starts from and the one it leaves to the
  next (`StageOrderError` when that one is missing).
- `stages`: `run_stage` and `run_curriculum`, training a stage in pieces between held-out evaluations
  (`HeldOutEvaluator`), with resume.
"""
