"""A minimal training recipe on the shared core that records which sample ids every micro-batch consumed.

Used by tests/reliability/test_sample_ledger.py. It calls exactly the core functions a real recipe calls,
in the same order (training/train_mf.py): build_accelerator, build_train_loader, accelerator.prepare,
resolve_resume / load_checkpoint / normalize_position, batches_for_epoch, accumulate, save_checkpoint,
faults.maybe_hang. The dataset's items carry their own id, so the ledger is what the dataloader really
delivered to each process (not a recomputation of the sampler).

    python tests/reliability/ledger_recipe.py OUT_DIR N_SAMPLES MICRO_BATCH ACCUMULATION EPOCHS CHECKPOINT_EVERY RESUME
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml tests/reliability/ledger_recipe.py ...

Ledger: OUT_DIR/ledger/rank-R-attempt-T.jsonl (T: start time in ns), one line per micro-batch:
{"epoch", "micro_batch" (index in the epoch, per process), "optimizer_step" (the 1-based step it belongs
to), "ids"}. A run's final facts go to OUT_DIR/result-rank-R.json.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from routerforge.train import checkpointing, faults
from routerforge.train.accelerator_setup import build_accelerator, seed_for_model_init, seed_for_training
from routerforge.train.data_loading import batches_for_epoch, build_train_loader, normalize_position
from routerforge.train.entrypoint import run_recipe
from routerforge.train.run_config import RunConfig, TrackingConfig
from routerforge.train.tracking import finish_tracking

SEED = 5


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0])
    n_samples, micro_batch, accumulation, epochs, checkpoint_every = (int(v) for v in argv[1:6])
    resume = argv[6]
    run = RunConfig(name="ledger", output_dir=str(out_dir), seed=SEED, epochs=epochs, micro_batch_size=micro_batch,
                    gradient_accumulation_steps=accumulation, progress_bar=False)
    run_dir = out_dir / "ledger-run"
    accelerator = build_accelerator(run, TrackingConfig(report_to="none"), run_dir)
    resume_from = checkpointing.resolve_resume(resume, run_dir)
    seed_for_model_init(SEED)
    features = torch.randn(n_samples, 3)
    dataset = TensorDataset(torch.arange(n_samples), features)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = build_train_loader(dataset, micro_batch, SEED)
    seed_for_training(SEED, accelerator)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    batches_per_epoch = len(loader)
    total_steps = epochs * math.ceil(batches_per_epoch / accumulation)

    optimizer_step, epoch, batches_done = 0, 0, 0
    if resume_from is not None:
        state = checkpointing.load_checkpoint(accelerator, resume_from)
        optimizer_step = state.optimizer_step
        epoch, batches_done = normalize_position(state.epoch, state.batches_done_in_epoch, batches_per_epoch)

    ledger_dir = out_dir / "ledger"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    ledger_path = ledger_dir / f"rank-{accelerator.process_index}-attempt-{time.time_ns()}.jsonl"
    with open(ledger_path, "a", encoding="utf-8") as ledger:
        while optimizer_step < total_steps and epoch < epochs:
            for ids, x in batches_for_epoch(accelerator, loader, epoch, batches_done):
                ledger.write(json.dumps({"epoch": epoch, "micro_batch": batches_done,
                                         "optimizer_step": optimizer_step + 1, "ids": ids.tolist()}) + "\n")
                ledger.flush()
                with accelerator.accumulate(model):
                    loss = model(x).pow(2).mean()
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                batches_done += 1
                if not accelerator.sync_gradients:
                    continue
                optimizer_step += 1
                if checkpoint_every and optimizer_step % checkpoint_every == 0:
                    checkpointing.save_checkpoint(accelerator, run_dir, checkpointing.TrainerState(
                        recipe="ledger", optimizer_step=optimizer_step, epoch=epoch,
                        batches_done_in_epoch=batches_done, world_size=accelerator.num_processes,
                        micro_batch_size=micro_batch, gradient_accumulation_steps=accumulation,
                        data_fingerprint="ledger", tracking_run_id=None, seed=SEED), keep_last=100)
                faults.maybe_hang(run_dir, optimizer_step, accelerator.process_index)
                if optimizer_step >= total_steps:
                    break
            epoch, batches_done = epoch + 1, 0
    weights = accelerator.unwrap_model(model).weight.detach().flatten().tolist()
    (out_dir / f"result-rank-{accelerator.process_index}.json").write_text(json.dumps({
        "world_size": accelerator.num_processes, "optimizer_steps": optimizer_step,
        "batches_per_epoch": batches_per_epoch, "resumed_from": str(resume_from) if resume_from else None,
        "weights": weights}))
    finish_tracking(accelerator)


if __name__ == "__main__":
    run_recipe(main, sys.argv[1:])  # ends a 2-process run as every recipe does (entrypoint.py)
