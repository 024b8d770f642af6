"""Kill training/train_difficulty.py with SIGKILL, resume with resume=auto, get bit-identical final weights.

Tiny config (random-init DeBERTa-v2 with dropout 0.1 in the backbone and the heads) on the fixture dataset:
129 training prompts / micro-batch 16 = 9 micro-batches per epoch on 1 process (5 per process on 2),
2 epochs. Checkpoints every 3 optimizer steps, so step 3 is in the middle of epoch 0: the resume must
restore the dataloader position mid-epoch, every process's RNG (dropout masks), AdamW's moments and the
step counter to end torch.equal to the uninterrupted run, in the backbone and in the heads.

The runs stop at exact points through the test-only fault hooks (routerforge/train/faults.py); the kill
itself is a real SIGKILL of the whole process group. The uninterrupted runs are the session's shared ones
(tests/fixtures/difficulty_runs.py; tests/recipes/test_train_difficulty.py reads them too).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from routerforge.train.checkpointing import COMPLETE_MARKER
from routerforge.train.faults import HANG_AT_STEP_ENV, hang_marker
from tests.fixtures import difficulty_runs
from tests.fixtures.difficulty_runs import CONFIG, SCRIPT, overrides
from tests.fixtures.recipe_runner import (
    kill_process_group,
    read_export,
    recipe_env,
    run_recipe,
    start_recipe,
    wait_for_files,
)
from tests.fixtures.tiny_deberta import tiny_deberta_spec

HANG_AT = 5  # killed here: two optimizer steps after the step-3 checkpoint, before the step-6 one
WEIGHT_FILES = ("model.safetensors", "backbone/model.safetensors")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return difficulty_runs.tiny_data(tmp_path_factory)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return tiny_deberta_spec(tmp_path_factory)


def final_weights(out_dir) -> dict[str, torch.Tensor]:
    export_dir = out_dir / "difficulty" / "difficulty-tiny" / "final"
    return {f"{name}:{key}": t for name in WEIGHT_FILES for key, t in load_file(str(export_dir / name)).items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after kill + resume"


def kill_and_resume(tiny_data, backbone, out, processes: int, log_dir) -> str:
    """Run until HANG_AT, SIGKILL the process group, resume with resume=auto; return the resumed run's stdout."""
    run_dir = out / "difficulty" / "difficulty-tiny"
    proc = start_recipe(SCRIPT, CONFIG, overrides(tiny_data, out, backbone), processes=processes,
                        env=recipe_env(**{HANG_AT_STEP_ENV: str(HANG_AT)}), log_path=log_dir / "killed.log")
    markers = [hang_marker(run_dir, HANG_AT, rank) for rank in range(processes)]
    wait_for_files(markers, proc)
    # The workers' PIDs too: torchrun starts them in their own sessions, out of reach of the group kill.
    kill_process_group(proc, worker_pids=[int(m.read_text()) for m in markers])
    assert proc.returncode != 0
    # Killed between checkpoints: step 3 is complete, step 6 was never reached, no export exists.
    assert [p.name for p in run_dir.glob("step-*")] == ["step-000003"]
    assert (run_dir / "step-000003" / COMPLETE_MARKER).is_file()
    assert not (run_dir / "final").exists()
    state = json.loads((run_dir / "step-000003" / "trainer_state.json").read_text())
    assert (state["optimizer_step"], state["epoch"], state["batches_done_in_epoch"]) == (3, 0, 3)  # mid-epoch
    resumed = run_recipe(SCRIPT, CONFIG, overrides(tiny_data, out, backbone, "resume=auto"), processes=processes)
    assert f"resumed from {run_dir / 'step-000003'} (optimizer step 3, epoch 0, micro-batch 3)" in resumed.stdout
    return resumed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_between_checkpoints_then_resume_is_bit_identical(tiny_data, backbone, tmp_path_factory, tmp_path,
                                                                  processes):
    reference = difficulty_runs.uninterrupted(tmp_path_factory, processes)  # 1: in-process, 2: accelerate launch
    _, _, reference_manifest = read_export(reference / "difficulty" / "difficulty-tiny" / "final")
    assert reference_manifest["training"]["world_size"] == processes

    killed = tmp_path / "killed"
    kill_and_resume(tiny_data, backbone, killed, processes, log_dir=tmp_path)
    assert_same_weights(final_weights(killed), final_weights(reference))

    # It really resumed (a fresh restart with the same seed would also match): steps 4.. only.
    _, _, manifest = read_export(killed / "difficulty" / "difficulty-tiny" / "final")
    training = manifest["training"]
    assert training["resumed_from"].endswith("step-000003") and training["world_size"] == processes
    steps = {1: 9 * 2, 2: 5 * 2}[processes]  # micro-batches per process per epoch x 2 epochs
    assert training["optimizer_steps"] == reference_manifest["training"]["optimizer_steps"] == steps
    assert training["loss_history"][0]["optimizer_step"] == 4
    digests = training["param_sha256_per_process"]
    assert len(digests) == processes and len(set(digests)) == 1
