"""Say how long a run will be before it is long: planned optimizer steps, warmup, and an ETA.

Defaults sized for a small demo can mean hours on a user's real table, and a warmup longer than the whole
run means the learning rate never reaches its target. Both are silent in a plain loop, so every iterative
recipe prints its plan before the first step (and warns about such a warmup), then, once the first steps
have been timed, the projected duration and whether it exceeds `run.time_budget_minutes` (a warning: the
run continues).
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone

from accelerate import Accelerator

from routerforge.train.run_config import RunConfig

ETA_AFTER_SECONDS = 5.0  # time enough steps to extrapolate, yet tell the user early
ETA_AFTER_FRACTION = 0.1  # ... or this share of the run, whichever comes first


def warmup_warning(warmup_steps: int, total_optimizer_steps: int) -> str | None:
    if warmup_steps and warmup_steps >= total_optimizer_steps:
        return (f"warning: the LR warmup ({warmup_steps} optimizer steps) is as long as the whole run "
                f"({total_optimizer_steps} steps): the learning rate never reaches optim.lr. Set "
                f"optim.warmup_fraction (e.g. 0.1) or lower optim.warmup_optimizer_steps.")
    return None


def optimizer_steps_for(run: RunConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps per epoch, optimizer steps of the run): an optimizer step every
    run.gradient_accumulation_steps micro-batches and at each epoch's end, capped by run.max_optimizer_steps."""
    steps_per_epoch = math.ceil(batches_per_epoch / run.gradient_accumulation_steps)
    total_optimizer_steps = run.epochs * steps_per_epoch
    if run.max_optimizer_steps is not None:
        total_optimizer_steps = min(total_optimizer_steps, run.max_optimizer_steps)
    return steps_per_epoch, total_optimizer_steps


def announce_plan(accelerator: Accelerator, recipe: str, *, total_optimizer_steps: int, steps_per_epoch: int,
                  epochs: int, warmup_steps: int, early_stopping: bool) -> None:
    """Print the run's length (main process) and warn about a warmup that covers the whole run."""
    upper = "at most " if early_stopping else ""
    accelerator.print(f"{recipe}: {upper}{total_optimizer_steps:,} optimizer steps planned ({epochs} epoch(s) x "
                      f"{steps_per_epoch:,} steps, {accelerator.num_processes} process(es)), LR warmup "
                      f"{warmup_steps:,} steps", flush=True)
    warning = warmup_warning(warmup_steps, total_optimizer_steps)
    if warning:
        accelerator.print(warning, flush=True)


class EtaReporter:
    """Prints, once, the projected duration of the remaining steps and a budget warning (main process)."""

    def __init__(self, accelerator: Accelerator, recipe: str, first_step: int, total_optimizer_steps: int,
                 budget_minutes: float | None, early_stopping: bool = False, min_measured_steps: int = 1) -> None:
        """`min_measured_steps`: time at least this many steps after the first before projecting. Batches grouped
        by length come longest first, then shorter within each mega-batch: a projection from the first steps
        alone would be far too long, one over a whole mega-batch is representative."""
        self.accelerator = accelerator
        self.min_measured_steps = max(1, min_measured_steps)
        self.recipe = recipe
        self.first_step = first_step
        self.total = total_optimizer_steps
        self.budget_minutes = budget_minutes
        self.early_stopping = early_stopping
        self.started = time.perf_counter()
        self.timed_from: tuple[int, float] | None = None  # (step, clock) after the first step
        self.reported = False

    def observe(self, optimizer_step: int) -> str | None:
        """Call after each optimizer step; returns (and prints) the report the first time it is due.

        The rate is measured from the end of the first step on: the first step pays one-time costs (lazy
        imports, allocator warm-up) that would inflate the projection.
        """
        if self.reported:
            return None
        now = time.perf_counter()
        if self.timed_from is None:
            self.timed_from = (optimizer_step, now)
            return None
        timed_step, timed_clock = self.timed_from
        done, elapsed = optimizer_step - timed_step, now - timed_clock
        measurable = min(self.min_measured_steps, self.total - timed_step)  # a short run: all of it
        if done < measurable or (elapsed < ETA_AFTER_SECONDS
                                 and done < ETA_AFTER_FRACTION * (self.total - self.first_step)):
            return None
        self.reported = True
        remaining_seconds = elapsed / done * (self.total - optimizer_step)
        finish = datetime.now(timezone.utc) + timedelta(seconds=remaining_seconds)
        upper = "at most " if self.early_stopping else ""
        message = (f"{self.recipe}: {done:,} optimizer steps in {elapsed:.1f} s; the remaining "
                   f"{self.total - optimizer_step:,} would take {upper}~{remaining_seconds / 60:.1f} min (ETA "
                   f"{finish:%H:%M} UTC; evaluations and checkpoints not included)")
        projected_minutes = (now - self.started + remaining_seconds) / 60
        if self.budget_minutes is not None and projected_minutes > self.budget_minutes:
            advice = ("early stopping may end it sooner" if self.early_stopping else
                      "or enable early stopping (run.early_stopping_patience_evals)")
            message += (f"\nwarning: the projected training time, {upper}{projected_minutes:.1f} min, exceeds "
                        f"run.time_budget_minutes={self.budget_minutes:g}; lower run.epochs or "
                        f"run.max_optimizer_steps, raise run.micro_batch_size; {advice}. The run continues.")
        self.accelerator.print(message, flush=True)
        return message
