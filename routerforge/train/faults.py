"""Test-only fault injection, read from environment variables (never set them in real runs).

The reliability tests (tests/reliability/) need the recipe to fail at an exact, reproducible point.
Instead of racing a fast tiny run with a timer, the test sets one of these variables; the recipe
reaches the point and fails there the way a real crash, preemption, OOM kill or divergence would.

ROUTERFORGE_FAULT_HANG_AT_OPTIMIZER_STEP=N
    After optimizer step N (and its checkpoint, if one is due), every process writes its PID to
    `<run_dir>/.fault-hang-step-N-rank-R` and sleeps forever, so the test can SIGKILL it between
    checkpoints knowing exactly how far it got.
ROUTERFORGE_FAULT_RAISE_AT_OPTIMIZER_STEP=N
    At the same point, raise `InjectedCrash` instead: the in-process twin of the hang + SIGKILL (the
    recipe writes nothing after the point either way), for fast single-process tests.
ROUTERFORGE_FAULT_KILL_BEFORE_COMPLETE=N
    While saving the step-N checkpoint, the main process SIGKILLs itself after every state file is
    written but before the COMPLETE marker: the crash-during-save case.
ROUTERFORGE_FAULT_NONFINITE_LOSS_AT_OPTIMIZER_STEPS=N[,M,...]
    The loss of every micro-batch that belongs to optimizer step N (1-based: the step being computed)
    becomes non-finite before the NaN/Inf guard (routerforge/train/nan_guard.py) looks at it.
    ROUTERFORGE_FAULT_NONFINITE_LOSS_VALUE=nan|inf|-inf picks the value (default nan);
    ROUTERFORGE_FAULT_NONFINITE_LOSS_RANKS=R[,S,...] poisons only those processes (default: all), to
    check that one process's NaN makes every process skip the step.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

HANG_AT_STEP_ENV = "ROUTERFORGE_FAULT_HANG_AT_OPTIMIZER_STEP"
RAISE_AT_STEP_ENV = "ROUTERFORGE_FAULT_RAISE_AT_OPTIMIZER_STEP"
KILL_BEFORE_COMPLETE_ENV = "ROUTERFORGE_FAULT_KILL_BEFORE_COMPLETE"
NONFINITE_LOSS_STEPS_ENV = "ROUTERFORGE_FAULT_NONFINITE_LOSS_AT_OPTIMIZER_STEPS"
NONFINITE_LOSS_VALUE_ENV = "ROUTERFORGE_FAULT_NONFINITE_LOSS_VALUE"
NONFINITE_LOSS_RANKS_ENV = "ROUTERFORGE_FAULT_NONFINITE_LOSS_RANKS"
_NONFINITE_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


class InjectedCrash(Exception):
    """Raised by ROUTERFORGE_FAULT_RAISE_AT_OPTIMIZER_STEP: a simulated crash (not a RouterForgeError)."""


def _step_from_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _ints_from_env(name: str) -> set[int] | None:
    value = os.environ.get(name)
    return {int(part) for part in value.split(",") if part.strip()} if value else None


def hang_marker(run_dir: Path, optimizer_step: int, process_index: int) -> Path:
    return run_dir / f".fault-hang-step-{optimizer_step}-rank-{process_index}"


def maybe_hang(run_dir: Path, optimizer_step: int, process_index: int) -> None:
    """Call after each optimizer step (and its checkpoint): hang (HANG_AT) or raise (RAISE_AT) there."""
    if _step_from_env(RAISE_AT_STEP_ENV) == optimizer_step:
        raise InjectedCrash(f"{RAISE_AT_STEP_ENV}={optimizer_step}: simulated crash after optimizer step "
                            f"{optimizer_step}")
    if _step_from_env(HANG_AT_STEP_ENV) != optimizer_step:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    # The PID lets the test kill every worker: torchrun starts workers outside the launcher's process group.
    marker = hang_marker(run_dir, optimizer_step, process_index)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n", encoding="utf-8")
    os.replace(tmp, marker)  # the test reads the PID as soon as the marker exists
    while True:  # wait for the test's SIGKILL
        time.sleep(60)


def maybe_kill_before_complete(optimizer_step: int) -> None:
    if _step_from_env(KILL_BEFORE_COMPLETE_ENV) == optimizer_step:
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_make_loss_nonfinite(loss: torch.Tensor, optimizer_step_in_progress: int, process_index: int) -> torch.Tensor:
    """`loss` itself, or (under NONFINITE_LOSS_AT) `loss + nan/inf`: a real non-finite tensor on the same graph."""
    steps = _ints_from_env(NONFINITE_LOSS_STEPS_ENV)
    if not steps or optimizer_step_in_progress not in steps:
        return loss
    ranks = _ints_from_env(NONFINITE_LOSS_RANKS_ENV)
    if ranks is not None and process_index not in ranks:
        return loss
    value = os.environ.get(NONFINITE_LOSS_VALUE_ENV, "nan")
    if value not in _NONFINITE_VALUES:
        raise ValueError(f"{NONFINITE_LOSS_VALUE_ENV} must be one of {', '.join(_NONFINITE_VALUES)}, got {value!r}")
    return loss + _NONFINITE_VALUES[value]
