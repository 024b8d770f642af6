"""Step checkpoints: atomic save, `resume` resolution, load with verification, pruning.

Layout of one run directory (`<output_dir>/<router>/<run.name>/`)::

    step-000500/           a COMPLETE step checkpoint
        model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl, ...  (accelerate save_state)
        trainer_state.json step counters, dataloader position, world size, data fingerprint, tracking run id
        COMPLETE           written last
    .tmp-step-000600/      a save in progress (or one killed mid-save): never resumed from

A save writes everything into `.tmp-step-N/`, then `trainer_state.json`, then `COMPLETE` (which records
the sha256 of every other file of the checkpoint), and only then renames the directory to `step-N/`.
Resume considers only `step-N/` directories that hold
`COMPLETE`, so a process killed at any moment of a save leaves, at worst, a `.tmp-*` directory that
resume ignores and the next save removes. Pruning removes a checkpoint's COMPLETE marker before its
files, for the same reason.

What a resume restores (accelerate `load_state` plus `trainer_state.json`): model, optimizer, LR
scheduler, AMP grad scaler, accelerate's micro-step counter, the Python/NumPy/torch(/CUDA) RNG state
of EVERY process (one file per rank; `load_checkpoint` verifies it really was restored, because
accelerate only logs when it cannot), the dataloader position (epoch + micro-batches consumed in it)
and the optimizer-step counter.

Before anything is loaded, every file is checked against the sha256 recorded in COMPLETE: a missing,
truncated or overwritten `optimizer.bin`, `random_states_<rank>.pkl`, `model.safetensors`, ... is a
`CorruptCheckpointError` naming the file (exit status 2 through `run_recipe`), never a traceback from
deep inside torch.load and never a silently different resume.

Trust: accelerate writes the optimizer, scheduler and RNG states as pickles (`torch.save`) and reads them
back with `torch.load` (accelerate 1.15: `weights_only=True` plus an allowlist of numpy types; older
versions and custom checkpointed objects: full unpickling). Step checkpoints are therefore trusted input,
written by this code for this run: never resume from a checkpoint directory you did not produce. What
leaves a run (the export, the published router) is safetensors + JSON only (routerforge/train/final_export.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import RNG_STATE_NAME, broadcast_object_list
from accelerate.utils import load as accelerate_load

from routerforge.errors import CheckpointError
from routerforge.io.digest import sha256_file
from routerforge.io.names import COMPLETE_MARKER
from routerforge.train import faults

TRAINER_STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"
COMPLETE_FORMAT = 1
LEGACY_COMPLETE_TEXT = "ok"  # the marker's whole content before it recorded digests


class CorruptCheckpointError(CheckpointError):
    """A file of a COMPLETE checkpoint is missing or differs from what was saved (truncated, overwritten)."""


@dataclass(frozen=True)
class TrainerState:
    """The loop counters and the facts a resume must match (saved as trainer_state.json)."""

    recipe: str
    optimizer_step: int  # optimizer steps done
    epoch: int  # epoch the next micro-batch belongs to
    batches_done_in_epoch: int  # micro-batches each process consumed in `epoch`
    world_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    data_fingerprint: str
    tracking_run_id: str | None
    seed: int
    # NaN/Inf guard counters (routerforge/train/nan_guard.py); defaults: checkpoints written before them
    skipped_nonfinite_steps: int = 0  # optimizer steps skipped for a non-finite loss, whole run
    consecutive_nonfinite_steps: int = 0  # of which in a row, ending at `optimizer_step`
    # routerforge/train/early_stopping.py EarlyStopping.to_dict(); None: before it existed, or no evaluation
    early_stopping: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, checkpoint_dir: Path) -> TrainerState:
        path = checkpoint_dir / TRAINER_STATE_FILE
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable trainer state ({exc}); resume from another "
                                  f"checkpoint.") from None


def step_dir_name(optimizer_step: int) -> str:
    return f"step-{optimizer_step:06d}"


def checkpoint_step(path: Path) -> int | None:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def list_complete_checkpoints(run_dir: Path) -> list[Path]:
    """`step-N/` directories of `run_dir` that hold COMPLETE, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir()
             if p.is_dir() and checkpoint_step(p) is not None and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: checkpoint_step(p))


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    complete = list_complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint to resume from for `resume` = never | auto | <path>; None means start fresh."""
    if resume == "never":
        newest = latest_complete_checkpoint(run_dir)
        if newest is not None:
            raise CheckpointError(
                f"{run_dir} already holds step checkpoints (newest: {newest.name}); pass resume=auto to continue "
                f"that run, or set run.name to start a new one.")
        return None
    if resume == "auto":
        return latest_complete_checkpoint(run_dir)
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"resume={resume}: no such checkpoint directory; use resume=auto or a step-N directory.")
    if not (path / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"resume={resume}: checkpoint is incomplete (no {COMPLETE_MARKER} marker; the save was "
                              f"interrupted); use resume=auto to pick the newest complete one.")
    return path


def _remove_checkpoint(path: Path) -> None:
    # Marker first: a deletion interrupted half-way must not leave a directory that looks complete.
    (path / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints; return the deleted paths."""
    complete = list_complete_checkpoints(run_dir)
    doomed = complete[:-keep_last] if len(complete) > keep_last else []
    for path in doomed:
        _remove_checkpoint(path)
    return doomed


def _write_then_fsync(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def checkpoint_file_digests(checkpoint_dir: Path) -> dict[str, str]:
    """{relative path: sha256} of every file of a checkpoint directory except COMPLETE (sub-directories too:
    FSDP/DeepSpeed save sharded states in them)."""
    return {path.relative_to(checkpoint_dir).as_posix(): sha256_file(path)
            for path in sorted(checkpoint_dir.rglob("*")) if path.is_file() and path.name != COMPLETE_MARKER}


def checkpoint_problem(checkpoint_dir: Path) -> str | None:
    """None if every file recorded in COMPLETE is there with its recorded sha256, else the first problem.

    A COMPLETE marker without recorded digests (written before they were recorded) is not checked.
    """
    marker = checkpoint_dir / COMPLETE_MARKER
    try:
        text = marker.read_text(encoding="utf-8")
        if text.strip() == LEGACY_COMPLETE_TEXT:
            return None  # a marker from before the digests were recorded: nothing to verify against
        recorded = json.loads(text)
    except (OSError, ValueError) as exc:
        return f"{marker} is unreadable ({type(exc).__name__})"
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), dict):
        return f"{checkpoint_dir / COMPLETE_MARKER}: not a RouterForge checkpoint marker (no sha256 table)"
    for name, expected in sorted(recorded["sha256"].items()):
        path = checkpoint_dir / name
        if not path.is_file():
            return f"{path} is missing from the checkpoint"
        if sha256_file(path) != expected:
            return (f"{path} is corrupt: its sha256 differs from the one recorded when the checkpoint was saved "
                    f"(truncated, overwritten or damaged on disk)")
    return None


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainerState, keep_last: int,
                    extra_files: Callable[[Path], None] | None = None) -> Path:
    """Atomically save a step checkpoint (call on EVERY process); return its final directory.

    Every process writes its own RNG state into the shared temporary directory; the main process then
    writes `extra_files(directory)` (e.g. the best weights so far), trainer_state.json and COMPLETE and
    renames the directory into place.
    """
    final = run_dir / step_dir_name(state.optimizer_step)
    tmp = run_dir / f"{TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(f"{TMP_PREFIX}step-*"):  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra_files is not None:
            extra_files(tmp)
        _write_then_fsync(tmp / TRAINER_STATE_FILE, state.to_json())
        digests = checkpoint_file_digests(tmp)
        faults.maybe_kill_before_complete(state.optimizer_step)
        _write_then_fsync(tmp / COMPLETE_MARKER,
                          json.dumps({"format": COMPLETE_FORMAT, "sha256": digests}, indent=1, sort_keys=True) + "\n")
        if final.exists():  # re-saving a step after resuming from an older checkpoint
            _remove_checkpoint(final)
        os.rename(tmp, final)
        prune_checkpoints(run_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def check_resume_compatible(state: TrainerState, *, recipe: str, world_size: int, micro_batch_size: int,
                            gradient_accumulation_steps: int, data_fingerprint: str, where: Path) -> None:
    """A checkpoint can only continue the run it came from: same recipe, data and batch geometry."""
    problems = []
    if state.recipe != recipe:
        problems.append(f"it was written by recipe '{state.recipe}', not '{recipe}'")
    if state.world_size != world_size:
        problems.append(f"it was written by {state.world_size} processes, this run has {world_size} "
                        f"(the dataloader position is per process; launch with the same number)")
    if state.micro_batch_size != micro_batch_size:
        problems.append(f"run.micro_batch_size was {state.micro_batch_size}, now {micro_batch_size}")
    if state.gradient_accumulation_steps != gradient_accumulation_steps:
        problems.append(f"run.gradient_accumulation_steps was {state.gradient_accumulation_steps}, "
                        f"now {gradient_accumulation_steps}")
    if state.data_fingerprint != data_fingerprint:
        problems.append(f"the dataset fingerprint changed ({state.data_fingerprint[:12]} -> {data_fingerprint[:12]})")
    if problems:
        raise CheckpointError(f"cannot resume from {where}: {'; '.join(problems)}. Restore the original settings "
                              f"or start a new run (another run.name).")


def load_checkpoint(accelerator: Accelerator, checkpoint_dir: Path) -> TrainerState:
    """Restore everything `save_checkpoint` saved (call on EVERY process after `accelerator.prepare`).

    Raises CorruptCheckpointError (on every process alike) when a file is missing or its sha256 differs
    from the one recorded at save time, and CheckpointError when accelerate cannot load the state.
    """
    if not (checkpoint_dir / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{checkpoint_dir} is incomplete (no {COMPLETE_MARKER}); resume from a complete one.")
    # The main process hashes the files once; every process raises the same error (none hangs in a collective).
    problem_box = [checkpoint_problem(checkpoint_dir) if accelerator.is_main_process else None]
    broadcast_object_list(problem_box)
    if problem_box[0] is not None:
        this_step = checkpoint_step(checkpoint_dir)
        earlier = [p for p in list_complete_checkpoints(checkpoint_dir.parent)
                   if this_step is not None and checkpoint_step(p) < this_step]
        hint = (f"resume from an earlier checkpoint (resume={earlier[-1]}) or delete {checkpoint_dir.name} and use "
                f"resume=auto" if earlier else "no earlier checkpoint exists: start a new run (another run.name)")
        raise CorruptCheckpointError(f"cannot resume: {problem_box[0]}; {hint}.")
    state = TrainerState.read(checkpoint_dir)
    rng_file = checkpoint_dir / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl"
    if not rng_file.is_file():
        raise CheckpointError(f"{rng_file} is missing: the checkpoint has no RNG state for process "
                              f"{accelerator.process_index}; launch with the number of processes that wrote it.")
    try:
        accelerator.load_state(str(checkpoint_dir))
    except Exception as exc:  # torch.load / safetensors / accelerate errors: name the checkpoint, one line
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CheckpointError(f"{checkpoint_dir}: accelerate could not load this checkpoint ({type(exc).__name__}: "
                              f"{detail}); it was written by an incompatible torch/accelerate version or with a "
                              f"different model/optimizer; resume from another checkpoint or start a new run.") from exc
    saved_torch_rng = accelerate_load(rng_file)["torch_manual_seed"]
    if not torch.equal(torch.get_rng_state(), saved_torch_rng):
        # accelerate only logs "Could not load random states" and carries on; a resume that silently
        # draws different noise is not a resume.
        raise CheckpointError(f"{rng_file}: the RNG state was not restored; the checkpoint is damaged or was "
                              f"written by an incompatible accelerate/torch version.")
    return state
