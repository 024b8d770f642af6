"""Build the `accelerate.Accelerator` of a run and seed its random number generators.

Hardware (number of processes, GPUs, CPU) comes from `accelerate launch --config_file launch/...`;
the experiment's numerics (mixed precision, gradient accumulation) from the recipe config.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, ProjectConfiguration, set_seed

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

    FSDP on CPU: accelerate 1.15 turns an FSDP launch config into FSDP only on accelerators; on a CPU
    world it silently trains with DDP instead. `shard_cpu_world_if_asked` makes such a run real FSDP2
    over gloo (launch/accelerate/fsdp_cpu_2proc.yaml), so the sharded code paths run and are tested here.
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
    check_launched_world(accelerator.num_processes)
    shard_cpu_world_if_asked(accelerator, run.mixed_precision)
    if accelerator.device.type == "cpu":
        threads = cpu_threads_for(run.cpu_threads_per_process, accelerator.num_processes)
        if threads is not None:
            torch.set_num_threads(threads)
    return accelerator


def cpu_threads_for(configured: int | None, num_processes: int, environ: dict | None = None) -> int | None:
    """torch threads a CPU process should use, or None to keep what the launcher set.

    `accelerate launch` without `--num_cpu_threads_per_process` (and without a GPU config) exports
    OMP_NUM_THREADS=1, so a single-process CPU run leaves every core but one idle. When the process was
    started by `accelerate launch` (its ACCELERATE_* variables are set), runs alone and got exactly that
    default, it uses every core available to it instead. An explicit run.cpu_threads_per_process wins.
    """
    environ = os.environ if environ is None else environ
    if configured is not None:
        return configured
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in environ
    if launched_by_accelerate and num_processes == 1 and environ.get("OMP_NUM_THREADS") == "1":
        return len(os.sched_getaffinity(0))
    return None


def check_launched_world(formed: int, who: str = "accelerate") -> None:
    """ConfigError unless the world `who` formed has as many processes as the launcher started (WORLD_SIZE)."""
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_world != formed:
        raise ConfigError(
            f"the launcher started {launched_world} processes but {who} formed a world of {formed}; on CPU use "
            f"`accelerate launch --multi_gpu --num_processes {launched_world}` with ACCELERATE_USE_CPU=true (or "
            f"launch/accelerate/cpu_2proc.yaml).")


def shard_cpu_world_if_asked(accelerator: Accelerator, mixed_precision: str) -> None:
    """Switch a multi-process CPU world to FSDP2 when the launch config asked for FSDP (ACCELERATE_USE_FSDP).

    accelerate's AcceleratorState adopts an FSDP plugin only for accelerator worlds (MULTI_GPU, ...); for
    MULTI_CPU it keeps DDP without a word. torch's FSDP2 (`fully_shard`) itself runs on CPU over gloo, so
    we set the distributed type and the plugin (built from the FSDP_* variables `accelerate launch` exports)
    on the shared state, as accelerate would on GPUs; `prepare` then shards exactly as it does there.
    Only FSDP2 is supported this way (FSDP1 needs a CUDA device id).
    """
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not wants_fsdp or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_VERSION, FSDP_AUTO_WRAP_POLICY, ... from the environment
    if plugin.fsdp_version != 2:
        raise ConfigError(f"FSDP on CPU runs only with fsdp_version: 2 (the launch config has {plugin.fsdp_version}); "
                          f"see launch/accelerate/fsdp_cpu_2proc.yaml.")
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    # As AcceleratorState.__init__ does for GPUs: every later AcceleratorState() (accelerate's set_seed makes one)
    # copies PartialState's fields over its own, so the type must be changed there too.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


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
