"""Models under FSDP2: a frozen model sharded like the trained ones, and whole weights for local generation.

Under FSDP2 no process holds a whole model: every forward pass of an FSDP unit all-gathers its
parameters, a collective that every process must enter the same number of times. A PPO rollout breaks
that: each process's episodes take a different number of turns, `generate` calls and tokens, so a
sharded `generate` would hang. (transformers switches `synced_gpus` on for FSDP2 modules, which keeps
processes in step only WITHIN one call, by an all-reduce per token: that hangs too when one process makes
more calls; so generate locally with `synced_gpus=False`.) `gathered_for_generation` therefore
all-gathers the model once, lets each process generate locally, and reshards afterwards: each device holds
the whole actor during rollouts (6 GB for a 3B policy in bf16), the price TRL's
`unwrap_model_for_generation` pays under DeepSpeed ZeRO-3 too.

Outside FSDP (one process, DDP) every function here is the plain operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def fsdp_units(model: torch.nn.Module) -> list[FSDPModule]:
    """Every FSDP2 unit of `model` (the decoder layers and the root), in module order."""
    return [module for module in model.modules() if isinstance(module, FSDPModule)]


@contextmanager
def gathered_for_generation(model: torch.nn.Module, accelerator: Accelerator) -> Iterator[None]:
    """Inside: `model` holds its whole weights on every process and runs forward passes without collectives.

    Entering and leaving are collectives (one all-gather per unit, in module order, on every process); what
    happens in between may differ between processes: number of `generate` calls, their lengths, none at all.
    Use it under `torch.no_grad()`: a backward pass in between would reduce-scatter gradients.
    """
    units = fsdp_units(model) if is_fsdp(accelerator) else []
    if not units:
        yield
        return
    # FSDP2 makes the first unit that runs forward the root. `generate` of a PEFT model runs forward on the
    # wrapped base model, so an inner unit would become the root and the next training forward through the
    # real root fails ("requires running forward through the root module first"). Settle the root now (local:
    # no communication; what the root's first forward would do).
    units[0]._get_fsdp_state()._lazy_init()
    for unit in units:
        unit.unshard()
    units[0].set_reshard_after_forward(False, recurse=True)  # keep the gathered weights across forward passes
    try:
        yield
    finally:
        units[0].set_reshard_after_forward(bool(accelerator.state.fsdp_plugin.reshard_after_forward), recurse=True)
        for unit in units:
            unit.reshard()


def place_frozen_model(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """A model that is never trained (PPO's reference), placed like the trained ones.

    Under FSDP2 it is sharded with the run's plugin (TRL's `prepare_fsdp`, which GRPOTrainer uses for its
    reference model): every process keeps 1/N of it, and its forward passes are collectives, so every
    process must run the same number of them. Otherwise it is moved to the device whole.
    """
    if is_fsdp(accelerator):
        from trl.models import prepare_fsdp

        return prepare_fsdp(model, accelerator)
    return model.to(accelerator.device)


def full_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the main process (an empty dict elsewhere under FSDP2).

    A collective under FSDP / ZeRO-3: call it on every process. accelerate gathers (FSDP2: torch's
    `get_model_state_dict(full_state_dict=True, cpu_offload=True)`); without sharding it is the unwrapped
    model's state dict.
    """
    return accelerator.get_state_dict(model, unwrap=True)
