"""Build the `accelerate.Accelerator` of a run and seed its random number generators.

Hardware (number of processes, GPUs, CPU) comes from `accelerate launch --config_file launch/...`;
the experiment's numerics (mixed precision, gradient accumulation) from the recipe config.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from routerforge.errors import ConfigError
from routerforge.train.run_config import RunConfig, TrackingConfig


def build_accelerator(run: RunConfig, tracking: TrackingConfig, run_dir: Path) -> Accelerator:
    """An Accelerator with the run's mixed precision, gradient accumulation and tracker.

    On a machine without a GPU (or other accelerator) the Accelerator is built with `cpu=True`: then
    `accelerate launch --multi_gpu --num_processes 2` (or launch/accelerate/cpu_2proc.yaml) forms a real
    2-process CPU world over gloo. accelerate's multi-GPU launcher ignores the config file's `use_cpu`,
    and without `cpu=True` each launched worker would silently train alone (world size 1).

    The LR scheduler is NOT stepped by accelerate (`step_scheduler_with_optimizer=False`): recipes call
    `scheduler.step()` once per optimizer step themselves, so warmup and decay lengths are in optimizer
    steps whatever the number of processes (accelerate otherwise steps it `num_processes` times).
    """
    if run.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("run.mixed_precision=fp16 needs a CUDA GPU (this machine has none); use bf16 or no.")
    project_config = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        mixed_precision=run.mixed_precision,
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        log_with=None if tracking.report_to == "none" else tracking.report_to,
        project_config=project_config,
        step_scheduler_with_optimizer=False,
    )
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_world != accelerator.num_processes:
        raise ConfigError(
            f"the launcher started {launched_world} processes but accelerate formed a world of "
            f"{accelerator.num_processes}; on CPU use `accelerate launch --multi_gpu --num_processes "
            f"{launched_world}` with ACCELERATE_USE_CPU=true (or launch/accelerate/cpu_2proc.yaml).")
    return accelerator


def seed_for_model_init(seed: int) -> None:
    """Same seed on every process, so every process builds identical initial weights."""
    set_seed(seed)


def seed_for_training(seed: int, accelerator: Accelerator) -> None:
    """Process i gets seed + i: independent noise/dropout streams per process, reproducible per process.

    Call this after building the model. A resume then overwrites these streams with the ones saved in the
    checkpoint (accelerate stores one RNG file per process).
    """
    set_seed(seed, device_specific=True)


def world_description(accelerator: Accelerator) -> dict:
    """What ran where: recorded in trainer_state.json and the export manifest."""
    return {
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "device_type": accelerator.device.type,
        "mixed_precision": str(accelerator.mixed_precision),
    }


def peak_accelerator_memory_bytes() -> int | None:
    """Peak memory torch allocated on this process's CUDA device (bytes); None on CPU (see bench/ for RSS)."""
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated())
