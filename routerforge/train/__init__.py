"""The shared training core: plain functions and one run lifecycle that every `training/train_*.py` recipe uses.

There is no trainer class. A recipe is one readable file (training/train_mf.py is the reference) that owns
its loop, in numbered sections; `main()` at its end calls them in order and fits on a screen. What must behave
the same in every recipe is written once, here.

The run lifecycle - `lifecycle` (every recipe: MF, difficulty, probe, Router-R1 PPO; cluster, kNN and linear
with `resumable=False`)::

    cfg = parse_recipe_args(MyConfig, argv)                    # 1. config (below)
    ctx = start_run(cfg, RECIPE, REPO_DIR)                     # 2. accelerator, run dir, resume state, one
                                                               #    tracking run id broadcast to every process
    ...                                                        # 3-5. data, model, optimizer (the recipe's)
    position, state = ctx.resume(data.fingerprint, batches_per_epoch)   # 6. after accelerator.prepare
    guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)
    stopper = ctx.early_stopper(stop_metric, state)            #    None when nothing is evaluated
    def save_step_checkpoint():
        return ctx.save_checkpoint(ctx.trainer_state(Position(step, epoch, batches_done), fingerprint, guard, stopper))
    while ...:                                                 # 7. the recipe's own loop
        ...
        ctx.end_optimizer_step(step, guard, save_step_checkpoint, progress)   # checkpoint every N, fault hook,
                                                                               # NaN/Inf stop (exit status 3)
    digests = agreed_parameter_digests(accelerator, model)    # 8. every process holds the same weights
    result = ctx.result(optimizer_steps=step, ...)
    if ctx.accelerator.is_main_process:                       #    the ONE rank-0 guard
        ctx.export(weights, model_config, model_pool=..., encoder=..., data={**dataset_facts(data), ...},
                   training={...}, metrics={...}, register=register_run_export)   # manifest, atomic write, registry
    ctx.finish()                                              #    end tracking on every process
    return result

`RunContext` is frozen (what the run is); the loop's counters stay the recipe's variables. `LoopOutcome`
carries what a loop hands to its export section. `check_accelerator=` refuses a launch a recipe cannot train
under before anything is written (`consistency.refuse_sharded_weights` for models small enough to replicate).
Router-R1 GRPO runs inside TRL's trainer, which owns accelerator, tracking and checkpoints; it joins the
lifecycle at its export through `context_for_trainer`.

The parts the lifecycle and the recipes call:

1. Config - `run_config`: compose the shared blocks into ONE frozen top-level dataclass (no inheritance)::

       @dataclass(frozen=True)
       class MyConfig:
           run: RunConfig = doc("...", default_factory=RunConfig)          # name, output_dir, seed, epochs,
           optim: OptimConfig = doc("...", default_factory=OptimConfig)     #   micro_batch_size, accumulation,
           tracking: TrackingConfig = doc(...)                              #   mixed_precision
           checkpoint: CheckpointConfig = doc(...)
           export: ExportConfig = doc(...)
           data: MyDataConfig = ...; model: MyModelConfig = ...             # the recipe's own blocks
           resume: str = doc(RESUME_HELP, default="never")

   `parse_recipe_args(MyConfig, argv)` reads `--config configs/<recipe>/x.yaml key=value ...`; a typo or a bad
   value is a ConfigError naming the key; a key listed in the class's `RETIRED_KEYS` says where it went. A recipe
   fitted in one pass takes `FitRunConfig` as its run block and no checkpoint/resume.
2. accelerate - `accelerator_setup`: `seed_for_model_init(seed)` before building the model (same weights on every
   process), `seed_for_training(seed, accelerator)` after (seed + rank). `build_accelerator` is start_run's.
3. Tracking - `tracking`: W&B is offline unless WANDB_API_KEY is set and the host answers; log with
   `accelerator.log(..., step=optimizer_step)`; runs end with `finish_tracking` (ctx.finish), NOT
   `accelerator.end_training()` (see its docstring).
4. Data - `data_loading` (`build_train_loader`: order = f(seed, epoch); `batches_for_epoch` skips the batches a
   resumed run already consumed), `tensor_batches`, `routerforge.data.pair_tensors`, `score_tables`
   (prompt x model score tables and `mean_pair_apgr` for the fit-once recipes).
5. Optimizer - `optimization` (`build_optimizer`, `build_lr_scheduler`: step it once per OPTIMIZER step);
   `run_plan.optimizer_steps_for(cfg.run, batches_per_epoch)` and `announce_plan` / `EtaReporter`.
6. Checkpoints - `checkpointing`: atomic step checkpoints (temp dir + COMPLETE with every file's sha256 +
   rename), newest `checkpoint.keep_last` kept; a resume refuses a damaged file (`CorruptCheckpointError`) or a
   run of another shape. `faults.maybe_hang` lets the reliability tests stop a run at an exact step.
6b. NaN/Inf loss - `nan_guard`: in the loop `if nan_guard.update_allowed(guard, accelerator, loss, step + 1):`
   around backward / clip / optimizer.step (zero_grad stays outside), `nan_guard.close_optimizer_step(guard)`
   where the optimizer step closes; ctx.end_optimizer_step stops the run after too many in a row.
7. Early stopping - `early_stopping` (best weights kept in every checkpoint, `stop_message`).
8. End of run - `consistency.agreed_parameter_digests` (all processes must agree), `final_export` (safetensors +
   config.json + manifest.json written atomically; `routerforge.io.safetensors_file.load_export_weights`
   reads an export back, safetensors only).
   Wrap the script's entry point with `entrypoint.run_recipe(main)` (user errors -> one line, exit 2).

Inference-side loading of exports lives outside this package (routerforge/router.py and routerforge/registry).
Hardware: launch/ (accelerate configs, SLURM) and docs/running_at_scale.md.

Tests to copy for a new recipe: tests/recipes/test_train_mf.py (tiny run, export, pool, in-process
resume) and tests/reliability/test_kill_resume_mf.py (SIGKILL + resume=auto, 1 and 2 processes).
"""
