r"""Train RouteLLM's matrix-factorization router on preference pairs.

    accelerate launch training/train_mf.py --config configs/mf/default.yaml [key=value ...]
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml training/train_mf.py --config configs/mf/tiny.yaml
    accelerate launch --config_file launch/accelerate/single_gpu.yaml training/train_mf.py \
        --config configs/mf/default.yaml
    ... resume=auto                                   # continue the run from its newest complete checkpoint
    ... init.from_export=checkpoints/mf/base/final init.train_only_new_models=true   # add models to a trained router

Model (Ong et al. 2024, RouteLLM, section 4.1): δ(m, q) = w · (v_m/‖v_m‖ ⊙ W q), trained with BCE on
δ(a, q) − δ(b, q) against the human vote, weighted by each pair's source weight. Ties are dropped
(RouteLLM) or trained toward 0.5 (`loss.ties=half`). The model pool is the dataset's (its manifest's
`models`), in that order; any number of models.

Reads top to bottom (main() at the end calls the sections in order; routerforge/train/lifecycle.py holds the
run's start, step checkpoints, NaN/Inf stop and export, shared by every recipe):
  1. config   2. accelerate, seeds, run dir, tracking   3. data   4. model   5. optimizer + schedule
  6. resume   7. training loop (log, evaluate, checkpoint)   8. final evaluation and export (main process)

Exit status: 0 trained and exported; 2 a user error (one line: config, data, checkpoint, unsafe weights);
3 stopped after run.max_consecutive_nonfinite_steps NaN/Inf steps, with a checkpoint to resume from
(docs/running_at_scale.md). Launch files and the recipe x hardware matrix: launch/README.md.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from routerforge.config import doc
from routerforge.data.dataset_io import PreparedDataset, load_prepared
from routerforge.data.pair_tensors import TIE_RULES, PairTensors, pairs_to_tensors, prompt_embedding_matrix
from routerforge.errors import CheckpointError, DataError
from routerforge.io.names import CONFIG_FILE
from routerforge.io.safetensors_file import load_export_weights
from routerforge.models.mf import MFModel, extend_model_pool, freeze_all_but_new_models, new_model_l2_penalty
from routerforge.registry.register import register_run_export
from routerforge.train import early_stopping, nan_guard
from routerforge.train.accelerator_setup import seed_for_model_init, seed_for_training
from routerforge.train.consistency import agreed_parameter_digests, refuse_sharded_weights
from routerforge.train.entrypoint import run_recipe
from routerforge.train.lifecycle import LoopOutcome, Position, RunContext, dataset_facts, start_run
from routerforge.train.optimization import build_lr_scheduler, build_optimizer, warmup_steps_for
from routerforge.train.run_config import (
    RESUME_HELP,
    CheckpointConfig,
    ExportConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    parse_recipe_args,
)
from routerforge.train.run_plan import EtaReporter, announce_plan, optimizer_steps_for
from routerforge.train.tensor_batches import TensorBatches

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


# ----------------------------------------------------------------------------------------------------
# 3. Data: pairs -> (model_a, model_b, prompt row, target, weight); prompt embeddings stay one matrix
# ----------------------------------------------------------------------------------------------------
def load_data(cfg: MFConfig) -> tuple[PreparedDataset, dict, torch.Tensor]:
    """The prepared dataset, prompt id -> row of the embedding matrix, and the matrix."""
    data = load_prepared(cfg.data.path)
    for split in (cfg.data.train_split, cfg.data.eval_split):
        if split and split not in data.pairs:
            raise DataError(f"{data.path}: no pairs split '{split}' (has {', '.join(data.pairs)}); "
                            f"set data.train_split / data.eval_split.")
    prompt_row, prompt_embeddings = prompt_embedding_matrix(data)
    return data, prompt_row, prompt_embeddings


def split_pairs(cfg: MFConfig, data: PreparedDataset, model_pool: list[str],
                prompt_row: dict) -> tuple[PairTensors, PairTensors | None]:
    """The training pairs and the evaluation pairs (None: no eval split, or an empty one) as tensors."""
    model_index = {name: i for i, name in enumerate(model_pool)}

    def tensors(split: str) -> PairTensors:
        return pairs_to_tensors(data.pairs[split], model_index, prompt_row, cfg.loss.ties, cfg.loss.use_source_weights,
                                where=f"{data.path} pairs/{split}")

    train_pairs = tensors(cfg.data.train_split)
    if len(train_pairs) == 0:
        raise DataError(f"{data.path}: no trainable pairs in split '{cfg.data.train_split}' "
                        f"(dropped: {train_pairs.dropped}); check loss.ties and the data.")
    eval_pairs = tensors(cfg.data.eval_split) if cfg.data.eval_split else None
    return train_pairs, (eval_pairs if eval_pairs is not None and len(eval_pairs) else None)


# ----------------------------------------------------------------------------------------------------
# 4. Model: the pool comes from the data (and, when extending a router, from that router first)
# ----------------------------------------------------------------------------------------------------
def build_model(cfg: MFConfig, data: PreparedDataset) -> tuple[MFModel, list[str], int]:
    """(model, model pool, number of frozen models: the base router's, with init.train_only_new_models)."""
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
    return model, model_pool, num_frozen_models


# ----------------------------------------------------------------------------------------------------
# 5-7. Optimizer and LR schedule, resume, training loop
# ----------------------------------------------------------------------------------------------------
def fit(ctx: RunContext, model: MFModel, train_pairs: PairTensors, eval_pairs: PairTensors | None,
        prompt_embeddings: torch.Tensor, data_fingerprint: str, num_frozen_models: int) -> LoopOutcome:
    cfg: MFConfig = ctx.cfg
    accelerator = ctx.accelerator
    # Early stopping / keep-best: the routing metric (which of two models is better: accuracy on decisive
    # pairs) where the split has decisive pairs, else the validation loss.
    has_decisive = eval_pairs is not None and bool((eval_pairs.target != 0.5).any())
    stop_metric = (early_stopping.resolve_metric(cfg.run.early_stopping_metric,
                                                 "accuracy" if has_decisive else "loss",
                                                 ["loss", "accuracy"] if has_decisive else ["loss"], RECIPE)
                   if eval_pairs is not None else None)

    # 5. Optimizer and LR schedule (in optimizer steps)
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
    steps_per_epoch, total_optimizer_steps = optimizer_steps_for(cfg.run, batches_per_epoch)
    scheduler = accelerator.prepare(build_lr_scheduler(optimizer, cfg.optim, total_optimizer_steps))
    announce_plan(accelerator, RECIPE, total_optimizer_steps=total_optimizer_steps, steps_per_epoch=steps_per_epoch,
                  epochs=cfg.run.epochs, warmup_steps=warmup_steps_for(cfg.optim, total_optimizer_steps),
                  early_stopping=bool(cfg.run.early_stopping_patience_evals and stop_metric))

    # 6. Resume: model, optimizer, scheduler, every process's RNG, position, counters, best weights so far
    position, state = ctx.resume(data_fingerprint, batches_per_epoch)
    optimizer_step, epoch, batches_done = position.optimizer_step, position.epoch, position.batches_done_in_epoch
    guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)
    stopper = ctx.early_stopper(stop_metric, state)
    best_state = early_stopping.load_best_weights(ctx.resume_from) if ctx.resume_from is not None else None

    def save_step_checkpoint() -> Path:
        return ctx.save_checkpoint(ctx.trainer_state(Position(optimizer_step, epoch, batches_done), data_fingerprint,
                                                     guard, stopper),
                                   extra_files=lambda d: early_stopping.save_best_weights(best_state, d))

    # 7. Training loop
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
                    accelerator.print(stopper.stop_message(RECIPE, optimizer_step), flush=True)
            # Every N steps a checkpoint; NaN/Inf too many steps in a row: a last checkpoint, exit status 3.
            ctx.end_optimizer_step(optimizer_step, guard, save_step_checkpoint, progress)
            if optimizer_step >= total_optimizer_steps or (stopper and stopper.stopped_early):
                break
        else:
            epoch, batches_done = epoch + 1, 0
    progress.close()
    loop_seconds = time.perf_counter() - loop_started
    return LoopOutcome(model=model, optimizer_step=optimizer_step, total_optimizer_steps=total_optimizer_steps,
                   steps_per_epoch=steps_per_epoch, last_train_loss=last_train_loss, history=history,
                   eval_history=eval_history, stopper=stopper, best_state=best_state,
                   skipped_nonfinite_steps=guard.skipped_steps, throughput=ctx.throughput(samples_seen, loop_seconds))


# ----------------------------------------------------------------------------------------------------
# 8. Final evaluation, cross-process weight check, export (main process only)
# ----------------------------------------------------------------------------------------------------
def evaluate_and_export(ctx: RunContext, trained: LoopOutcome, data: PreparedDataset, model_pool: list[str],
                        num_frozen_models: int, train_pairs: PairTensors, eval_pairs: PairTensors | None,
                        prompt_embeddings: torch.Tensor) -> dict:
    cfg: MFConfig = ctx.cfg
    accelerator = ctx.accelerator
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(trained.model)
    prompt_embeddings = prompt_embeddings.to(accelerator.device)
    last_step_eval = evaluate(unwrapped, eval_pairs, prompt_embeddings) if eval_pairs is not None else {}
    if last_step_eval:
        accelerator.log({f"eval/{k}": v for k, v in last_step_eval.items()}, step=trained.optimizer_step)
    best_state, stopper = trained.best_state, trained.stopper
    export_state, final_eval = unwrapped.state_dict(), last_step_eval
    if best_state is not None and cfg.run.keep_best:  # the best evaluation's weights, not the last step's
        best_model = MFModel(len(model_pool), int(data.encoder["dim"]), unwrapped.config()["model_embedding_dim"],
                             unwrapped.config()["use_projection"]).to(accelerator.device)
        best_model.load_state_dict(best_state)
        export_state, final_eval = best_state, evaluate(best_model, eval_pairs, prompt_embeddings)
    digests = agreed_parameter_digests(accelerator, trained.model)
    stopping = {**stopper.to_dict(), "exported": "best" if export_state is best_state else "last",
                "last_step_metrics": last_step_eval, "eval_history": trained.eval_history} if stopper else None
    result = ctx.result(optimizer_steps=trained.optimizer_step, metrics=final_eval, throughput=trained.throughput,
                        skipped_nonfinite_steps=trained.skipped_nonfinite_steps, early_stopping=stopping)
    if accelerator.is_main_process:
        ctx.export(
            export_state, {"router_type": RECIPE, "model_pool": model_pool, **unwrapped.config()},
            model_pool=model_pool, encoder=data.encoder, register=register_run_export,
            data={**dataset_facts(data), "train_pairs": len(train_pairs),
                  "train_pairs_dropped": train_pairs.dropped,
                  "eval_pairs": len(eval_pairs) if eval_pairs is not None else 0},
            training={"optimizer_steps": trained.optimizer_step, "total_optimizer_steps": trained.total_optimizer_steps,
                      "epochs": cfg.run.epochs, "optimizer_steps_per_epoch": trained.steps_per_epoch,
                      "resumed_from": str(ctx.resume_from) if ctx.resume_from else None,
                      "base_router": cfg.init.from_export, "frozen_models": model_pool[:num_frozen_models],
                      "param_sha256_per_process": digests, "loss_history": trained.history,
                      "skipped_nonfinite_steps": trained.skipped_nonfinite_steps, "early_stopping": stopping,
                      **trained.throughput},
            metrics={"train_loss": trained.last_train_loss,
                     **{f"{cfg.data.eval_split}_{k}": v for k, v in final_eval.items()}})
    ctx.finish()
    return result


def main(argv: list[str] | None = None) -> dict:
    # 1. Config
    cfg = parse_recipe_args(MFConfig, argv, description=__doc__.splitlines()[0])
    # 2. accelerate, run directory, resume state, tracking; FSDP / ZeRO-3 refused: use DDP for a model this small
    ctx = start_run(cfg, RECIPE, REPO_DIR, check_accelerator=lambda accelerator: refuse_sharded_weights(
        accelerator, RECIPE))
    seed_for_model_init(cfg.run.seed)
    # 3-4. Data, model, pairs as tensors
    data, prompt_row, prompt_embeddings = load_data(cfg)
    model, model_pool, num_frozen_models = build_model(cfg, data)
    train_pairs, eval_pairs = split_pairs(cfg, data, model_pool, prompt_row)
    # 5-7. Optimizer, resume, training loop
    trained = fit(ctx, model, train_pairs, eval_pairs, prompt_embeddings, data.fingerprint, num_frozen_models)
    # 8. Final evaluation and export
    return evaluate_and_export(ctx, trained, data, model_pool, num_frozen_models, train_pairs, eval_pairs,
                               prompt_embeddings)


if __name__ == "__main__":
    run_recipe(main)
