"""Cross-process checks: after data-parallel training every process must hold the same weights.

DDP keeps replicas in sync by averaging gradients; a bug (a parameter updated outside the backward
pass, a rank-dependent branch) silently lets them drift. `parameter_digests` gathers a sha256 of each
process's parameters so the recipe can fail loudly and record the agreement in the export manifest.
"""

from __future__ import annotations

import hashlib

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def parameter_digests(accelerator: Accelerator, model: torch.nn.Module) -> list[str]:
    """The digest of every process's (unwrapped) model, indexed by process (call on every process)."""
    return list(gather_object([parameter_digest(accelerator.unwrap_model(model))]))
