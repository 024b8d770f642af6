"""Skip optimizer steps whose loss is NaN or Inf, on every process together, and stop a diverged run cleanly.

A single non-finite loss back-propagates NaN into every gradient, and one optimizer step then writes NaN
into every weight (and Adam's moments): the run is lost, and with data parallelism the poison reaches
every replica through the gradient all-reduce. So the loss is checked BEFORE backward:

- `update_allowed(guard, accelerator, loss, optimizer_step + 1)` is called on every process for every
  micro-batch. It all-reduces one "non-finite" flag, so every process gets the same answer even when
  only one process's batch produced the NaN (a process that skipped alone would desynchronise DDP's
  gradient all-reduce and hang or drift the replicas). False means: do not call backward / clip /
  optimizer.step for this micro-batch. Once a micro-batch of an accumulation window is non-finite,
  the rest of the window is skipped too, and the recipe's `optimizer.zero_grad()` at the window's last
  micro-batch drops what the window had accumulated: the optimizer step is skipped as a whole.
- `close_optimizer_step(guard)` is called once per optimizer step (where `accelerator.sync_gradients`):
  it returns whether that step was skipped and updates the counters.
  A skipped step still consumes its micro-batches, its LR-schedule slot and its optimizer-step number
  (so checkpoint/log cadence and the schedule stay functions of the step number, and a resumed run
  lines up with an uninterrupted one); the weights and the optimizer state stay exactly as they were.
- `must_stop(guard)`: after `run.max_consecutive_nonfinite_steps` skipped steps IN A ROW the run is
  diverging, not hitting a rare bad batch. The recipe then saves a step checkpoint (the last good
  weights, at the position after the skipped steps), ends tracking, and raises
  `NonFiniteLossError` from `stop_error(...)`: one line on stderr and exit status 3 (distinct from the
  exit 2 of a config or data error). Lower `optim.lr` or fix the data, then `resume=auto`.

The counters live in trainer_state.json (`skipped_nonfinite_steps`, `consecutive_nonfinite_steps`), so a
resumed run keeps counting where the checkpoint left off. Cost: one scalar all-reduce and one
device-to-host sync per micro-batch.

Mixed precision: with fp16, accelerate's GradScaler already skips steps whose GRADIENTS overflow; this
guard looks at the LOSS and works with every precision. DeepSpeed: `accelerator.backward` also runs the
engine's step, so with gradient accumulation > 1 a skipped micro-batch shifts DeepSpeed's accumulation
boundary; use gradient_accumulation_steps=1 there or rely on DeepSpeed's own loss scaler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from routerforge.errors import RouterForgeError
from routerforge.train import faults
from routerforge.train.checkpointing import TrainerState

NONFINITE_EXIT_CODE = 3


class NonFiniteLossError(RouterForgeError):
    """Too many consecutive optimizer steps had a NaN/Inf loss: the run stopped, with a checkpoint."""

    exit_code = NONFINITE_EXIT_CODE


@dataclass
class NonFiniteGuard:
    """Counters of one run (mutable: the loop updates them; they are saved in every step checkpoint)."""

    max_consecutive: int  # run.max_consecutive_nonfinite_steps
    skipped_steps: int = 0  # optimizer steps skipped so far in this run (all of them)
    consecutive_skipped_steps: int = 0  # skipped steps in a row up to the last closed step
    window_is_nonfinite: bool = False  # a micro-batch of the open accumulation window was non-finite


def guard_for_run(max_consecutive: int, resumed_state: TrainerState | None = None) -> NonFiniteGuard:
    """A fresh guard, or one that continues the counters of the checkpoint being resumed."""
    if resumed_state is None:
        return NonFiniteGuard(max_consecutive)
    return NonFiniteGuard(max_consecutive, skipped_steps=resumed_state.skipped_nonfinite_steps,
                          consecutive_skipped_steps=resumed_state.consecutive_nonfinite_steps)


def loss_is_finite_on_every_process(accelerator: Accelerator, loss: torch.Tensor) -> bool:
    """True when no process's `loss` holds a NaN or Inf (a collective: call it on every process)."""
    nonfinite = (~torch.isfinite(loss.detach())).any().to(device=accelerator.device, dtype=torch.float32)
    return accelerator.reduce(nonfinite, reduction="sum").item() == 0


def update_allowed(guard: NonFiniteGuard, accelerator: Accelerator, loss: torch.Tensor,
                   optimizer_step_in_progress: int) -> bool:
    """Whether this micro-batch may run backward/clip/optimizer.step; the same answer on every process.

    `optimizer_step_in_progress` is the 1-based number of the optimizer step this micro-batch belongs to
    (`optimizer_step + 1` in the recipes' loop); the test-only fault hook uses it.
    """
    if guard.window_is_nonfinite:  # every process already agreed that this window is lost
        return False
    loss = faults.maybe_make_loss_nonfinite(loss, optimizer_step_in_progress, accelerator.process_index)
    if loss_is_finite_on_every_process(accelerator, loss):
        return True
    guard.window_is_nonfinite = True
    return False


def close_optimizer_step(guard: NonFiniteGuard) -> bool:
    """Call once per optimizer step (when `accelerator.sync_gradients`); True if the step was skipped."""
    skipped = guard.window_is_nonfinite
    guard.window_is_nonfinite = False
    if skipped:
        guard.skipped_steps += 1
        guard.consecutive_skipped_steps += 1
    else:
        guard.consecutive_skipped_steps = 0
    return skipped


def must_stop(guard: NonFiniteGuard) -> bool:
    return guard.consecutive_skipped_steps >= guard.max_consecutive


def stop_error(guard: NonFiniteGuard, optimizer_step: int, checkpoint_dir: Path | None) -> NonFiniteLossError:
    """The one-line error a recipe raises after saving its checkpoint when `must_stop`."""
    saved = (f"the last good weights are in {checkpoint_dir}" if checkpoint_dir is not None
             else "no checkpoint was written")
    return NonFiniteLossError(
        f"training stopped at optimizer step {optimizer_step}: the loss was NaN/Inf in "
        f"{guard.consecutive_skipped_steps} consecutive optimizer steps (run.max_consecutive_nonfinite_steps="
        f"{guard.max_consecutive}; {guard.skipped_steps} skipped in this run); {saved}. Lower optim.lr, set "
        f"optim.max_grad_norm or check the data, then continue with resume=auto.")
