"""Mid-epoch resume: every sample is consumed exactly once per epoch, none missing, none duplicated.

tests/reliability/ledger_recipe.py is a minimal recipe on the shared training core whose dataset items carry
their own id; it logs the ids of every micro-batch each process consumed. A run is stopped at a seeded
random optimizer step (ROUTERFORGE_RELIABILITY_SEED to vary it): 2 processes by a real SIGKILL of every
process, 1 process in-process by the fault hook's InjectedCrash (fast; the recipe writes nothing after the
point either way). It is resumed with resume=auto, and the
committed ledger (the killed run's micro-batches up to its newest complete checkpoint + the resumed run's)
must equal an uninterrupted run's, micro-batch by micro-batch on every process, and cover each epoch's
samples exactly once.

With N processes, accelerate deals each epoch's batches out round-robin and, when the split is not a
multiple of N x micro_batch_size, completes the last round with the epoch's first samples (even_batches,
as torch's DistributedSampler does) so that every process makes the same number of steps.
`test_two_process_padding_is_exactly_accelerates_even_batches` pins that documented exception.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

from routerforge.train.checkpointing import latest_complete_checkpoint
from routerforge.train.faults import HANG_AT_STEP_ENV, RAISE_AT_STEP_ENV, InjectedCrash, hang_marker
from tests.fixtures.recipe_runner import (
    ACCELERATE,
    CPU_2PROC,
    PYTHON,
    REPO_ROOT,
    free_port,
    kill_process_group,
    recipe_env,
    wait_for_files,
)

DRIVER = str(REPO_ROOT / "tests" / "reliability" / "ledger_recipe.py")
SEED = int(os.environ.get("ROUTERFORGE_RELIABILITY_SEED", "20240607"))


def ledger_command(out: Path, processes: int, n: int, micro_batch: int, accumulation: int, epochs: int,
                   checkpoint_every: int, resume: str) -> list[str]:
    args = [str(out), str(n), str(micro_batch), str(accumulation), str(epochs), str(checkpoint_every), resume]
    if processes == 1:
        return [PYTHON, DRIVER, *args]
    return [ACCELERATE, "launch", "--config_file", str(CPU_2PROC), "--main_process_port", str(free_port()),
            DRIVER, *args]


def run_ledger(out: Path, processes: int, shape: dict, resume: str = "never") -> None:
    if processes == 1:
        run_in_process(out, shape, resume)
        return
    proc = subprocess.run(ledger_command(out, processes, resume=resume, **shape), cwd=REPO_ROOT, env=recipe_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_in_process(out: Path, shape: dict, resume: str) -> None:
    spec = importlib.util.spec_from_file_location("ledger_recipe", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        driver.main(ledger_command(out, 1, resume=resume, **shape)[2:])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def read_attempts(out: Path, rank: int) -> dict[int, list[dict]]:
    """attempt start time -> that process's ledger lines (one file per process and attempt)."""
    return {int(path.stem.split("-attempt-")[1]): [json.loads(line) for line in path.read_text().splitlines()]
            for path in (out / "ledger").glob(f"rank-{rank}-attempt-*.jsonl")}


def result(out: Path, rank: int) -> dict:
    return json.loads((out / f"result-rank-{rank}.json").read_text())


def kill_then_resume(out: Path, processes: int, shape: dict, total_steps: int, monkeypatch) -> tuple[int, int]:
    """Stop at a seeded random step after the first checkpoint, resume=auto; return (stopped at, resumed from)."""
    rng = random.Random(f"{SEED}-{processes}-{sorted(shape.items())}")
    kill_at = rng.randint(shape["checkpoint_every"], total_steps - 1)
    run_dir = out / "ledger-run"
    if processes == 1:
        with monkeypatch.context() as patch:
            patch.setenv(RAISE_AT_STEP_ENV, str(kill_at))
            with pytest.raises(InjectedCrash):
                run_in_process(out, shape, "never")
    else:
        proc = subprocess.Popen(ledger_command(out, processes, resume="never", **shape), cwd=REPO_ROOT,
                                env=recipe_env(**{HANG_AT_STEP_ENV: str(kill_at)}), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        markers = [hang_marker(run_dir, kill_at, rank) for rank in range(processes)]
        wait_for_files(markers, proc)
        kill_process_group(proc, worker_pids=[int(m.read_text()) for m in markers])
    assert not (out / "result-rank-0.json").exists()
    checkpoint = latest_complete_checkpoint(run_dir)
    resumed_from = (kill_at // shape["checkpoint_every"]) * shape["checkpoint_every"]
    assert checkpoint is not None and checkpoint.name == f"step-{resumed_from:06d}", f"seed {SEED}, kill at {kill_at}"
    run_ledger(out, processes, shape, resume="auto")
    return kill_at, resumed_from


def committed_ledger(out: Path, rank: int, resumed_from: int) -> list[dict]:
    """The killed attempt's micro-batches up to the checkpoint, then the resumed attempt's."""
    attempts = read_attempts(out, rank)
    assert len(attempts) == 2
    killed, resumed = (attempts[pid] for pid in sorted(attempts, key=lambda p: attempts[p][0]["optimizer_step"]))
    assert resumed[0]["optimizer_step"] == resumed_from + 1
    return [entry for entry in killed if entry["optimizer_step"] <= resumed_from] + resumed


def ids_per_epoch(ledgers: list[list[dict]]) -> dict[int, Counter]:
    per_epoch: dict[int, Counter] = {}
    for ledger in ledgers:
        for entry in ledger:
            per_epoch.setdefault(entry["epoch"], Counter()).update(entry["ids"])
    return per_epoch


def check_resumed_run(tmp_path: Path, processes: int, shape: dict, total_steps: int, monkeypatch) -> None:
    reference = tmp_path / "uninterrupted"
    run_ledger(reference, processes, shape)
    killed = tmp_path / "killed"
    kill_at, resumed_from = kill_then_resume(killed, processes, shape, total_steps, monkeypatch)
    context = f"seed {SEED}: killed after step {kill_at}, resumed from step-{resumed_from:06d}"
    committed = []
    for rank in range(processes):
        assert result(killed, rank)["world_size"] == processes
        assert result(killed, rank)["resumed_from"].endswith(f"step-{resumed_from:06d}")
        (uninterrupted,) = read_attempts(reference, rank).values()
        ledger = committed_ledger(killed, rank, resumed_from)
        assert ledger == uninterrupted, f"rank {rank}: consumed batches differ from the uninterrupted run ({context})"
        assert result(killed, rank)["weights"] == result(reference, rank)["weights"], context
        committed.append(ledger)
    per_epoch = ids_per_epoch(committed)
    assert sorted(per_epoch) == list(range(shape["epochs"]))
    for epoch, counts in per_epoch.items():
        assert sorted(counts) == list(range(shape["n"])), f"epoch {epoch}: missing samples ({context})"
        assert set(counts.values()) == {1}, f"epoch {epoch}: duplicated {[i for i, c in counts.items() if c > 1]}"


@pytest.mark.parametrize("accumulation", [1, 2])
def test_one_process_mid_epoch_resume_consumes_every_sample_exactly_once(tmp_path, monkeypatch, accumulation):
    # 24 samples / micro-batch 4 = 6 micro-batches per epoch; 2 epochs; checkpoints every 2 optimizer steps.
    shape = {"n": 24, "micro_batch": 4, "accumulation": accumulation, "epochs": 2, "checkpoint_every": 2}
    check_resumed_run(tmp_path, 1, shape, total_steps=2 * 6 // accumulation, monkeypatch=monkeypatch)


@pytest.mark.slow
def test_two_process_mid_epoch_resume_consumes_every_sample_exactly_once(tmp_path, monkeypatch):
    # 24 samples / micro-batch 3 = 8 batches per epoch, 4 per process; checkpoints every 3 steps (mid-epoch).
    shape = {"n": 24, "micro_batch": 3, "accumulation": 1, "epochs": 2, "checkpoint_every": 3}
    check_resumed_run(tmp_path, 2, shape, total_steps=8, monkeypatch=monkeypatch)
    assert result(tmp_path / "killed", 0)["weights"] == result(tmp_path / "killed", 1)["weights"]


@pytest.mark.slow
def test_two_process_padding_is_exactly_accelerates_even_batches(tmp_path):
    # 22 samples / micro-batch 3 = 7 full batches + 1 of 1 sample; 2 processes x 4 batches x 3 = 24 slots:
    # the 2 missing slots are filled with the epoch's first 2 samples. Nothing else repeats, nothing is lost.
    shape = {"n": 22, "micro_batch": 3, "accumulation": 1, "epochs": 2, "checkpoint_every": 0}
    run_ledger(tmp_path, 2, shape)
    ledgers = [next(iter(read_attempts(tmp_path, rank).values())) for rank in range(2)]
    for epoch, counts in ids_per_epoch(ledgers).items():
        assert sorted(counts) == list(range(22)), f"epoch {epoch}: missing samples"
        # Round-robin: global batch i goes to process i % 2, so the epoch order is the interleaving.
        order = [i for pair in zip(*[[e["ids"] for e in ledger if e["epoch"] == epoch] for ledger in ledgers],
                                   strict=True) for batch in pair for i in batch]
        assert len(order) == 24 and order[22:] == order[:2]
        assert {i for i, c in counts.items() if c > 1} == set(order[:2]) and sum(counts.values()) == 24
