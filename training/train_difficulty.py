r"""Train a BEST-Route-style multi-head difficulty router on a transformer encoder.

    accelerate launch training/train_difficulty.py --config configs/difficulty/default.yaml [key=value ...]
    accelerate launch training/train_difficulty.py --config configs/difficulty/deberta_v3_small.yaml   # Hub online
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml training/train_difficulty.py \
        --config configs/difficulty/tiny.yaml
    accelerate launch --config_file launch/accelerate/single_gpu.yaml training/train_difficulty.py \
        --config configs/difficulty/default.yaml
    ... model.lora.enabled=true                       # LoRA adapters (PEFT) instead of full fine-tuning
    ... resume=auto                                   # continue the run from its newest complete checkpoint

Model (Ding et al. 2025, BEST-Route, arXiv 2506.22716; code microsoft/best-route-llm): an encoder reads the
prompt; heads on its pooled state predict (a) for every candidate (model, best-of-n) the probability that its
answer scores at least the reference model's answer minus `labels.tolerance` (soft labels, cross-entropy),
(b) the prompt's difficulty (1 - mean score over the pool) and (c) per-model strengths whose differences give
P(a beats b | prompt) from preference pairs. See routerforge/models/difficulty.py for the exact definitions.
The model pool is the dataset's (its manifest's `models`); the reference model is `labels.reference_model`
or, when null, the model with the highest mean score on the training outcomes. A head whose table (outcomes
for a/b, pairs for c) is empty in the training split, or whose loss weight is 0, is not built.

Reads top to bottom (main() at the end calls the sections in order; routerforge/train/lifecycle.py holds the
run's start, step checkpoints, NaN/Inf stop and export, shared by every recipe):
  1. config   2. accelerate, seeds, run dir, tracking   3. data and backbone   4. model   5. optimizer + schedule
  6. resume   7. training loop (log, evaluate, checkpoint)   8. final evaluation and export (main process)

Exit status: 0 trained and exported; 2 a user error (one line: config, data, checkpoint, unsafe weights);
3 stopped after run.max_consecutive_nonfinite_steps NaN/Inf steps, with a checkpoint to resume from
(docs/running_at_scale.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm

from routerforge.config import doc
from routerforge.data.dataset_io import PreparedDataset, load_prepared
from routerforge.data.pair_tensors import TIE_RULES
from routerforge.errors import DataError
from routerforge.models.difficulty import (
    POOLINGS,
    ROUTER_TYPE,
    DifficultyHeads,
    DifficultyRouter,
    HeadSpec,
    LossWeights,
    apply_lora,
    difficulty_router_loss,
    freeze_unused_parameters,
    load_backbone,
    pairwise_win_logits,
    save_backbone_files,
)
from routerforge.models.difficulty_data import (
    build_examples,
    candidates_for,
    choose_reference_model,
    collate_examples,
    outcome_samples,
)
from routerforge.registry.register import register_run_export
from routerforge.train import early_stopping, nan_guard
from routerforge.train.accelerator_setup import seed_for_model_init, seed_for_training
from routerforge.train.consistency import agreed_parameter_digests
from routerforge.train.data_loading import batches_for_epoch, build_eval_loader, build_train_loader
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
from routerforge.train.sharded_models import full_state_dict, is_fsdp

RECIPE = "difficulty"
REPO_DIR = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# 1. Config: shared blocks (run, optim, tracking, checkpoint, export) + this recipe's data/model/labels/loss
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DifficultyDataConfig:
    path: str = doc("prepared dataset: a version directory, or its parent holding LATEST (path)",
                    default="data/processed/demo")
    train_split: str = doc("split of the outcomes and pairs tables to train on", default="train")
    eval_split: str = doc("split to evaluate on; empty string: none", default="validation")
    group_by_length: bool = doc("batch prompts of similar token length together, as transformers' Trainer "
                                "group_by_length (a seeded shuffle, sorted by length within mega-batches of up to "
                                "50 micro-batches): each batch pads to its own longest prompt, ~2x faster on "
                                "MMLU-Pro, but measured 0.03 APGR lower there (bool; false: a plain shuffle)",
                                default=False)


@dataclass(frozen=True)
class DifficultyLoraConfig:
    enabled: bool = doc("train LoRA adapters (PEFT) in the backbone instead of all its weights (bool)",
                        default=False)
    r: int = doc("LoRA rank (dimensions)", default=8)
    alpha: float = doc("LoRA scaling alpha (unitless; the update is scaled by alpha / r)", default=16.0)
    dropout: float = doc("dropout on the LoRA input (probability)", default=0.1)
    target_modules: list[str] | None = doc("module names to adapt; null: the backbone family's attention "
                                           "projections (deberta-v2: query_proj/key_proj/value_proj, "
                                           "bert: query/key/value, ...)", default=None)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"model.lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class DifficultyModelConfig:
    backbone: str = doc("encoder: a Hub id (microsoft/deberta-v3-small), a local directory, "
                        "packaged:all-MiniLM-L6-v2 (offline) or random-deberta:<tiny|deberta-v3-small>:<dir> "
                        "(random init, built in-process on first use)", default="packaged:all-MiniLM-L6-v2")
    pooling: str = doc("prompt vector: cls (first token, BEST-Route) or mean (masked mean, Sentence-BERT models)",
                       default="mean")
    max_seq_tokens: int = doc("prompts are truncated to this many tokens (tokens; BEST-Route: 128)", default=256)
    head_dropout: float = doc("dropout before the heads (probability)", default=0.1)
    attention_dropout: float | None = doc(
        "dropout on the backbone's attention probabilities while training (probability); null keeps the "
        "backbone's own (0.1 for all-MiniLM-L6-v2 and DeBERTa-v3). 0 lets torch use its fused attention on "
        "CPU: 1.6x faster steps there", default=None)
    lora: DifficultyLoraConfig = doc("LoRA fine-tuning", default_factory=DifficultyLoraConfig)

    def __post_init__(self) -> None:
        if not self.backbone:
            raise ValueError("model.backbone must not be empty")
        if self.pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {', '.join(POOLINGS)}, got '{self.pooling}'")
        if self.max_seq_tokens < 2:
            raise ValueError(f"model.max_seq_tokens must be >= 2, got {self.max_seq_tokens}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"model.head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"model.attention_dropout must be in [0, 1) or null, got {self.attention_dropout}")


@dataclass(frozen=True)
class DifficultyLabelConfig:
    reference_model: str | None = doc("the reference model M_ref of the candidate labels; null: the model with "
                                      "the highest mean score on the training outcomes", default=None)
    tolerance: float = doc("t of P(score(candidate) >= score(reference) - t) (score units, scores are 0..1; "
                           "BEST-Route's match_t)", default=0.0)
    best_of_n: list[int] = doc("sample counts n of the candidates (model, n) (samples); n > 1 needs several "
                               "outcome rows per (prompt, model)", default_factory=lambda: [1])

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance <= 1.0:
            raise ValueError(f"labels.tolerance must be in [0, 1] (score units), got {self.tolerance}")
        if not self.best_of_n or any(n < 1 for n in self.best_of_n) or len(set(self.best_of_n)) != len(self.best_of_n):
            raise ValueError(f"labels.best_of_n must be distinct integers >= 1, got {list(self.best_of_n)}")


@dataclass(frozen=True)
class DifficultyLossConfig:
    candidate_weight: float = doc("weight of the candidate heads' loss (unitless); 0: no candidate heads",
                                  default=1.0)
    difficulty_weight: float = doc("weight of the difficulty regression loss (unitless); 0: no difficulty head",
                                   default=1.0)
    win_weight: float = doc("weight of the pairwise win loss (unitless); 0: no win-probability heads", default=1.0)
    ties: str = doc("tie rule for pairs: " + "; ".join(f"{k}: {v}" for k, v in TIE_RULES.items()), default="drop")
    use_source_weights: bool = doc("weight each pair's loss by its `weight` column (the source's weight)",
                                   default=True)

    def __post_init__(self) -> None:
        for name in ("candidate_weight", "difficulty_weight", "win_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.ties not in TIE_RULES:
            raise ValueError(f"loss.ties must be one of {', '.join(TIE_RULES)}, got '{self.ties}'")


@dataclass(frozen=True)
class DifficultyConfig:
    run: RunConfig = doc("run name, output dir, seed, length, batch geometry",
                         default_factory=lambda: RunConfig(epochs=3, micro_batch_size=32))
    data: DifficultyDataConfig = doc("prepared dataset", default_factory=DifficultyDataConfig)
    model: DifficultyModelConfig = doc("backbone, pooling, heads, LoRA", default_factory=DifficultyModelConfig)
    labels: DifficultyLabelConfig = doc("BEST-Route candidate labels", default_factory=DifficultyLabelConfig)
    loss: DifficultyLossConfig = doc("loss weights and pair handling", default_factory=DifficultyLossConfig)
    optim: OptimConfig = doc("optimizer (fine-tuning: AdamW, small lr, warmup)",
                             default_factory=lambda: OptimConfig(name="adamw", lr=5e-5, weight_decay=0.01,
                                                                 lr_schedule="linear"))
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = doc("step checkpoints", default_factory=CheckpointConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)
    resume: str = doc(RESUME_HELP, default="never")


def nonempty(tables, split: str):
    table = tables[split] if split in tables else None
    return table if table is not None and len(table) else None


@torch.no_grad()
def assemble_router(cfg: DifficultyConfig, backbone, backbone_info, head_spec: HeadSpec) -> DifficultyRouter:
    """Section 4's router: the backbone (+ LoRA adapters when model.lora.enabled) -> pooling -> heads."""
    lora = cfg.model.lora
    if lora.enabled:
        backbone = apply_lora(backbone, backbone_info.model_type, lora.r, lora.alpha, lora.dropout,
                              lora.target_modules)
    return DifficultyRouter(backbone, DifficultyHeads(head_spec), cfg.model.pooling)


def plain_router_from_state(cfg: DifficultyConfig, head_spec: HeadSpec, state_dict: dict) -> DifficultyRouter:
    """The trained router as a plain (unsharded) module built as in section 4, filled with the gathered
    whole `state_dict` (strictly: every key must match)."""
    backbone, _, backbone_info = load_backbone(cfg.model.backbone, attention_dropout=cfg.model.attention_dropout)
    router = assemble_router(cfg, backbone, backbone_info, head_spec)
    router.load_state_dict(state_dict, strict=True)
    return router.eval()


def evaluate(accelerator, router: DifficultyRouter, loader) -> dict:
    """Per-head losses and accuracies over the whole split, gathered from every process."""
    router.eval()
    per_prompt = []  # one row of sums per prompt
    for batch in loader:
        out = router(batch["input_ids"], batch["attention_mask"])
        columns = []
        if "candidate_logits" in out:
            logits, labels, mask = out["candidate_logits"].float(), batch["candidate_labels"], batch["candidate_mask"]
            bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            columns += [(bce * mask).sum(1), ((torch.sigmoid(logits) - labels).abs() * mask).sum(1), mask.sum(1)]
        if "difficulty_logit" in out:
            mask = batch["difficulty_mask"]
            columns += [(torch.sigmoid(out["difficulty_logit"].float()) - batch["difficulty"]) ** 2 * mask, mask]
        if "model_strengths" in out:
            logits = pairwise_win_logits(out["model_strengths"].float(), batch["pair_model_a"], batch["pair_model_b"])
            target, weight = batch["pair_target"], batch["pair_weight"]
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            decisive = ((target != 0.5) & (weight > 0)).float()
            correct = ((logits > 0) == (target > 0.5)).float() * decisive
            columns += [(bce * weight).sum(1), weight.sum(1), correct.sum(1), decisive.sum(1)]
        # Per batch: gather_for_metrics drops the duplicates that pad the LAST batch of the split.
        per_prompt.append(accelerator.gather_for_metrics(torch.stack(columns, dim=1)))
    router.train()
    sums = torch.cat(per_prompt).sum(0).tolist()
    metrics: dict = {}
    i = 0
    if router.heads.candidates is not None:
        metrics["candidates_loss"] = sums[0] / max(sums[2], 1.0)
        metrics["candidates_mae"] = sums[1] / max(sums[2], 1.0)
        metrics["candidate_labels"] = int(sums[2])
        i = 3
    if router.heads.difficulty is not None:
        metrics["difficulty_mse"] = sums[i] / max(sums[i + 1], 1.0)
        i += 2
    if router.heads.win is not None:
        metrics["win_loss"] = sums[i] / sums[i + 1] if sums[i + 1] else float("nan")
        metrics["win_accuracy"] = sums[i + 2] / sums[i + 3] if sums[i + 3] else float("nan")
        metrics["decisive_pairs"] = int(sums[i + 3])
    return metrics


def label_counts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """How many labels of each head a batch holds (a batch may hold none of a head's)."""
    return {"candidates": batch["candidate_mask"].sum(), "difficulty": batch["difficulty_mask"].sum(),
            "win": batch["pair_weight"].gt(0).sum()}


@dataclass(frozen=True)
class TrainingData:
    """Section 3's result: the dataset, the heads it can train, the backbone and the tokenized examples."""

    data: PreparedDataset
    model_pool: list[str]
    use_candidates: bool
    use_difficulty: bool
    use_win: bool
    reference: str | None
    candidates: list
    backbone: object
    tokenizer: object
    backbone_info: object
    train_examples: object
    eval_examples: object | None
    train_loader: object
    eval_loader: object | None


# ----------------------------------------------------------------------------------------------------
# 3. Data and backbone: outcomes feed heads (a) and (b), pairs feed heads (c); prompts are tokenized here
# ----------------------------------------------------------------------------------------------------
def load_training_data(cfg: DifficultyConfig, accelerator) -> TrainingData:
    data = load_prepared(cfg.data.path)
    for split in (cfg.data.train_split, cfg.data.eval_split):
        if split and split not in data.outcomes and split not in data.pairs:
            raise DataError(f"{data.path}: no split '{split}' (has {', '.join(data.outcomes)}); "
                            f"set data.train_split / data.eval_split.")
    train_outcomes = nonempty(data.outcomes, cfg.data.train_split)
    train_pairs = nonempty(data.pairs, cfg.data.train_split)
    use_candidates = train_outcomes is not None and cfg.loss.candidate_weight > 0
    use_difficulty = train_outcomes is not None and cfg.loss.difficulty_weight > 0
    use_win = train_pairs is not None and cfg.loss.win_weight > 0
    if not (use_candidates or use_difficulty or use_win):
        raise DataError(f"{data.path}: nothing to train in split '{cfg.data.train_split}': the candidate and "
                        f"difficulty heads need outcomes, the win heads need pairs (or their loss weights are 0).")
    model_pool = list(data.models)
    model_index = {name: i for i, name in enumerate(model_pool)}
    reference, candidates = None, []
    if use_candidates:
        _, train_samples = outcome_samples(train_outcomes)
        where = f"{data.path} outcomes/{cfg.data.train_split}"
        reference = choose_reference_model(train_samples, model_pool, cfg.labels.reference_model, where)
        candidates = candidates_for(model_pool, train_samples, reference, list(cfg.labels.best_of_n))
        if not candidates:
            raise DataError(f"{where}: only the reference model '{reference}' has outcomes; the candidate heads need "
                            f"another model, or labels.best_of_n with n > 1.")

    with accelerator.main_process_first():  # a random-deberta backbone is built once, by the main process
        backbone, tokenizer, backbone_info = load_backbone(cfg.model.backbone,
                                                            attention_dropout=cfg.model.attention_dropout)
    if tokenizer.pad_token_id is None:
        raise DataError(f"model.backbone '{cfg.model.backbone}': its tokenizer has no padding token.")

    def examples(split: str):
        return build_examples(
            nonempty(data.outcomes, split) if (use_candidates or use_difficulty) else None,
            nonempty(data.pairs, split) if use_win else None,
            tokenizer=tokenizer, max_seq_tokens=cfg.model.max_seq_tokens, model_index=model_index,
            candidates=candidates, reference=reference, tolerance=cfg.labels.tolerance, ties=cfg.loss.ties,
            use_source_weights=cfg.loss.use_source_weights, where=f"{data.path} pairs/{split}")

    train_examples = examples(cfg.data.train_split)
    for name, count in train_examples.stats["candidate_labels"].items():
        if count == 0:
            raise DataError(f"{data.path}: candidate {name} has no label in split '{cfg.data.train_split}' (dropped: "
                            f"{train_examples.stats['candidate_labels_dropped']}); check labels.best_of_n.")
    eval_examples = examples(cfg.data.eval_split) if cfg.data.eval_split else None
    collate = collate_examples(tokenizer.pad_token_id)
    train_loader = build_train_loader(train_examples, cfg.run.micro_batch_size, cfg.run.seed, collate_fn=collate,
                                      lengths=train_examples.token_counts() if cfg.data.group_by_length else None)
    # Evaluation sums over prompts, so its order is free: longest first, each batch padded to its own length.
    eval_loader = (build_eval_loader(eval_examples, cfg.run.micro_batch_size, collate_fn=collate,
                                     lengths=eval_examples.token_counts())
                   if eval_examples is not None and len(eval_examples) else None)
    return TrainingData(data=data, model_pool=model_pool, use_candidates=use_candidates, use_difficulty=use_difficulty,
                        use_win=use_win, reference=reference, candidates=candidates, backbone=backbone,
                        tokenizer=tokenizer, backbone_info=backbone_info, train_examples=train_examples,
                        eval_examples=eval_examples, train_loader=train_loader, eval_loader=eval_loader)


# ----------------------------------------------------------------------------------------------------
# 4. Model: backbone (+ LoRA) -> pooling -> heads sized by the data
# ----------------------------------------------------------------------------------------------------
def build_router(cfg: DifficultyConfig, td: TrainingData) -> tuple[DifficultyRouter, HeadSpec, int]:
    """(router, its head spec, the number of parameters frozen because no loss reaches them)."""
    head_spec = HeadSpec(hidden_size=int(td.backbone.config.hidden_size), num_candidates=len(td.candidates),
                         difficulty=td.use_difficulty, num_models=len(td.model_pool) if td.use_win else 0,
                         dropout=cfg.model.head_dropout)
    router = assemble_router(cfg, td.backbone, td.backbone_info, head_spec)
    frozen_unused = freeze_unused_parameters(router, collate_examples(td.tokenizer.pad_token_id)(
        [td.train_examples[i] for i in range(min(2, len(td.train_examples)))]))
    return router, head_spec, frozen_unused


# ----------------------------------------------------------------------------------------------------
# 5-7. Optimizer and LR schedule, resume, training loop
# ----------------------------------------------------------------------------------------------------
def fit(ctx: RunContext, router: DifficultyRouter, td: TrainingData) -> tuple[LoopOutcome, object | None]:
    """The loop's outcome and the prepared evaluation loader (None: no evaluation split)."""
    cfg: DifficultyConfig = ctx.cfg
    accelerator = ctx.accelerator
    loss_weights = LossWeights(cfg.loss.candidate_weight, cfg.loss.difficulty_weight, cfg.loss.win_weight)

    # 5. Optimizer and LR schedule (in optimizer steps)
    trainable = [p for p in router.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg.optim)
    seed_for_training(cfg.run.seed, accelerator)
    router, optimizer, train_loader = accelerator.prepare(router, optimizer, td.train_loader)
    eval_loader = accelerator.prepare(td.eval_loader) if td.eval_loader is not None else None
    batches_per_epoch = len(train_loader)  # per process
    steps_per_epoch, total_optimizer_steps = optimizer_steps_for(cfg.run, batches_per_epoch)
    scheduler = accelerator.prepare(build_lr_scheduler(optimizer, cfg.optim, total_optimizer_steps))
    # Early stopping / keep-best: the routing metric (which model of a pair is better: win-head accuracy) when
    # the win heads are trained, else the candidate heads' validation loss, else the difficulty MSE.
    eval_metrics = (["win_loss", "win_accuracy"] if td.use_win else []) + (
        ["candidates_loss", "candidates_mae"] if td.use_candidates else []) + (
        ["difficulty_mse"] if td.use_difficulty else [])
    stop_metric = (early_stopping.resolve_metric(cfg.run.early_stopping_metric, eval_metrics[1] if td.use_win
                                                 else eval_metrics[0], eval_metrics, RECIPE)
                   if eval_loader is not None else None)
    announce_plan(accelerator, RECIPE, total_optimizer_steps=total_optimizer_steps, steps_per_epoch=steps_per_epoch,
                  epochs=cfg.run.epochs, warmup_steps=warmup_steps_for(cfg.optim, total_optimizer_steps),
                  early_stopping=bool(cfg.run.early_stopping_patience_evals and stop_metric))

    # 6. Resume: model, optimizer, scheduler, every process's RNG, dataloader position, counters, best weights
    position, state = ctx.resume(td.data.fingerprint, batches_per_epoch)
    optimizer_step, epoch, batches_done = position.optimizer_step, position.epoch, position.batches_done_in_epoch
    guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)
    stopper = ctx.early_stopper(stop_metric, state)
    best_state = early_stopping.load_best_weights(ctx.resume_from) if ctx.resume_from is not None else None

    def save_step_checkpoint() -> Path:
        return ctx.save_checkpoint(ctx.trainer_state(Position(optimizer_step, epoch, batches_done),
                                                     td.data.fingerprint, guard, stopper),
                                   extra_files=lambda d: early_stopping.save_best_weights(best_state, d))

    # 7. Training loop
    unwrapped = accelerator.unwrap_model(router)
    progress = tqdm(total=total_optimizer_steps, initial=optimizer_step, desc=RECIPE, unit="step",
                    disable=not (accelerator.is_main_process and cfg.run.progress_bar))
    # Loss sum and count of the finite micro-batches since the last log, summed over processes at log time.
    window = torch.zeros(2, device=accelerator.device)
    window_parts: dict[str, tuple] = {}  # head -> (sum of batch losses, batches with its labels)
    last_train_loss, history = float("nan"), []
    samples_seen, loop_started = 0, time.perf_counter()
    # Length-grouped batches come longest first: project the ETA over one whole mega-batch of them.
    group_steps = (math.ceil(td.train_loader.sampler.micro_batches_per_group / accelerator.num_processes
                             / cfg.run.gradient_accumulation_steps) if cfg.data.group_by_length else 1)
    eta = EtaReporter(accelerator, RECIPE, optimizer_step, total_optimizer_steps, cfg.run.time_budget_minutes,
                      early_stopping=bool(stopper and cfg.run.early_stopping_patience_evals),
                      min_measured_steps=group_steps)
    eval_history = []
    router.train()
    while optimizer_step < total_optimizer_steps and epoch < cfg.run.epochs and not (stopper and stopper.stopped_early):
        for batch in batches_for_epoch(accelerator, train_loader, epoch, batches_done):
            with accelerator.accumulate(router):
                outputs = router(batch["input_ids"], batch["attention_mask"])
                loss, parts = difficulty_router_loss(outputs, batch, loss_weights)
                # NaN/Inf on ANY process: every process skips this optimizer step (routerforge/train/nan_guard.py).
                if nan_guard.update_allowed(guard, accelerator, loss, optimizer_step + 1):
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(router.parameters(), cfg.optim.max_grad_norm)
                    optimizer.step()  # accelerate skips it until the last micro-batch of the accumulation
                    window += torch.stack([loss.detach().float(), torch.ones((), device=accelerator.device)])
                    for name, value in parts.items():  # a head's loss: averaged over the batches with its labels
                        total, count = window_parts.get(name, (0.0, 0.0))
                        window_parts[name] = (total + value, count + (label_counts(batch)[name] > 0).float())  # no sync
                optimizer.zero_grad()  # at the window's end this also drops the gradients of a skipped step
            batches_done += 1
            samples_seen += int(batch["input_ids"].shape[0])
            if not accelerator.sync_gradients:
                continue
            skipped = nan_guard.close_optimizer_step(guard)
            scheduler.step()  # a skipped step keeps its schedule slot: the LR stays a function of the step number
            optimizer_step += 1
            progress.update(1)
            eta.observe(optimizer_step)

            if (skipped or optimizer_step % cfg.tracking.log_every_optimizer_steps == 0
                    or optimizer_step == total_optimizer_steps):
                loss_sum, loss_count = accelerator.reduce(window, reduction="sum").tolist()
                last_train_loss = loss_sum / loss_count if loss_count else float("nan")
                part_means = {}
                for name, (total, count) in window_parts.items():
                    sums = accelerator.reduce(torch.stack([total, count]).float(), reduction="sum")
                    if sums[1] > 0:  # no batch of the window held this head's labels: nothing to log
                        part_means[f"train/{name}_loss"] = (sums[0] / sums[1]).item()
                accelerator.log({"train/loss": last_train_loss, "train/lr": scheduler.get_last_lr()[0],
                                 "train/epoch": epoch, "train/skipped_nonfinite_steps": guard.skipped_steps,
                                 **part_means}, step=optimizer_step)
                history.append({"optimizer_step": optimizer_step, "train_loss": last_train_loss,
                                "skipped_nonfinite": skipped, **{k.split("/", 1)[1]: v for k, v in part_means.items()}})
                progress.set_postfix(loss=f"{last_train_loss:.4f}")
                window, window_parts = torch.zeros(2, device=accelerator.device), {}
            if (eval_loader is not None and cfg.run.eval_every_optimizer_steps
                    and optimizer_step % cfg.run.eval_every_optimizer_steps == 0):
                metrics = evaluate(accelerator, unwrapped, eval_loader)
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=optimizer_step)
                eval_history.append({"optimizer_step": optimizer_step, **metrics})
                # Every process sees the same gathered metrics, so every process takes the same branch (the
                # FSDP gather inside is a collective).
                if stopper.update(metrics, optimizer_step) and cfg.run.keep_best:
                    best_state = early_stopping.cpu_copy(full_state_dict(accelerator, router) if is_fsdp(accelerator)
                                                         else unwrapped.state_dict())
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
    return LoopOutcome(model=router, optimizer_step=optimizer_step, total_optimizer_steps=total_optimizer_steps,
                       steps_per_epoch=steps_per_epoch, last_train_loss=last_train_loss, history=history,
                       skipped_nonfinite_steps=guard.skipped_steps,
                       throughput=ctx.throughput(samples_seen, loop_seconds),
                       eval_history=eval_history, stopper=stopper, best_state=best_state), eval_loader


# ----------------------------------------------------------------------------------------------------
# 8. Final evaluation, cross-process weight check, export (main process only)
# ----------------------------------------------------------------------------------------------------
def evaluate_and_export(ctx: RunContext, trained: LoopOutcome, eval_loader, td: TrainingData, head_spec: HeadSpec,
                        frozen_unused: int) -> dict:
    cfg: DifficultyConfig = ctx.cfg
    accelerator = ctx.accelerator
    router, stopper, best_state, eval_history = trained.model, trained.stopper, trained.best_state, trained.eval_history
    unwrapped = accelerator.unwrap_model(router)
    accelerator.wait_for_everyone()
    last_step_eval = evaluate(accelerator, unwrapped, eval_loader) if eval_loader is not None else {}
    if last_step_eval:
        accelerator.log({f"eval/{k}": v for k, v in last_step_eval.items()}, step=trained.optimizer_step)
    digests = agreed_parameter_digests(accelerator, router)
    # Under FSDP2 no process holds the whole router: gather it to the main process (a collective: every process
    # calls it), which loads it into a plain copy built like section 4's and exports that (launch/README.md note 4).
    full_state = full_state_dict(accelerator, router) if is_fsdp(accelerator) else None
    final_eval, exported = last_step_eval, "last"
    if best_state is not None and cfg.run.keep_best:  # export the best evaluation's weights, not the last step's
        exported = "best"
        if full_state is not None:
            full_state = best_state
        else:
            unwrapped.load_state_dict(best_state)
            final_eval = evaluate(accelerator, unwrapped, eval_loader)
    if exported == "best" and full_state is not None:  # the gathered best weights were evaluated when recorded
        final_eval = next(e for e in eval_history if e["optimizer_step"] == stopper.best_optimizer_step)
        final_eval = {k: v for k, v in final_eval.items() if k != "optimizer_step"}
    stopping = {**stopper.to_dict(), "exported": exported, "last_step_metrics": last_step_eval,
                "eval_history": eval_history} if stopper else None
    result = ctx.result(optimizer_steps=trained.optimizer_step, metrics=final_eval, throughput=trained.throughput,
                        skipped_nonfinite_steps=trained.skipped_nonfinite_steps, early_stopping=stopping)
    if accelerator.is_main_process:
        if full_state is not None:
            unwrapped = plain_router_from_state(cfg, head_spec, full_state)
        lora, data = cfg.model.lora, td.data
        router_config = {
            "router_type": ROUTER_TYPE, "model_pool": td.model_pool, "heads": head_spec.to_dict(),
            "candidates": [c.to_dict() for c in td.candidates], "reference_model": td.reference,
            "tolerance": cfg.labels.tolerance, "pooling": cfg.model.pooling, "max_seq_tokens": cfg.model.max_seq_tokens,
            "backbone": td.backbone_info.to_dict(),
            "lora": {"r": lora.r, "alpha": lora.alpha, "merged_into_backbone": True} if lora.enabled else None,
            "difficulty_target": "1 - mean over models of the model's mean score on the prompt",
            "win_probability": "sigmoid(strength[a] - strength[b]) (Bradley-Terry on the prompt)",
        }
        # load_router's format: the heads and config.json are export_router's model.safetensors and config.json,
        # backbone/ and tokenizer/ go into the same atomic write.
        ctx.export(
            unwrapped.heads.state_dict(), router_config, router_type=ROUTER_TYPE, model_pool=td.model_pool,
            encoder=td.backbone_info.to_dict(), register=register_run_export,
            data={**dataset_facts(data), "train": td.train_examples.stats,
                  "eval": td.eval_examples.stats if td.eval_examples is not None else None},
            training={"optimizer_steps": trained.optimizer_step, "total_optimizer_steps": trained.total_optimizer_steps,
                      "epochs": cfg.run.epochs, "resumed_from": str(ctx.resume_from) if ctx.resume_from else None,
                      "trainable_parameters": sum(p.numel() for p in unwrapped.parameters() if p.requires_grad),
                      "frozen_unused_parameters": frozen_unused, "param_sha256_per_process": digests,
                      "optimizer_steps_per_epoch": trained.steps_per_epoch, "early_stopping": stopping,
                      "loss_history": trained.history, "skipped_nonfinite_steps": trained.skipped_nonfinite_steps,
                      **trained.throughput},
            metrics={"train_loss": trained.last_train_loss,
                     **{f"{cfg.data.eval_split}_{k}": v for k, v in final_eval.items()}},
            extra_files=lambda directory: save_backbone_files(unwrapped, td.tokenizer, directory))
    ctx.finish()
    return result


def main(argv: list[str] | None = None) -> dict:
    # 1. Config
    cfg = parse_recipe_args(DifficultyConfig, argv, description=__doc__.splitlines()[0])
    # 2. accelerate, run directory, resume state, tracking
    ctx = start_run(cfg, RECIPE, REPO_DIR)
    if not ctx.accelerator.is_main_process:
        transformers.utils.logging.disable_progress_bar()
    seed_for_model_init(cfg.run.seed)
    # 3. Data and backbone
    td = load_training_data(cfg, ctx.accelerator)
    # 4. Model
    router, head_spec, frozen_unused = build_router(cfg, td)
    # 5-7. Optimizer, resume, training loop
    trained, eval_loader = fit(ctx, router, td)
    # 8. Final evaluation and export
    return evaluate_and_export(ctx, trained, eval_loader, td, head_spec, frozen_unused)


if __name__ == "__main__":
    run_recipe(main)
