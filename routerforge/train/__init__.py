"""The shared training core: plain functions every `training/train_*.py` recipe calls, top to bottom.

There is no trainer class. A recipe is one readable file (see training/train_mf.py, the reference) that
owns its loop; this package owns the parts that must behave the same in every recipe:

1. Config - `run_config`
   Compose the shared blocks into ONE frozen top-level dataclass (no inheritance)::

       @dataclass(frozen=True)
       class MyConfig:
           run: RunConfig = doc("...", default_factory=RunConfig)          # name, output_dir, seed, epochs,
           optim: OptimConfig = doc("...", default_factory=OptimConfig)     #   micro_batch_size, accumulation,
           tracking: TrackingConfig = doc(...)                              #   mixed_precision
           checkpoint: CheckpointConfig = doc(...)
           export: ExportConfig = doc(...)
           data: MyDataConfig = ...; model: MyModelConfig = ...             # the recipe's own blocks
           resume: str = doc(RESUME_HELP, default="never")

   `cfg = parse_recipe_args(MyConfig, argv)` reads `--config configs/<recipe>/x.yaml key=value ...`; a typo
   or a bad value is a ConfigError naming the key. Override a shared default with
   `default_factory=lambda: OptimConfig(lr=3e-4)`. Run directory: `run_dir_for(cfg.run, "<router>")`.

2. accelerate - `accelerator_setup`
   `accelerator = build_accelerator(cfg.run, cfg.tracking, run_dir)` (mixed precision, gradient
   accumulation, tracker; forms a real multi-process CPU world when there is no GPU and checks it against
   WORLD_SIZE). `seed_for_model_init(seed)` before building the model (same weights on every process),
   `seed_for_training(seed, accelerator)` after (seed + rank). `world_description(accelerator)` for manifests.

3. Tracking - `tracking`
   `start_tracking(accelerator, cfg.tracking, run_dir, name, run_id, config_to_dict(cfg))` -> TrackingRun.
   W&B is offline unless WANDB_API_KEY is set and the host answers. Use one run id per training run: a
   new one (`new_run_id()`, broadcast from rank 0) or, on resume, `TrainerState.tracking_run_id`.
   Log with `accelerator.log(..., step=optimizer_step)`; finish with `finish_tracking(accelerator)` (NOT `accelerator.end_training()`: see its docstring).

4. Data - `data_loading` (and `routerforge.data.pair_tensors`, shared with the models)
   `build_train_loader(dataset, micro_batch_size, seed)` (order = f(seed, epoch); own torch.Generator so the
   global RNG is untouched), `build_eval_loader`; after `accelerator.prepare`, iterate
   `batches_for_epoch(accelerator, loader, epoch, batches_done)` - it skips already-consumed batches on
   resume. Pairwise recipes: `prompt_embedding_matrix(data)` and `pairs_to_tensors(...)` (tie rules).

5. Optimizer - `optimization`
   `build_optimizer(params, cfg.optim)`, `build_lr_scheduler(optimizer, cfg.optim, total_optimizer_steps)`;
   `accelerator.prepare` both, call `scheduler.step()` once per OPTIMIZER step (`accelerator.sync_gradients`).

6. Checkpoints - `checkpointing`
   Before training: `resume_from = resolve_resume(cfg.resume, run_dir)`; after `prepare`:
   `check_resume_compatible(...)` then `state = load_checkpoint(accelerator, resume_from)` (model,
   optimizer, scheduler, every process's RNG, counters) and `normalize_position(state.epoch,
   state.batches_done_in_epoch, len(loader))`. Every N optimizer steps, on every process:
   `save_checkpoint(accelerator, run_dir, TrainerState(...), keep_last)` - atomic (temp dir + COMPLETE with
   the sha256 of every file + rename), keeps the newest `keep_last`; a resume refuses a missing or damaged
   file with `CorruptCheckpointError`. Call `faults.maybe_hang(run_dir, optimizer_step, rank)` after it so
   the reliability tests can stop the recipe at an exact step.

6b. NaN/Inf loss - `nan_guard` (every recipe with gradient steps)
   `guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)` after the resume;
   in the loop `if nan_guard.update_allowed(guard, accelerator, loss, optimizer_step + 1):` around
   backward / clip / optimizer.step (zero_grad stays outside), `skipped = nan_guard.close_optimizer_step(guard)`
   where `accelerator.sync_gradients`, the two counters in TrainerState, and after the checkpoint block
   `if nan_guard.must_stop(guard):` save a checkpoint, `finish_tracking(accelerator)`, raise
   `nan_guard.stop_error(...)` (exit status 3). training/train_mf.py shows all of it.

7. End of run
   `parameter_digests(accelerator, model)` (all processes must agree; a recipe whose model is small enough
   to replicate calls `refuse_sharded_weights(accelerator, RECIPE)` at start-up so FSDP / ZeRO-3 fail
   early), then behind ONE
   `if accelerator.is_main_process:` block: `export_router(export_dir_for(...), state_dict, model_config,
   build_manifest(...))` and print where the export and the tracking run went.
   Wrap the script's entry point with `run_recipe(main)` (user errors -> one line, exit 2).

Loading an export's weights (init from a trained router, inference): `final_export.load_export_weights(dir)` -
safetensors only (a pickle is refused unread, `UnsafeWeightsError`) and checked against manifest.json.

Recipes fitted in one pass (no optimizer loop: training/train_cluster.py, train_knn.py, train_linear.py):
`FitRunConfig` as the run block, `fit_run.start_fit_run(cfg, "<router>")` for run dir, accelerator and tracking,
and, for families that predict every model's score, `score_tables.load_scored_prompts(...)` (a prompt x model
score table over the chosen splits, pairs optionally as win/loss results) and `score_tables.mean_pair_apgr` to
choose hyperparameters on the routing metric.

Hardware: launch/ (accelerate configs, SLURM) and docs/running_at_scale.md.

Tests to copy for a new recipe: tests/recipes/test_train_mf.py (tiny run, export, pool, in-process
resume) and tests/reliability/test_kill_resume_mf.py (SIGKILL + resume=auto, 1 and 2 processes).
"""
