"""Test-only fault injection, read from environment variables (never set them in real runs).

The kill-and-resume tests need the recipe to die at an exact, reproducible point. Instead of racing a
fast tiny run with a timer, the test sets one of these variables; the recipe reaches the point and
stops there, and the test then kills it with SIGKILL like a crash, a preemption or an OOM kill would.

ROUTERFORGE_FAULT_HANG_AT_OPTIMIZER_STEP=N
    After optimizer step N (and its checkpoint, if one is due), every process writes its PID to
    `<run_dir>/.fault-hang-step-N-rank-R` and sleeps forever, so the test can SIGKILL it between
    checkpoints knowing exactly how far it got.
ROUTERFORGE_FAULT_KILL_BEFORE_COMPLETE=N
    While saving the step-N checkpoint, the main process SIGKILLs itself after every state file is
    written but before the COMPLETE marker: the crash-during-save case.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

HANG_AT_STEP_ENV = "ROUTERFORGE_FAULT_HANG_AT_OPTIMIZER_STEP"
KILL_BEFORE_COMPLETE_ENV = "ROUTERFORGE_FAULT_KILL_BEFORE_COMPLETE"


def _step_from_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def hang_marker(run_dir: Path, optimizer_step: int, process_index: int) -> Path:
    return run_dir / f".fault-hang-step-{optimizer_step}-rank-{process_index}"


def maybe_hang(run_dir: Path, optimizer_step: int, process_index: int) -> None:
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
