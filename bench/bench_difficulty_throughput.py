"""Difficulty-router training throughput: training/train_difficulty.py vs. the plain HF Trainer, side by side.

    .venv/bin/python bench/bench_difficulty_throughput.py                      # CPU: tiny random-init DeBERTa-v2
    .venv/bin/python bench/bench_difficulty_throughput.py --backbone-size deberta-v3-small \\
        --micro-batch-size 32 --max-seq-tokens 128 --steps 60 --mixed-precision bf16   # a GPU, no Hub needed
    .venv/bin/python bench/bench_difficulty_throughput.py --data data/processed/demo --json out.json

Same model, data, batch size and optimizer on both sides:
  - model: `DifficultyRouter` (routerforge/models/difficulty.py) on a random-init DeBERTa-v2 built in-process
    (`random-deberta:<tiny|deberta-v3-small>:<dir>`, built once before any timing), all heads the data allows;
  - data: the same prepared dataset turned into the same per-prompt examples and padded batches
    (`build_examples`, `collate_examples`); default: real MMLU outcomes + Arena votes
    (tests/fixtures/tiny_difficulty_dataset.py, 300 MMLU questions x 2 models and 400 battles);
  - ours: `training/train_difficulty.py` main() (accelerate loop, the recipe's own logging every 10 steps,
    no step checkpoints, no evaluation); theirs: `transformers.Trainer` with the same loss (a thin wrapper
    returning the recipe's `difficulty_router_loss`), AdamW, constant LR, no clipping, logging every 10 steps,
    no saving, no evaluation.
Timed: the training loop only, from its first batch to its last optimizer step (ours: the recipe's own
`train_loop_seconds`; Trainer: `on_train_begin` .. `on_train_end` callbacks); samples = prompts that went
through a training forward pass. Each side runs in a fresh subprocess (so peak memory is its own), `--repeats`
times, alternating; the best run is reported, as is usual for throughput on a shared machine.
Peak memory: torch.cuda.max_memory_allocated on a GPU; peak RSS of the worker process on CPU.
MFU: samples/s x model FLOPs per sample (PaLM's 6N + 12LdT per token) / the GPU's dense 16-bit peak, with
bf16 or fp16 on a GPU in PEAK_TFLOPS_16BIT.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
TINY_CONFIG = REPO_ROOT / "configs" / "difficulty" / "tiny.yaml"
LOG_EVERY = 10
LEARNING_RATE = 1e-4


# Dense bf16/fp16 tensor-core peak of NVIDIA parts (TFLOP/s, the data sheets' figures without sparsity), matched
# against torch.cuda.get_device_name in this order; MFU is reported only for these.
PEAK_TFLOPS_16BIT = (("H100 PCIe", 756.0), ("H200", 989.4), ("H100", 989.4), ("A100", 312.0))


def peak_tflops(device: str, mixed_precision: str) -> float | None:
    if mixed_precision not in ("bf16", "fp16"):
        return None
    return next((tflops for key, tflops in PEAK_TFLOPS_16BIT if key in device), None)


def model_flops_per_sample(backbone, token_counts: list[int]) -> float:
    """Training FLOPs per prompt (forward + backward), PaLM's estimate (Chowdhery et al. 2022, appendix B):
    6 N + 12 L d T per token, N the non-embedding parameters, L layers, d hidden size, T the prompt's own
    length (padding not counted). DeBERTa's disentangled-attention terms are left out: a lower bound."""
    config = backbone.config
    n_params = sum(p.numel() for name, p in backbone.named_parameters() if "embeddings" not in name)
    per_prompt = [t * (6 * n_params + 12 * config.num_hidden_layers * config.hidden_size * t) for t in token_counts]
    return sum(per_prompt) / len(per_prompt)


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def recipe_argv(args, out_dir: str) -> list[str]:
    return ["--config", str(TINY_CONFIG), f"data.path={args.data}", f"run.output_dir={out_dir}",
            f"model.backbone={args.backbone}", f"model.max_seq_tokens={args.max_seq_tokens}",
            f"run.micro_batch_size={args.micro_batch_size}", f"run.max_optimizer_steps={args.steps}",
            "run.epochs=1000", f"run.mixed_precision='{args.mixed_precision}'", "run.seed=0", "data.eval_split=",
            "checkpoint.every_optimizer_steps=0", "tracking.report_to=none",
            f"tracking.log_every_optimizer_steps={LOG_EVERY}", f"optim.lr={LEARNING_RATE}", "optim.max_grad_norm=0"]


def run_ours(args) -> dict:
    from tests.fixtures.recipe_runner import load_recipe_module

    with tempfile.TemporaryDirectory() as out_dir:
        result = load_recipe_module("train_difficulty").main(recipe_argv(args, out_dir))
    return {"samples": result["throughput"]["train_samples"], "seconds": result["throughput"]["train_loop_seconds"],
            "optimizer_steps": result["optimizer_steps"]}


def run_trainer(args) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from routerforge.data.dataset_io import load_prepared
    from routerforge.models.difficulty import (
        DifficultyHeads,
        DifficultyRouter,
        HeadSpec,
        LossWeights,
        difficulty_router_loss,
        freeze_unused_parameters,
        load_backbone,
    )
    from routerforge.models.difficulty_data import (
        build_examples,
        candidates_for,
        choose_reference_model,
        collate_examples,
        outcome_samples,
    )

    torch.manual_seed(0)
    data = load_prepared(args.data)
    backbone, tokenizer, _ = load_backbone(args.backbone)
    pool = list(data.models)
    outcomes = data.outcomes["train"] if len(data.outcomes["train"]) else None
    pairs = data.pairs["train"] if len(data.pairs["train"]) else None
    reference, candidates = None, []
    if outcomes is not None:  # the recipe's defaults: strongest model as reference, best_of_n [1]
        _, samples = outcome_samples(outcomes)
        reference = choose_reference_model(samples, pool, None, "train")
        candidates = candidates_for(pool, samples, reference, [1])
    examples = build_examples(outcomes, pairs, tokenizer=tokenizer, max_seq_tokens=args.max_seq_tokens,
                              model_index={m: i for i, m in enumerate(pool)}, candidates=candidates,
                              reference=reference, tolerance=0.0, ties="drop", use_source_weights=True, where="train")
    collate = collate_examples(tokenizer.pad_token_id)
    spec = HeadSpec(backbone.config.hidden_size, len(candidates), outcomes is not None,
                    len(pool) if pairs is not None else 0, 0.1)
    router = DifficultyRouter(backbone, DifficultyHeads(spec), "cls")
    freeze_unused_parameters(router, collate([examples[0], examples[1]]))
    weights = LossWeights(1.0, 1.0, 1.0)
    seen = {"samples": 0}

    class LossWrapper(torch.nn.Module):
        """What Trainer expects: forward(**batch) -> {"loss": ...}; the loss is the recipe's."""

        accepts_loss_kwargs = False  # the loss is already a mean: Trainer must not pass num_items_in_batch

        def __init__(self, inner: DifficultyRouter) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **batch):
            if self.training:
                seen["samples"] += int(batch["input_ids"].shape[0])
            outputs = self.inner(batch["input_ids"], batch["attention_mask"])
            loss, _ = difficulty_router_loss(outputs, batch, weights)
            return {"loss": loss}

    class LoopTimer(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_train_end(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.started

    with tempfile.TemporaryDirectory() as out_dir:
        training_args = TrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=args.micro_batch_size, max_steps=args.steps,
            learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            optim="adamw_torch", max_grad_norm=0.0, logging_steps=LOG_EVERY, save_strategy="no", eval_strategy="no",
            report_to=[], disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0,
            bf16=args.mixed_precision == "bf16", fp16=args.mixed_precision == "fp16",
            use_cpu=not torch.cuda.is_available())
        timer = LoopTimer()
        trainer = Trainer(model=LossWrapper(router), args=training_args, train_dataset=examples,
                          data_collator=collate, callbacks=[timer])
        trainer.train()
    return {"samples": seen["samples"], "seconds": timer.seconds, "optimizer_steps": trainer.state.global_step,
            "model_flops_per_sample": model_flops_per_sample(backbone, [len(ids) for ids in examples.input_ids])}


def worker(args) -> None:
    started = time.perf_counter()
    result = run_ours(args) if args.worker == "ours" else run_trainer(args)
    result.update(samples_per_second=result["samples"] / result["seconds"], peak_memory_mib=peak_memory_mib(),
                  process_seconds=time.perf_counter() - started)
    print("RESULT " + json.dumps(result), flush=True)


def prepare_inputs(args) -> None:
    """Build the dataset and the backbone once, before anything is timed."""
    from routerforge.models.tiny_backbones import ensure_random_deberta

    work = Path(args.work_dir)
    if args.data is None:
        from tests.fixtures.tiny_difficulty_dataset import build_tiny_difficulty_dataset

        args.data = str(build_tiny_difficulty_dataset(work / "data", per_subject=60, n_pairs=400))
    if args.backbone is None:
        directory = ensure_random_deberta(args.backbone_size, work / "backbones" / args.backbone_size)
        args.backbone = f"random-deberta:{args.backbone_size}:{directory}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone-size", choices=("tiny", "deberta-v3-small", "deberta-v3-base"), default="tiny",
                        help="random-init DeBERTa-v2 preset (routerforge/models/tiny_backbones.py)")
    parser.add_argument("--backbone", default=None, help="any model.backbone spec instead of --backbone-size")
    parser.add_argument("--data", default=None, help="a prepared dataset (default: build the real tiny one)")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="prompts per step, both sides")
    parser.add_argument("--max-seq-tokens", type=int, default=64, help="truncation length (tokens)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; the best is reported")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "checkpoints" / "bench_difficulty"),
                        help="where the dataset and the backbone are built (reused across runs)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", choices=("ours", "trainer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    prepare_inputs(args)
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WANDB_API_KEY", None)
    worker_args = [f"--backbone={args.backbone}", f"--data={args.data}", f"--micro-batch-size={args.micro_batch_size}",
                   f"--max-seq-tokens={args.max_seq_tokens}", f"--steps={args.steps}",
                   f"--mixed-precision={args.mixed_precision}", f"--work-dir={args.work_dir}"]
    runs: dict[str, list[dict]] = {"ours": [], "trainer": []}
    for _ in range(args.repeats):
        for side in ("ours", "trainer"):
            proc = subprocess.run([sys.executable, __file__, "--worker", side, *worker_args], cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{side} worker failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
            runs[side].append(json.loads(line[len("RESULT "):]))
    best = {side: max(results, key=lambda r: r["samples_per_second"]) for side, results in runs.items()}

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"difficulty-router training throughput on {device}: backbone {args.backbone}, micro-batch "
          f"{args.micro_batch_size}, max {args.max_seq_tokens} tokens, {args.steps} steps, mixed precision "
          f"{args.mixed_precision}, best of {args.repeats}")
    memory = "peak GPU MiB" if torch.cuda.is_available() else "peak RSS MiB"
    print(f"{'':24}{'samples/s':>10}{'samples':>9}{'loop s':>9}{memory:>14}")
    for side, label in (("ours", "train_difficulty.py"), ("trainer", "HF Trainer")):
        r = best[side]
        print(f"{label:24}{r['samples_per_second']:>10.1f}{r['samples']:>9}{r['seconds']:>9.2f}"
              f"{r['peak_memory_mib']:>14.0f}")
    ratio = best["ours"]["samples_per_second"] / best["trainer"]["samples_per_second"]
    print(f"ours / Trainer: {ratio:.2f}x samples/s")
    # Both sides train the same model on the same examples: the Trainer worker's FLOPs estimate serves both.
    flops_per_sample = best["trainer"]["model_flops_per_sample"]
    peak = peak_tflops(device, args.mixed_precision)
    mfu = {side: best[side]["samples_per_second"] * flops_per_sample / (peak * 1e12) if peak else None
           for side in best}
    if peak:
        print(f"MFU (PaLM estimate vs. {peak:.0f} TFLOP/s peak): ours {mfu['ours']:.1%}, Trainer {mfu['trainer']:.1%}")
    else:
        print(f"MFU: not computed ({device} with mixed precision '{args.mixed_precision}' has no peak in the table)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "config": vars(args), "runs": runs, "best": best,
                                               "ours_over_trainer": ratio, "model_flops_per_sample": flops_per_sample,
                                               "peak_tflops": peak, "mfu": mfu}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
