"""Optimizer and learning-rate schedule from an `OptimConfig`.

The schedule is in OPTIMIZER steps: recipes call `scheduler.step()` once per optimizer step (the
Accelerator is built with `step_scheduler_with_optimizer=False`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from routerforge.train.run_config import OptimConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: OptimConfig,
                    weight_decay: float | None = None) -> torch.optim.Optimizer:
    """Adam (coupled L2, as RouteLLM's MF training) or AdamW; `weight_decay` overrides the config's."""
    decay = config.weight_decay if weight_decay is None else weight_decay
    optimizer_cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return optimizer_cls(list(parameters), lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                         weight_decay=decay)


def warmup_steps_for(config: OptimConfig, total_optimizer_steps: int) -> int:
    """Warmup length in optimizer steps: `warmup_fraction` of the run when set, else `warmup_optimizer_steps`."""
    if config.warmup_fraction is not None:
        return int(round(config.warmup_fraction * total_optimizer_steps))
    return config.warmup_optimizer_steps


def lr_multiplier(optimizer_step: int, config: OptimConfig, total_optimizer_steps: int) -> float:
    """Factor applied to `config.lr` for the update made at `optimizer_step` (0-based)."""
    warmup = warmup_steps_for(config, total_optimizer_steps)
    if optimizer_step < warmup:
        return (optimizer_step + 1) / warmup
    if config.lr_schedule == "constant":
        return 1.0
    decay_steps = max(1, total_optimizer_steps - warmup)
    progress = min(1.0, (optimizer_step - warmup) / decay_steps)
    if config.lr_schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_optimizer_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, config, total_optimizer_steps))
