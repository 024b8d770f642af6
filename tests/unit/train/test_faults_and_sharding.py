"""The test-only fault hooks (routerforge/train/faults.py) and the sharding check (consistency.py)."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType

from routerforge.train import faults
from routerforge.train.consistency import refuse_sharded_weights, weights_are_sharded


def test_nonfinite_loss_hook_poisons_only_the_named_steps_and_ranks(monkeypatch):
    loss = torch.tensor(0.5, requires_grad=True)
    assert faults.maybe_make_loss_nonfinite(loss, 3, 0) is loss  # no variable: untouched
    monkeypatch.setenv(faults.NONFINITE_LOSS_STEPS_ENV, "3, 5")
    assert math.isnan(faults.maybe_make_loss_nonfinite(loss, 3, 0).item())
    assert faults.maybe_make_loss_nonfinite(loss, 4, 0) is loss
    poisoned = faults.maybe_make_loss_nonfinite(loss, 5, 1)
    assert poisoned.requires_grad and poisoned.grad_fn is not None  # still on the graph, like a real NaN
    monkeypatch.setenv(faults.NONFINITE_LOSS_VALUE_ENV, "-inf")
    assert faults.maybe_make_loss_nonfinite(loss, 3, 0).item() == float("-inf")
    monkeypatch.setenv(faults.NONFINITE_LOSS_RANKS_ENV, "1")
    assert faults.maybe_make_loss_nonfinite(loss, 3, 0) is loss
    assert faults.maybe_make_loss_nonfinite(loss, 3, 1).item() == float("-inf")
    monkeypatch.setenv(faults.NONFINITE_LOSS_VALUE_ENV, "big")
    with pytest.raises(ValueError, match="must be one of nan, inf, -inf"):
        faults.maybe_make_loss_nonfinite(loss, 3, 1)


def test_raise_at_step_is_the_in_process_crash(monkeypatch, tmp_path):
    faults.maybe_hang(tmp_path, 2, 0)  # no variable: returns
    monkeypatch.setenv(faults.RAISE_AT_STEP_ENV, "2")
    faults.maybe_hang(tmp_path, 1, 0)
    with pytest.raises(faults.InjectedCrash, match="simulated crash after optimizer step 2"):
        faults.maybe_hang(tmp_path, 2, 0)
    assert not list(tmp_path.iterdir())  # nothing written: unlike the hang, no marker is needed


@pytest.mark.parametrize(("distributed_type", "zero_stage", "sharded"), [
    (DistributedType.NO, None, False), (DistributedType.MULTI_CPU, None, False),
    (DistributedType.MULTI_GPU, None, False), (DistributedType.FSDP, None, True),
    (DistributedType.DEEPSPEED, 1, False), (DistributedType.DEEPSPEED, 2, False),
    (DistributedType.DEEPSPEED, 3, True)])
def test_which_strategies_shard_the_weights(distributed_type, zero_stage, sharded):
    assert weights_are_sharded(distributed_type, zero_stage) is sharded


def test_replicated_training_passes_the_sharding_check():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        refuse_sharded_weights(Accelerator(cpu=True), "mf")  # raises ConfigError under FSDP / ZeRO-3
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
