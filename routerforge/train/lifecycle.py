"""One run lifecycle for every recipe: start (accelerator, run dir, resume, tracking), step bookkeeping, export tail.

A recipe keeps its own loop; what must behave the same in every recipe lives here, once:

    ctx = start_run(cfg, RECIPE, REPO_DIR)                  # accelerator, run dir, resume state, tracking id
    position, state = ctx.resume(data_fingerprint, batches_per_epoch)   # after accelerator.prepare
    guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)
    ...  loop:  ctx.end_optimizer_step(step, guard, save_checkpoint, progress)   # checkpoint, fault hook, NaN stop
    if ctx.accelerator.is_main_process:
        ctx.export(weights, model_config, ...)            # manifest, atomic export, registry, where it went
    ctx.finish()

`RunContext` is frozen: what a run IS (its accelerator, directories, tracking run, where it resumes from). The
loop's counters stay the recipe's own variables and are passed in as a `Position` when a checkpoint is written.
Recipes fitted in one pass (cluster, kNN, linear) use the same start and export with `resumable=False`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from routerforge.config import config_to_dict
from routerforge.train import checkpointing, faults, nan_guard
from routerforge.train.accelerator_setup import (
    build_accelerator,
    peak_accelerator_memory_bytes,
    world_description,
)
from routerforge.train.data_loading import normalize_position
from routerforge.train.early_stopping import EarlyStopping
from routerforge.train.final_export import build_manifest, export_router
from routerforge.train.run_config import RunConfig, export_dir_for, run_dir_for
from routerforge.train.tracking import TrackingRun, finish_tracking, new_run_id, start_tracking

NO_ENCODER = {"id": None, "revision": None, "dim": None}  # routers that read raw text (a policy LM)


@dataclass(frozen=True)
class Position:
    """Where the loop stands: optimizer steps done, the epoch of the next micro-batch, micro-batches done in it."""

    optimizer_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0


@dataclass(frozen=True)
class LoopOutcome:
    """What a recipe's training loop hands to its export section."""

    model: torch.nn.Module  # as prepared (wrapped for data parallelism on several processes)
    optimizer_step: int
    total_optimizer_steps: int
    steps_per_epoch: int
    last_train_loss: float
    history: list[dict]  # logged training losses, one entry per log step
    skipped_nonfinite_steps: int
    throughput: dict  # RunContext.throughput
    eval_history: list[dict] = field(default_factory=list)
    stopper: EarlyStopping | None = None
    best_state: dict[str, torch.Tensor] | None = None  # the best evaluation's weights (run.keep_best)


@dataclass(frozen=True)
class RunContext:
    recipe: str
    cfg: object  # the recipe's parsed (frozen) config
    run: RunConfig
    run_dir: Path
    export_dir: Path
    repo_dir: Path  # the recipe's checkout: its git revision goes into the manifest
    accelerator: Accelerator
    tracking: TrackingRun
    tracking_run_id: str
    resolved_config: dict
    resume_from: Path | None  # the step checkpoint this run continues; None: a new run
    resumed_state: checkpointing.TrainerState | None  # its trainer_state.json (read before `prepare`)
    resumable: bool  # False: fitted in one pass, no step checkpoints

    # -- resume and step checkpoints -----------------------------------------------------------------
    def resume(self, data_fingerprint: str, batches_per_epoch: int | None = None,
               step_name: str = "optimizer step") -> tuple[Position, checkpointing.TrainerState | None]:
        """After `accelerator.prepare`: check the checkpoint fits this run, load model/optimizer/scheduler/RNG
        state and return the position to continue from (position 0 and None for a new run).

        batches_per_epoch None: the step alone is the position (Router-R1 draws its tasks per step)."""
        if self.resume_from is None:
            return Position(), None
        run = self.run
        checkpointing.check_resume_compatible(
            self.resumed_state, recipe=self.recipe, world_size=self.accelerator.num_processes,
            micro_batch_size=run.micro_batch_size, gradient_accumulation_steps=run.gradient_accumulation_steps,
            data_fingerprint=data_fingerprint, where=self.resume_from)
        state = checkpointing.load_checkpoint(self.accelerator, self.resume_from)
        if batches_per_epoch is None:
            self.accelerator.print(f"resumed from {self.resume_from} ({step_name} {state.optimizer_step})")
            return Position(state.optimizer_step), state
        epoch, batches_done = normalize_position(state.epoch, state.batches_done_in_epoch, batches_per_epoch)
        self.accelerator.print(f"resumed from {self.resume_from} ({step_name} {state.optimizer_step}, epoch {epoch}, "
                               f"micro-batch {batches_done})")
        return Position(state.optimizer_step, epoch, batches_done), state

    def early_stopper(self, stop_metric: str | None, state: checkpointing.TrainerState | None) -> EarlyStopping | None:
        """The run's early stopping (restored from a resumed checkpoint); None when nothing is evaluated."""
        run = self.run
        if not (stop_metric and run.eval_every_optimizer_steps):
            return None
        return EarlyStopping.resumed(state.early_stopping if state else None, stop_metric,
                                     run.early_stopping_patience_evals, run.early_stopping_min_delta)

    def trainer_state(self, position: Position, data_fingerprint: str, guard: nan_guard.NonFiniteGuard,
                      stopper: EarlyStopping | None = None) -> checkpointing.TrainerState:
        """What a step checkpoint records next to the weights (trainer_state.json)."""
        run = self.run
        return checkpointing.TrainerState(
            recipe=self.recipe, optimizer_step=position.optimizer_step, epoch=position.epoch,
            batches_done_in_epoch=position.batches_done_in_epoch, world_size=self.accelerator.num_processes,
            micro_batch_size=run.micro_batch_size, gradient_accumulation_steps=run.gradient_accumulation_steps,
            data_fingerprint=data_fingerprint, tracking_run_id=self.tracking_run_id, seed=run.seed,
            skipped_nonfinite_steps=guard.skipped_steps, consecutive_nonfinite_steps=guard.consecutive_skipped_steps,
            early_stopping=stopper.to_dict() if stopper else None)

    def save_checkpoint(self, state: checkpointing.TrainerState,
                        extra_files: Callable[[Path], None] | None = None) -> Path:
        """An atomic step checkpoint on every process (checkpointing.save_checkpoint), keeping checkpoint.keep_last."""
        return checkpointing.save_checkpoint(self.accelerator, self.run_dir, state,
                                             keep_last=self.cfg.checkpoint.keep_last, extra_files=extra_files)

    def end_optimizer_step(self, optimizer_step: int, guard: nan_guard.NonFiniteGuard,
                           save_checkpoint: Callable[[], Path], progress=None) -> None:
        """After each optimizer step, on every process: a step checkpoint every checkpoint.every_optimizer_steps,
        the reliability tests' fault hook, and the NaN/Inf stop (a last checkpoint, then exit status 3)."""
        every = self.cfg.checkpoint.every_optimizer_steps
        if every and optimizer_step % every == 0:
            save_checkpoint()
        faults.maybe_hang(self.run_dir, optimizer_step, self.accelerator.process_index)
        self.stop_if_diverged(guard, optimizer_step, save_checkpoint, progress)

    def stop_if_diverged(self, guard: nan_guard.NonFiniteGuard, optimizer_step: int,
                         save_checkpoint: Callable[[], Path], progress=None) -> None:
        """Too many non-finite steps in a row: keep the last good weights in a checkpoint and stop (exit status 3)."""
        if not nan_guard.must_stop(guard):
            return
        saved = save_checkpoint()
        if progress is not None:
            progress.close()
        finish_tracking(self.accelerator)
        raise nan_guard.stop_error(guard, optimizer_step, saved)

    # -- end of the run --------------------------------------------------------------------------------
    def throughput(self, samples_seen: int, loop_seconds: float) -> dict:
        """Training samples over every process, the loop's wall time and rate, the accelerator's peak memory."""
        total = int(self.accelerator.reduce(torch.tensor(samples_seen, device=self.accelerator.device),
                                            reduction="sum").item())
        return {"train_samples": total, "train_loop_seconds": loop_seconds,
                "train_samples_per_second": total / loop_seconds if loop_seconds > 0 else float("nan"),
                "peak_accelerator_memory_bytes": peak_accelerator_memory_bytes()}

    def export(self, weights: dict[str, torch.Tensor], model_config: dict, *, model_pool: list[str], encoder: dict,
               data: dict, training: dict, metrics: dict, register: Callable[..., Path | None],
               router_type: str | None = None, extra_files: Callable[[Path], None] | None = None) -> Path:
        """MAIN PROCESS ONLY (call it inside the recipe's `if accelerator.is_main_process:`): build the manifest,
        write the export atomically (export.export_router), register it, and print where it and the run went.

        `training` gets the world description (processes, devices, distributed type) in front. `register` is
        routerforge.registry.register.register_run_export, passed in by the recipe: the registry sits above this
        package (it reads exports; training writes them), so the training core does not import it."""
        manifest = build_manifest(
            recipe=self.recipe, router_type=router_type or self.recipe, resolved_config=self.resolved_config,
            model_pool=model_pool, encoder=encoder, repo_dir=self.repo_dir, tracking=self.tracking.to_dict(),
            data=data, training={**world_description(self.accelerator), **training}, metrics=metrics)
        export_router(self.export_dir, weights, model_config, manifest, extra_files=extra_files)
        registered = register(self.cfg.export, self.export_dir, self.run.output_dir)
        if registered is not None:
            print(f"registered checkpoint: {registered}")
        print(f"checkpoint: {self.export_dir}")
        if self.resumable:
            print(f"step checkpoints: {self.run_dir}")
        print(self.tracking.describe(), flush=True)
        return self.export_dir

    def result(self, **facts) -> dict:
        """What main() returns: where the export, the run and the tracking went, plus the recipe's `facts`."""
        return {"export_dir": str(self.export_dir), "run_dir": str(self.run_dir), "tracking": self.tracking.to_dict(),
                **facts}

    def finish(self) -> None:
        """Every process: end tracking (tracking.finish_tracking, not accelerator.end_training: see its docstring)."""
        finish_tracking(self.accelerator)


def dataset_facts(data) -> dict:
    """The manifest's `data` entries every recipe on a prepared dataset records: path, name, version, fingerprint."""
    return {"path": str(data.path), "name": data.manifest.get("name"), "version": data.manifest.get("version"),
            "fingerprint": data.fingerprint}


def start_run(cfg, recipe: str, repo_dir: Path, *, resumable: bool = True,
              check_accelerator: Callable[[Accelerator], None] | None = None) -> RunContext:
    """Start a run of `recipe` from its parsed config `cfg` (blocks run, tracking, export; with `resumable`, also
    checkpoint and the `resume` field).

    Builds the accelerator (run.mixed_precision, gradient accumulation, tracker), calls `check_accelerator`
    (a recipe's refusal of a distributed setup it cannot train under, before anything is written), resolves
    `resume`, and starts tracking under ONE run id for the whole training run: a resumed run continues the id in
    its checkpoint, a new run draws one on the main process and broadcasts it so every process logs under it.
    A run fitted in one pass (`resumable=False`; its run block is a FitRunConfig) is new every time.
    """
    run = cfg.run if resumable else cfg.run.as_run_config()
    run_dir = run_dir_for(run, recipe)
    accelerator = build_accelerator(run, cfg.tracking, run_dir)
    if check_accelerator is not None:
        check_accelerator(accelerator)
    resume_from = checkpointing.resolve_resume(cfg.resume, run_dir) if resumable else None
    resumed_state = checkpointing.TrainerState.read(resume_from) if resume_from else None
    run_id_box = [resumed_state.tracking_run_id if resumed_state and resumed_state.tracking_run_id else new_run_id()]
    broadcast_object_list(run_id_box)
    resolved_config = config_to_dict(cfg)
    tracking = start_tracking(accelerator, cfg.tracking, run_dir, run.name, run_id_box[0], resolved_config)
    return RunContext(recipe=recipe, cfg=cfg, run=run, run_dir=run_dir,
                      export_dir=export_dir_for(run, cfg.export, recipe), repo_dir=repo_dir, accelerator=accelerator,
                      tracking=tracking, tracking_run_id=run_id_box[0], resolved_config=resolved_config,
                      resume_from=resume_from, resumed_state=resumed_state, resumable=resumable)


def context_for_trainer(cfg, recipe: str, repo_dir: Path, accelerator: Accelerator, tracking: TrackingRun,
                        resume_from: Path | None) -> RunContext:
    """The context of a run whose trainer (TRL's GRPOTrainer) built the accelerator and owns tracking and its own
    checkpoints: what the shared export tail (`RunContext.export`, `result`) needs."""
    run = cfg.run
    return RunContext(recipe=recipe, cfg=cfg, run=run, run_dir=run_dir_for(run, recipe),
                      export_dir=export_dir_for(run, cfg.export, recipe), repo_dir=repo_dir, accelerator=accelerator,
                      tracking=tracking, tracking_run_id=tracking.run_id, resolved_config=config_to_dict(cfg),
                      resume_from=resume_from, resumed_state=None, resumable=True)
