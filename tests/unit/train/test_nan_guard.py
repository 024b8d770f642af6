"""routerforge.train.nan_guard with a real (single-process, CPU) Accelerator, optimizer and loss.

The 2-process case (one process's NaN makes every process skip) and the end-of-run behaviour of a recipe
are in tests/reliability/test_nonfinite_loss.py.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from routerforge.train import nan_guard
from routerforge.train.checkpointing import TrainerState
from routerforge.train.faults import NONFINITE_LOSS_STEPS_ENV, NONFINITE_LOSS_VALUE_ENV


def make_accelerator(accumulation: int = 1) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=True, gradient_accumulation_steps=accumulation)


@pytest.fixture(autouse=True)
def reset_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train(accelerator: Accelerator, guard: nan_guard.NonFiniteGuard, micro_batches: int):
    """A recipe's loop (as training/train_mf.py): returns weights and Adam's step count after each optimizer step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    data = torch.randn(micro_batches, 4, 3)
    after_step, optimizer_step, skipped_steps = [], 0, []
    for i in range(micro_batches):
        with accelerator.accumulate(model):
            loss = model(data[i]).pow(2).mean()
            if nan_guard.update_allowed(guard, accelerator, loss, optimizer_step + 1):
                accelerator.backward(loss)
                optimizer.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        if nan_guard.close_optimizer_step(guard):
            skipped_steps.append(optimizer_step + 1)
        optimizer_step += 1
        adam_steps = optimizer.state_dict()["state"].get(0, {}).get("step", torch.tensor(0.0)).item()
        after_step.append(({k: v.clone() for k, v in model.state_dict().items()}, adam_steps))
    return after_step, skipped_steps


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nonfinite_step_is_skipped_with_weights_and_optimizer_unchanged(monkeypatch, value):
    monkeypatch.setenv(NONFINITE_LOSS_STEPS_ENV, "3,4")
    monkeypatch.setenv(NONFINITE_LOSS_VALUE_ENV, value)
    guard = nan_guard.NonFiniteGuard(max_consecutive=5)
    after, skipped = train(make_accelerator(), guard, micro_batches=6)
    assert skipped == [3, 4]
    for step in (3, 4):  # after[i] is the state after optimizer step i + 1
        for name in after[1][0]:
            assert torch.equal(after[step - 1][0][name], after[1][0][name]), f"{name} changed in skipped step {step}"
        assert after[step - 1][1] == 2  # Adam made no update either
    assert not torch.equal(after[4][0]["weight"], after[1][0]["weight"])  # step 5 trained again
    assert after[5][1] == 4
    assert (guard.skipped_steps, guard.consecutive_skipped_steps) == (2, 0)
    assert all(torch.isfinite(t).all() for t in after[-1][0].values())


def test_a_nonfinite_micro_batch_skips_its_whole_accumulation_window(monkeypatch):
    # 2 micro-batches per optimizer step; step 2's micro-batches are 3 and 4: both poisoned by the hook,
    # but the guard must skip the step as a whole even when only its first micro-batch is bad.
    monkeypatch.setenv(NONFINITE_LOSS_STEPS_ENV, "2")
    guard = nan_guard.NonFiniteGuard(max_consecutive=5)
    after, skipped = train(make_accelerator(accumulation=2), guard, micro_batches=6)
    assert skipped == [2]
    assert torch.equal(after[1][0]["weight"], after[0][0]["weight"]) and after[1][1] == 1
    assert not torch.equal(after[2][0]["weight"], after[1][0]["weight"]) and after[2][1] == 2


def test_first_bad_micro_batch_poisons_the_rest_of_the_window():
    accelerator = make_accelerator()
    guard = nan_guard.NonFiniteGuard(max_consecutive=3)
    assert nan_guard.update_allowed(guard, accelerator, torch.tensor(1.0), 1)
    assert not nan_guard.update_allowed(guard, accelerator, torch.tensor(float("nan")), 1)
    assert not nan_guard.update_allowed(guard, accelerator, torch.tensor(1.0), 1)  # same window: still skipped
    assert nan_guard.close_optimizer_step(guard) is True
    assert nan_guard.update_allowed(guard, accelerator, torch.tensor(1.0), 2)  # next window starts clean
    assert nan_guard.close_optimizer_step(guard) is False


def test_consecutive_count_decides_when_to_stop_and_resets_on_a_good_step():
    accelerator = make_accelerator()
    guard = nan_guard.NonFiniteGuard(max_consecutive=3)
    pattern = [False, True, True, False, True, True, True]  # True: non-finite step
    stops = []
    for step, bad in enumerate(pattern, start=1):
        loss = torch.tensor(float("inf") if bad else 0.5)
        nan_guard.update_allowed(guard, accelerator, loss, step)
        nan_guard.close_optimizer_step(guard)
        stops.append(nan_guard.must_stop(guard))
    assert stops == [False, False, False, False, False, False, True]
    assert (guard.skipped_steps, guard.consecutive_skipped_steps) == (5, 3)
    error = nan_guard.stop_error(guard, 7, None)
    assert isinstance(error, nan_guard.NonFiniteLossError) and error.exit_code == 3
    assert str(error).startswith("training stopped at optimizer step 7: the loss was NaN/Inf in 3 consecutive")
    assert "run.max_consecutive_nonfinite_steps=3" in str(error) and "resume=auto" in str(error)


def test_counters_continue_from_the_resumed_checkpoint():
    saved = TrainerState(recipe="unit", optimizer_step=9, epoch=0, batches_done_in_epoch=9, world_size=1,
                         micro_batch_size=2, gradient_accumulation_steps=1, data_fingerprint="f" * 64,
                         tracking_run_id=None, seed=0, skipped_nonfinite_steps=4, consecutive_nonfinite_steps=2)
    guard = nan_guard.guard_for_run(3, saved)
    assert (guard.skipped_steps, guard.consecutive_skipped_steps, guard.max_consecutive) == (4, 2, 3)
    nan_guard.update_allowed(guard, make_accelerator(), torch.tensor(float("nan")), 10)
    nan_guard.close_optimizer_step(guard)
    assert nan_guard.must_stop(guard)  # the run that was interrupted would have stopped here too
    assert nan_guard.guard_for_run(3) == nan_guard.NonFiniteGuard(3)


def test_max_consecutive_must_be_positive():
    from routerforge.train.run_config import RunConfig

    assert RunConfig().max_consecutive_nonfinite_steps == 10
    with pytest.raises(ValueError, match="run.max_consecutive_nonfinite_steps must be >= 1, got 0"):
        RunConfig(max_consecutive_nonfinite_steps=0)
