"""Train RouteLLM's matrix-factorization router on preference pairs.

    accelerate launch training/train_mf.py --config configs/mf/default.yaml [key=value ...]
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml training/train_mf.py --config configs/mf/tiny.yaml
    accelerate launch --config_file launch/accelerate/single_gpu.yaml training/train_mf.py --config configs/mf/default.yaml
    ... resume=auto                                   # continue the run from its newest complete checkpoint
    ... init.from_export=checkpoints/mf/base/final init.train_only_new_models=true   # add models to a trained router

Model (Ong et al. 2024, RouteLLM, section 4.1): δ(m, q) = w · (v_m/‖v_m‖ ⊙ W q), trained with BCE on
δ(a, q) − δ(b, q) against the human vote, weighted by each pair's source weight. Ties are dropped
(RouteLLM) or trained toward 0.5 (`loss.ties=half`). The model pool is the dataset's (its manifest's
`models`), in that order; any number of models.

Reads top to bottom:
  1. config   2. accelerate, seeds, run dir, tracking   3. data   4. model   5. optimizer + schedule
  6. resume   7. training loop (log, evaluate, checkpoint)   8. final evaluation and export (main process)

Exit status: 0 trained and exported; 2 a user error (one line: config, data, checkpoint, unsafe weights);
3 stopped after run.max_consecutive_nonfinite_steps NaN/Inf steps, with a checkpoint to resume from
(docs/running_at_scale.md). Launch files and the recipe x hardware matrix: launch/README.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from routerforge.config import config_to_dict, doc
from routerforge.data.dataset_io import load_prepared
from routerforge.data.pair_tensors import TIE_RULES, PairTensors, pairs_to_tensors, prompt_embedding_matrix
from routerforge.errors import CheckpointError, DataError
from routerforge.io.safetensors_file import load_export_weights
from routerforge.models.mf import MFModel, extend_model_pool, freeze_all_but_new_models, new_model_l2_penalty
from routerforge.registry.register import register_run_export
from routerforge.train import checkpointing, early_stopping, faults, nan_guard
from routerforge.train.accelerator_setup import (
    build_accelerator,
    peak_accelerator_memory_bytes,
    seed_for_model_init,
    seed_for_training,
    world_description,
)
from routerforge.train.consistency import parameter_digests, refuse_sharded_weights
from routerforge.train.data_loading import normalize_position
from routerforge.train.entrypoint import run_recipe
from routerforge.train.final_export import CONFIG_FILE, build_manifest, export_router
from routerforge.train.optimization import build_lr_scheduler, build_optimizer, warmup_steps_for
from routerforge.train.run_config import (
    RESUME_HELP,
    CheckpointConfig,
    ExportConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    export_dir_for,
    parse_recipe_args,
    run_dir_for,
)
from routerforge.train.run_plan import EtaReporter, announce_plan
from routerforge.train.tensor_batches import TensorBatches
from routerforge.train.tracking import finish_tracking, new_run_id, start_tracking

RECIPE = "mf"
REPO_DIR = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# 1. Config: shared blocks (run, optim, tracking, checkpoint, export) + this recipe's data/model/loss/init
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MFDataConfig:
    path: str = doc("prepared dataset: a version directory, or its parent holding LATEST (path)",
                    default="data/processed/demo")
    train_split: str = doc("split of the pairs table to train on", default="train")
    eval_split: str = doc("split to evaluate on (loss, accuracy); empty string: none", default="validation")


@dataclass(frozen=True)
class MFModelConfig:
    model_embedding_dim: int = doc("dimension of the model embeddings v_m (RouteLLM: 128)", default=128)
    use_projection: bool = doc("project the prompt embedding with W (RouteLLM: true); false needs "
                               "model_embedding_dim == the encoder's dim", default=True)
    prompt_noise_std: float = doc("std of the Gaussian noise added to prompt embeddings in training "
                                  "(embedding units; RouteLLM: 0.1)", default=0.1)

    def __post_init__(self) -> None:
        if self.model_embedding_dim < 1:
            raise ValueError(f"model.model_embedding_dim must be >= 1, got {self.model_embedding_dim}")
        if self.prompt_noise_std < 0:
            raise ValueError(f"model.prompt_noise_std must be >= 0, got {self.prompt_noise_std}")


@dataclass(frozen=True)
class MFLossConfig:
    ties: str = doc("tie rule: " + "; ".join(f"{k}: {v}" for k, v in TIE_RULES.items()), default="drop")
    use_source_weights: bool = doc("weight each pair's loss by its `weight` column (the source's weight)",
                                   default=True)

    def __post_init__(self) -> None:
        if self.ties not in TIE_RULES:
            raise ValueError(f"loss.ties must be one of {', '.join(TIE_RULES)}, got '{self.ties}'")


@dataclass(frozen=True)
class MFInitConfig:
    from_export: str | None = doc("start from an exported MF router (its directory): its architecture replaces "
                                  "model.model_embedding_dim/use_projection, and models of the data missing "
                                  "from its pool are appended", default=None)
    train_only_new_models: bool = doc("with from_export: train only the embeddings of the appended models; "
                                      "W, w and the existing embeddings stay frozen", default=False)

    def __post_init__(self) -> None:
        if self.train_only_new_models and not self.from_export:
            raise ValueError("init.train_only_new_models needs init.from_export (the router to add models to)")


@dataclass(frozen=True)
class MFConfig:
    run: RunConfig = doc("run name, output dir, seed, length, batch geometry (RouteLLM: batch 64, 100 epochs)",
                         default_factory=lambda: RunConfig(epochs=100, micro_batch_size=64))
    data: MFDataConfig = doc("prepared dataset", default_factory=MFDataConfig)
    model: MFModelConfig = doc("MF architecture", default_factory=MFModelConfig)
    loss: MFLossConfig = doc("pairwise loss", default_factory=MFLossConfig)
    init: MFInitConfig = doc("initialisation from an exported router", default_factory=MFInitConfig)
    optim: OptimConfig = doc("optimizer (RouteLLM: Adam, lr 3e-4, weight decay 1e-5)",
                             default_factory=lambda: OptimConfig(name="adam", lr=3e-4, weight_decay=1e-5))
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = doc("step checkpoints", default_factory=CheckpointConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)
    resume: str = doc(RESUME_HELP, default="never")


def load_base_router(export_dir: Path, encoder: dict) -> tuple[MFModel, list[str]]:
    """An exported MF router and its model pool; its encoder must be the dataset's."""
    config_path = export_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"init.from_export={export_dir}: no {CONFIG_FILE}; pass an MF export directory.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("router_type") != RECIPE:
        raise CheckpointError(f"{config_path}: router_type is {config.get('router_type')!r}, not 'mf'.")
    manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    base_encoder = manifest.get("encoder", {})
    if (base_encoder.get("id"), base_encoder.get("dim")) != (encoder.get("id"), encoder.get("dim")):
        raise DataError(f"init.from_export={export_dir}: router was trained on encoder {base_encoder.get('id')} "
                        f"(dim {base_encoder.get('dim')}) but the data uses {encoder.get('id')} (dim "
                        f"{encoder.get('dim')}); re-embed the data with the router's encoder.")
    model = MFModel(config["num_models"], config["prompt_embedding_dim"], config["model_embedding_dim"],
                    config["use_projection"])
    model.load_state_dict(load_export_weights(export_dir))  # safetensors only, sha256 checked
    return model, list(config["model_pool"])


EVAL_CHUNK_PAIRS = 65536  # pairs per forward pass in evaluation (memory, not results)


@torch.no_grad()
def evaluate(model: MFModel, pairs: PairTensors, prompt_embeddings: torch.Tensor) -> dict:
    """Mean BCE and accuracy (on decisive pairs) over the whole split.

    Every process evaluates the whole split (no collective): for a model this small, one pass over even
    100k+ pairs costs milliseconds, and every process gets the same numbers, which early stopping needs.
    """
    model.eval()
    device = prompt_embeddings.device
    loss_sum, correct, decisive_count = 0.0, 0, 0
    for start in range(0, len(pairs), EVAL_CHUNK_PAIRS):
        chunk = slice(start, start + EVAL_CHUNK_PAIRS)
        target = pairs.target[chunk].to(device)
        logits = model(pairs.model_a[chunk].to(device), pairs.model_b[chunk].to(device),
                       prompt_embeddings[pairs.prompt_row[chunk].to(device)]).float()
        loss_sum += float(F.binary_cross_entropy_with_logits(logits, target, reduction="sum"))
        decisive = target != 0.5
        correct += int(((logits > 0) == (target > 0.5))[decisive].sum())
        decisive_count += int(decisive.sum())
    model.train()
    return {"loss": loss_sum / max(len(pairs), 1),
            "accuracy": correct / decisive_count if decisive_count else float("nan"),
            "pairs": len(pairs)}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_recipe_args(MFConfig, argv, description=__doc__.splitlines()[0])

    # ------------------------------------------------------------------------------------------------
    # 2. accelerate, seeds, run directory, tracking
    # ------------------------------------------------------------------------------------------------
    run_dir = run_dir_for(cfg.run, RECIPE)
    accelerator = build_accelerator(cfg.run, cfg.tracking, run_dir)
    refuse_sharded_weights(accelerator, RECIPE)  # FSDP / ZeRO-3: use DDP for a model this small
    resume_from = checkpointing.resolve_resume(cfg.resume, run_dir)
    resumed_state = checkpointing.TrainerState.read(resume_from) if resume_from else None
    # One tracking run id per training run: a resumed run continues the one stored in its checkpoint.
    run_id_box = [resumed_state.tracking_run_id if resumed_state and resumed_state.tracking_run_id else new_run_id()]
    broadcast_object_list(run_id_box)
    tracking_run_id = run_id_box[0]
    resolved_config = config_to_dict(cfg)
    tracking = start_tracking(accelerator, cfg.tracking, run_dir, cfg.run.name, tracking_run_id, resolved_config)
    seed_for_model_init(cfg.run.seed)

    # ------------------------------------------------------------------------------------------------
    # 3. Data: pairs -> (model_a, model_b, prompt row, target, weight); prompt embeddings stay one matrix
    # ------------------------------------------------------------------------------------------------
    data = load_prepared(cfg.data.path)
    for split in (cfg.data.train_split, cfg.data.eval_split):
        if split and split not in data.pairs:
            raise DataError(f"{data.path}: no pairs split '{split}' (has {', '.join(data.pairs)}); "
                            f"set data.train_split / data.eval_split.")
    prompt_row, prompt_embeddings = prompt_embedding_matrix(data)

    # ------------------------------------------------------------------------------------------------
    # 4. Model: the pool comes from the data (and, when extending a router, from that router first)
    # ------------------------------------------------------------------------------------------------
    if cfg.init.from_export:
        model, base_pool = load_base_router(Path(cfg.init.from_export), data.encoder)
        new_models = [m for m in data.models if m not in base_pool]
        model_pool = base_pool + new_models
        if new_models:
            model = extend_model_pool(model, len(new_models))
        if cfg.init.train_only_new_models and not new_models:
            raise DataError(f"init.train_only_new_models: every model of {data.path} is already in the router's "
                            f"pool; there is nothing new to train.")
    else:
        base_pool, model_pool = [], list(data.models)
        model = MFModel(len(model_pool), int(data.encoder["dim"]), cfg.model.model_embedding_dim,
                        cfg.model.use_projection)
    if len(model_pool) < 2:
        raise DataError(f"{data.path}: the model pool has {len(model_pool)} model(s); routing needs at least 2.")
    num_frozen_models = len(base_pool) if cfg.init.train_only_new_models else 0
    if num_frozen_models:
        freeze_all_but_new_models(model, num_frozen_models)
    model_index = {name: i for i, name in enumerate(model_pool)}

    train_pairs = pairs_to_tensors(data.pairs[cfg.data.train_split], model_index, prompt_row, cfg.loss.ties,
                                   cfg.loss.use_source_weights, where=f"{data.path} pairs/{cfg.data.train_split}")
    if len(train_pairs) == 0:
        raise DataError(f"{data.path}: no trainable pairs in split '{cfg.data.train_split}' "
                        f"(dropped: {train_pairs.dropped}); check loss.ties and the data.")
    eval_pairs = (pairs_to_tensors(data.pairs[cfg.data.eval_split], model_index, prompt_row, cfg.loss.ties,
                                   cfg.loss.use_source_weights, where=f"{data.path} pairs/{cfg.data.eval_split}")
                  if cfg.data.eval_split else None)
    if eval_pairs is not None and not len(eval_pairs):
        eval_pairs = None
    # Early stopping / keep-best: the routing metric (which of two models is better: accuracy on decisive
    # pairs) where the split has decisive pairs, else the validation loss.
    has_decisive = eval_pairs is not None and bool((eval_pairs.target != 0.5).any())
    stop_metric = (early_stopping.resolve_metric(cfg.run.early_stopping_metric,
                                                 "accuracy" if has_decisive else "loss",
                                                 ["loss", "accuracy"] if has_decisive else ["loss"], RECIPE)
                   if eval_pairs is not None else None)

    # ------------------------------------------------------------------------------------------------
    # 5. Optimizer and LR schedule (in optimizer steps)
    # ------------------------------------------------------------------------------------------------
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Frozen rows must get no weight decay from the optimizer: decay the new rows through the loss instead.
    optimizer = build_optimizer(trainable, cfg.optim, weight_decay=0.0 if num_frozen_models else None)
    seed_for_training(cfg.run.seed, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    prompt_embeddings = prompt_embeddings.to(accelerator.device)
    # The whole pair table lives on the device; each micro-batch is one gather per column (no DataLoader:
    # its per-step cost dominated this tiny model's step). Same batches as the DataLoader path, same sharding.
    train_batches = TensorBatches(
        tuple(t.to(accelerator.device) for t in (train_pairs.model_a, train_pairs.model_b, train_pairs.prompt_row,
                                                 train_pairs.target, train_pairs.weight)),
        cfg.run.micro_batch_size, cfg.run.seed, accelerator.process_index, accelerator.num_processes)
    batches_per_epoch = len(train_batches)  # per process
    accumulation = cfg.run.gradient_accumulation_steps
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    total_optimizer_steps = cfg.run.epochs * steps_per_epoch
    if cfg.run.max_optimizer_steps is not None:
        total_optimizer_steps = min(total_optimizer_steps, cfg.run.max_optimizer_steps)
    scheduler = accelerator.prepare(build_lr_scheduler(optimizer, cfg.optim, total_optimizer_steps))
    announce_plan(accelerator, RECIPE, total_optimizer_steps=total_optimizer_steps, steps_per_epoch=steps_per_epoch,
                  epochs=cfg.run.epochs, warmup_steps=warmup_steps_for(cfg.optim, total_optimizer_steps),
                  early_stopping=bool(cfg.run.early_stopping_patience_evals and stop_metric))

    # ------------------------------------------------------------------------------------------------
    # 6. Resume: model, optimizer, scheduler, every process's RNG, dataloader position, step counters
    # ------------------------------------------------------------------------------------------------
    optimizer_step, epoch, batches_done, state = 0, 0, 0, None
    if resume_from is not None:
        checkpointing.check_resume_compatible(
            resumed_state, recipe=RECIPE, world_size=accelerator.num_processes,
            micro_batch_size=cfg.run.micro_batch_size, gradient_accumulation_steps=cfg.run.gradient_accumulation_steps,
            data_fingerprint=data.fingerprint, where=resume_from)
        state = checkpointing.load_checkpoint(accelerator, resume_from)
        optimizer_step = state.optimizer_step
        epoch, batches_done = normalize_position(state.epoch, state.batches_done_in_epoch, batches_per_epoch)
        accelerator.print(f"resumed from {resume_from} (optimizer step {optimizer_step}, epoch {epoch}, "
                          f"micro-batch {batches_done})")
    guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)
    stopper = (early_stopping.EarlyStopping.resumed(state.early_stopping if state else None, stop_metric,
                                                    cfg.run.early_stopping_patience_evals,
                                                    cfg.run.early_stopping_min_delta)
               if stop_metric and cfg.run.eval_every_optimizer_steps else None)
    best_state = early_stopping.load_best_weights(resume_from) if resume_from is not None else None

    def trainer_state() -> checkpointing.TrainerState:
        return checkpointing.TrainerState(
            recipe=RECIPE, optimizer_step=optimizer_step, epoch=epoch, batches_done_in_epoch=batches_done,
            world_size=accelerator.num_processes, micro_batch_size=cfg.run.micro_batch_size,
            gradient_accumulation_steps=cfg.run.gradient_accumulation_steps, data_fingerprint=data.fingerprint,
            tracking_run_id=tracking_run_id, seed=cfg.run.seed, skipped_nonfinite_steps=guard.skipped_steps,
            consecutive_nonfinite_steps=guard.consecutive_skipped_steps,
            early_stopping=stopper.to_dict() if stopper else None)

    def save_step_checkpoint() -> Path:
        return checkpointing.save_checkpoint(accelerator, run_dir, trainer_state(), keep_last=cfg.checkpoint.keep_last,
                                             extra_files=lambda d: early_stopping.save_best_weights(best_state, d))

    # ------------------------------------------------------------------------------------------------
    # 7. Training loop
    # ------------------------------------------------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    progress = tqdm(total=total_optimizer_steps, initial=optimizer_step, desc="mf", unit="step",
                    disable=not (accelerator.is_main_process and cfg.run.progress_bar))
    eta = EtaReporter(accelerator, RECIPE, optimizer_step, total_optimizer_steps, cfg.run.time_budget_minutes,
                      early_stopping=bool(stopper and cfg.run.early_stopping_patience_evals))
    # Loss sum and count of the finite micro-batches since the last log, summed over processes at log time
    # (no per-step host sync for logging).
    window = torch.zeros(2, device=accelerator.device)
    one = torch.ones((), device=accelerator.device)
    last_train_loss, history, eval_history = float("nan"), [], []
    samples_seen, loop_started = 0, time.perf_counter()
    model.train()
    while optimizer_step < total_optimizer_steps and epoch < cfg.run.epochs and not (stopper and stopper.stopped_early):
        for model_a, model_b, rows, target, weight in train_batches.epoch(epoch, batches_done):
            # An optimizer step every `accumulation` micro-batches and at the end of the epoch (as accelerate's
            # gradient accumulation over a prepared DataLoader); DDP all-reduces only on that micro-batch.
            closes_step = (batches_done + 1) % accumulation == 0 or batches_done + 1 == batches_per_epoch
            with contextlib.nullcontext() if closes_step else accelerator.no_sync(model):
                logits = model(model_a, model_b, prompt_embeddings[rows], noise_std=cfg.model.prompt_noise_std)
                per_pair = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
                loss = (per_pair * weight).sum() / weight.sum()  # source-weighted mean
                if num_frozen_models:
                    loss = loss + new_model_l2_penalty(unwrapped, num_frozen_models, cfg.optim.weight_decay)
                # NaN/Inf on ANY process: every process skips this optimizer step (routerforge/train/nan_guard.py).
                if nan_guard.update_allowed(guard, accelerator, loss, optimizer_step + 1):
                    accelerator.backward(loss)  # divided by gradient_accumulation_steps
                    window += torch.stack([loss.detach().float(), one])
            batches_done += 1
            samples_seen += int(target.shape[0])
            if not closes_step:
                continue
            skipped = nan_guard.close_optimizer_step(guard)
            if not skipped:
                if cfg.optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                optimizer.step()
            optimizer.zero_grad()  # also drops the gradients of a skipped step
            scheduler.step()  # a skipped step keeps its schedule slot: the LR stays a function of the step number
            optimizer_step += 1
            progress.update(1)
            eta.observe(optimizer_step)

            if (skipped or optimizer_step % cfg.tracking.log_every_optimizer_steps == 0
                    or optimizer_step == total_optimizer_steps):
                loss_sum, loss_count = accelerator.reduce(window, reduction="sum").tolist()
                last_train_loss = loss_sum / loss_count if loss_count else float("nan")
                lr = scheduler.get_last_lr()[0]
                accelerator.log({"train/loss": last_train_loss, "train/lr": lr, "train/epoch": epoch,
                                 "train/skipped_nonfinite_steps": guard.skipped_steps}, step=optimizer_step)
                history.append({"optimizer_step": optimizer_step, "train_loss": last_train_loss, "lr": lr,
                                "skipped_nonfinite": skipped})
                progress.set_postfix(loss=f"{last_train_loss:.4f}")
                window = torch.zeros(2, device=accelerator.device)
            if (eval_pairs is not None and cfg.run.eval_every_optimizer_steps
                    and optimizer_step % cfg.run.eval_every_optimizer_steps == 0):
                metrics = evaluate(unwrapped, eval_pairs, prompt_embeddings)
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=optimizer_step)
                eval_history.append({"optimizer_step": optimizer_step, **metrics})
                if stopper.update(metrics, optimizer_step) and cfg.run.keep_best:
                    best_state = early_stopping.cpu_copy(unwrapped.state_dict())
                if stopper.stopped_early:
                    accelerator.print(f"{RECIPE}: early stop at optimizer step {optimizer_step}: validation "
                                      f"{stop_metric} has not improved for {stopper.evaluations_since_best} "
                                      f"evaluations (best {stopper.best_value:.4f} at step "
                                      f"{stopper.best_optimizer_step})", flush=True)
            if cfg.checkpoint.every_optimizer_steps and optimizer_step % cfg.checkpoint.every_optimizer_steps == 0:
                save_step_checkpoint()
            faults.maybe_hang(run_dir, optimizer_step, accelerator.process_index)
            if nan_guard.must_stop(guard):  # diverged: keep the last good weights and stop with exit status 3
                saved = save_step_checkpoint()
                progress.close()
                finish_tracking(accelerator)
                raise nan_guard.stop_error(guard, optimizer_step, saved)
            if optimizer_step >= total_optimizer_steps or (stopper and stopper.stopped_early):
                break
        else:
            epoch, batches_done = epoch + 1, 0
    progress.close()
    loop_seconds = time.perf_counter() - loop_started
    total_samples = int(accelerator.reduce(torch.tensor(samples_seen, device=accelerator.device),
                                           reduction="sum").item())

    # ------------------------------------------------------------------------------------------------
    # 8. Final evaluation, cross-process weight check, export (main process only)
    # ------------------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    last_step_eval = evaluate(unwrapped, eval_pairs, prompt_embeddings) if eval_pairs is not None else {}
    if last_step_eval:
        accelerator.log({f"eval/{k}": v for k, v in last_step_eval.items()}, step=optimizer_step)
    export_state, final_eval = unwrapped.state_dict(), last_step_eval
    if best_state is not None and cfg.run.keep_best:  # the best evaluation's weights, not the last step's
        best_model = MFModel(len(model_pool), int(data.encoder["dim"]), unwrapped.config()["model_embedding_dim"],
                             unwrapped.config()["use_projection"]).to(accelerator.device)
        best_model.load_state_dict(best_state)
        export_state, final_eval = best_state, evaluate(best_model, eval_pairs, prompt_embeddings)
    digests = parameter_digests(accelerator, model)
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes ended with different weights (sha256 per process: {digests}); "
                           f"data-parallel training went out of sync.")
    export_dir = export_dir_for(cfg.run, cfg.export, RECIPE)
    throughput = {"train_samples": total_samples, "train_loop_seconds": loop_seconds,
                  "train_samples_per_second": total_samples / loop_seconds if loop_seconds > 0 else float("nan"),
                  "peak_accelerator_memory_bytes": peak_accelerator_memory_bytes()}
    stopping = {**stopper.to_dict(), "exported": "best" if export_state is best_state else "last",
                "last_step_metrics": last_step_eval, "eval_history": eval_history} if stopper else None
    result = {"export_dir": str(export_dir), "run_dir": str(run_dir), "optimizer_steps": optimizer_step,
              "tracking": tracking.to_dict(), "metrics": final_eval, "throughput": throughput,
              "skipped_nonfinite_steps": guard.skipped_steps, "early_stopping": stopping}
    if accelerator.is_main_process:
        model_config = {"router_type": RECIPE, "model_pool": model_pool, **unwrapped.config()}
        manifest = build_manifest(
            recipe=RECIPE, router_type=RECIPE, resolved_config=resolved_config, model_pool=model_pool,
            encoder=data.encoder, repo_dir=REPO_DIR, tracking=tracking.to_dict(),
            data={"path": str(data.path), "name": data.manifest.get("name"), "version": data.manifest.get("version"),
                  "fingerprint": data.fingerprint, "train_pairs": len(train_pairs),
                  "train_pairs_dropped": train_pairs.dropped,
                  "eval_pairs": len(eval_pairs) if eval_pairs is not None else 0},
            training={**world_description(accelerator), "optimizer_steps": optimizer_step,
                      "total_optimizer_steps": total_optimizer_steps, "epochs": cfg.run.epochs,
                      "optimizer_steps_per_epoch": steps_per_epoch,
                      "resumed_from": str(resume_from) if resume_from else None,
                      "base_router": cfg.init.from_export, "frozen_models": model_pool[:num_frozen_models],
                      "param_sha256_per_process": digests, "loss_history": history,
                      "skipped_nonfinite_steps": guard.skipped_steps, "early_stopping": stopping, **throughput},
            metrics={"train_loss": last_train_loss, **{f"{cfg.data.eval_split}_{k}": v for k, v in final_eval.items()}},
        )
        export_router(export_dir, export_state, model_config, manifest)
        registered = register_run_export(cfg.export, export_dir, cfg.run.output_dir)
        if registered is not None:
            print(f"registered checkpoint: {registered}")
        print(f"checkpoint: {export_dir}")
        print(f"step checkpoints: {run_dir}")
        print(tracking.describe(), flush=True)
    finish_tracking(accelerator)
    return result


if __name__ == "__main__":
    run_recipe(main)
