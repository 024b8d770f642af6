"""Kill a 2-process Router-R1 PPO run with SIGKILL, resume with resume=auto, export the exact same policy.

Tiny PPO config (configs/router_r1/tiny.yaml: random-init 2-layer Qwen2, sampling at temperature 1, 4
rollouts per step = 2 per process) for 4 PPO steps, a step checkpoint every 2. The run is killed after
PPO step 3, between the step-2 and step-4 checkpoints, so the resume must redo step 3 exactly: every
process's sampling RNG (the rollouts), the tasks drawn for the step, AdamW's moments of actor and critic,
both LR schedules and the cost normaliser's window. Compared: the sha256 of the exported policy
(policy/model.safetensors) and value head (model.safetensors) against an uninterrupted 2-process run.

The run stops at an exact point through the test-only fault hook (routerforge/train/faults.py); the
kill itself is a real SIGKILL of the launcher's process group and of every worker. The uninterrupted run is
the session's shared one (tests/fixtures/router_r1_runs.py; the FSDP2 tests compare against it too).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from routerforge.train.checkpointing import COMPLETE_MARKER, latest_complete_checkpoint
from routerforge.train.faults import HANG_AT_STEP_ENV, hang_marker
from tests.fixtures import router_r1_runs
from tests.fixtures.recipe_runner import (
    kill_process_group,
    recipe_env,
    run_recipe,
    start_recipe,
    wait_for_files,
)
from tests.fixtures.router_r1_runs import CONFIG, PPO_STEPS, SCRIPT, overrides

HANG_AT = 3  # killed here: one PPO step after the step-2 checkpoint, before the step-4 one
WEIGHT_FILES = ("policy/model.safetensors", "model.safetensors")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return router_r1_runs.tiny_policy(tmp_path_factory.getbasetemp())


def export_digests(out_dir) -> dict[str, str]:
    export_dir = out_dir / "router_r1" / "router-r1-tiny" / "final"
    return {name: hashlib.sha256((export_dir / name).read_bytes()).hexdigest() for name in WEIGHT_FILES}


def training_facts(out_dir) -> dict:
    return json.loads((out_dir / "router_r1" / "router-r1-tiny" / "final" / "manifest.json").read_text())["training"]


@pytest.mark.slow
def test_two_process_sigkill_after_a_checkpoint_then_resume_exports_the_same_policy(tiny_lm, tmp_path_factory,
                                                                                    tmp_path):
    reference = router_r1_runs.uninterrupted(tmp_path_factory.getbasetemp(), "ddp")
    reference_facts = training_facts(reference)
    assert reference_facts["world_size"] == 2 and reference_facts["ppo_steps"] == PPO_STEPS

    out = tmp_path / "killed"
    run_dir = out / "router_r1" / "router-r1-tiny"
    proc = start_recipe(SCRIPT, CONFIG, overrides(tiny_lm, out), processes=2,
                        env=recipe_env(**{HANG_AT_STEP_ENV: str(HANG_AT)}), log_path=tmp_path / "killed.log")
    markers = [hang_marker(run_dir, HANG_AT, rank) for rank in range(2)]
    wait_for_files(markers, proc)
    kill_process_group(proc, worker_pids=[int(m.read_text()) for m in markers])
    assert proc.returncode != 0
    # Killed between checkpoints: step 2 is complete, step 4 was never reached, no export exists.
    assert latest_complete_checkpoint(run_dir) == run_dir / "step-000002"
    assert (run_dir / "step-000002" / COMPLETE_MARKER).is_file()
    assert not (run_dir / "final").exists()

    resumed = run_recipe(SCRIPT, CONFIG, overrides(tiny_lm, out, "resume=auto"), processes=2)
    assert f"resumed from {run_dir / 'step-000002'} (PPO step 2)" in resumed.stdout

    assert export_digests(out) == export_digests(reference)
    # It really resumed (a fresh restart with the same seed would also match): PPO steps 3.. only.
    facts = training_facts(out)
    assert facts["resumed_from"].endswith("step-000002") and facts["world_size"] == 2
    assert [h["ppo_step"] for h in facts["history"]] == [3, 4]
    assert facts["history"] == reference_facts["history"][2:]  # same rollouts, rewards and losses as well
    assert len(set(facts["actor_sha256_per_process"])) == 1
