"""Cross-process checks: after data-parallel training every process must hold the same weights.

DDP keeps replicas in sync by averaging gradients; a bug (a parameter updated outside the backward
pass, a rank-dependent branch) silently lets them drift. `parameter_digests` gathers a sha256 of each
process's parameters so the recipe can fail loudly and record the agreement in the export manifest.
"""

from __future__ import annotations

import hashlib

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from torch.distributed.tensor import DTensor

from routerforge.errors import ConfigError


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes, in state-dict order.

    A sharded (FSDP2) model's DTensors are gathered whole first: a collective, so under FSDP call this on
    every process; the digest is then that of the full model, the same on every process.
    """
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def parameter_digests(accelerator: Accelerator, model: torch.nn.Module) -> list[str]:
    """The digest of every process's (unwrapped) model, indexed by process (call on every process)."""
    return list(gather_object([parameter_digest(accelerator.unwrap_model(model))]))


def agreed_parameter_digests(accelerator: Accelerator, model: torch.nn.Module, what: str = "weights") -> list[str]:
    """`parameter_digests`, and a RuntimeError when the processes disagree (data-parallel training went out of
    sync); `what` names the model in the message ("actor weights")."""
    digests = parameter_digests(accelerator, model)
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes ended with different {what} (sha256 per process: {digests}); "
                           f"data-parallel training went out of sync.")
    return digests


def weights_are_sharded(distributed_type: DistributedType, zero_stage: int | None = None) -> bool:
    """True when no process holds the whole model: FSDP, or DeepSpeed ZeRO stage 3.

    Then a per-process digest compares shards, not replicas, and `model.state_dict()` on one process is
    not the model: export through `accelerator.get_state_dict(model)` (a collective) instead.
    ZeRO-1/2 shard only the optimizer state (and gradients); the parameters stay replicated.
    """
    if distributed_type == DistributedType.FSDP:
        return True
    return distributed_type == DistributedType.DEEPSPEED and zero_stage == 3


def refuse_sharded_weights(accelerator: Accelerator, recipe: str) -> None:
    """For recipes whose model is small enough to replicate (MF): a clear error at start-up under FSDP /
    ZeRO-3 instead of a weight-digest mismatch after the whole run."""
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type == DistributedType.DEEPSPEED else None
    if weights_are_sharded(accelerator.distributed_type, plugin.zero_stage if plugin is not None else None):
        raise ConfigError(
            f"recipe {recipe} keeps its whole (small) model on every process and checks that the replicas agree; "
            f"{accelerator.distributed_type.value} shards the weights. Launch it with launch/accelerate/ddp_8gpu.yaml "
            f"(or deepspeed_zero2.yaml) instead; sharding pays off only for the transformer recipes.")
