"""The learning-rate schedule is identical after a resume: warmup + decay continue from the checkpoint's step.

training/train_mf.py on the tiny config (21 optimizer steps, checkpoints every 2), stopped in-process at a
seeded random step by the fault hook (ROUTERFORGE_FAULT_RAISE_AT_OPTIMIZER_STEP), resumed with
resume=auto. The resumed run's per-step LR (manifest loss_history, logged every step) must equal the
uninterrupted run's at every step, and so must the final weights. The 2-process SIGKILL version (cosine
schedule too) is in test_kill_resume_mf.py.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from routerforge.train.faults import RAISE_AT_STEP_ENV, InjectedCrash
from routerforge.train.optimization import lr_multiplier
from routerforge.train.run_config import OptimConfig
from tests.fixtures.recipe_runner import REPO_ROOT, read_export, run_recipe_in_process
from tests.fixtures.tiny_dataset import build_tiny_dataset

CONFIG = "configs/mf/tiny.yaml"
SEED = int(os.environ.get("ROUTERFORGE_RELIABILITY_SEED", "20240607"))
TOTAL_STEPS = 21
CHECKPOINT_EVERY = 2


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"), n_pairs=200)


def argv(data_dir, out_dir, schedule: str, *extra: str) -> list[str]:
    return ["--config", str(REPO_ROOT / CONFIG), f"data.path={data_dir}", f"run.output_dir={out_dir}",
            f"optim.lr_schedule={schedule}", "optim.warmup_optimizer_steps=4",
            f"checkpoint.every_optimizer_steps={CHECKPOINT_EVERY}", "checkpoint.keep_last=20", *extra]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_schedule_after_a_resume_is_the_uninterrupted_one(tiny_data, tmp_path, monkeypatch, schedule):
    run_recipe_in_process("train_mf", argv(tiny_data, tmp_path / "full", schedule))
    full_weights, _, full_manifest = read_export(tmp_path / "full" / "mf" / "mf-tiny" / "final")
    full_lr = {h["optimizer_step"]: h["lr"] for h in full_manifest["training"]["loss_history"]}
    assert len(full_lr) == TOTAL_STEPS
    # The schedule really is warmup then decay to 0 (so a shifted or restarted schedule cannot pass).
    optim = OptimConfig(lr=0.01, lr_schedule=schedule, warmup_optimizer_steps=4)
    for step, lr in full_lr.items():  # the LR logged after step s is the one the NEXT update uses
        assert lr == pytest.approx(0.01 * lr_multiplier(step, optim, TOTAL_STEPS), abs=1e-12)
    assert full_lr[4] == pytest.approx(0.01) and full_lr[TOTAL_STEPS] == 0.0

    stop_at = random.Random(f"{SEED}-{schedule}").randint(CHECKPOINT_EVERY, TOTAL_STEPS - 1)
    resumed_from = stop_at // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    with monkeypatch.context() as patch:
        patch.setenv(RAISE_AT_STEP_ENV, str(stop_at))
        with pytest.raises(InjectedCrash):
            run_recipe_in_process("train_mf", argv(tiny_data, tmp_path / "split", schedule))
    run_recipe_in_process("train_mf", argv(tiny_data, tmp_path / "split", schedule, "resume=auto"))
    weights, _, manifest = read_export(tmp_path / "split" / "mf" / "mf-tiny" / "final")
    context = f"seed {SEED}: stopped after step {stop_at}, resumed from step {resumed_from}"
    assert manifest["training"]["resumed_from"].endswith(f"step-{resumed_from:06d}"), context
    resumed_lr = {h["optimizer_step"]: h["lr"] for h in manifest["training"]["loss_history"]}
    assert sorted(resumed_lr) == list(range(resumed_from + 1, TOTAL_STEPS + 1)), context
    for step, lr in resumed_lr.items():
        assert lr == full_lr[step], f"step {step}: LR {lr} after the resume, {full_lr[step]} uninterrupted ({context})"
    for name in full_weights:
        assert torch.equal(weights[name], full_weights[name]), f"{name} differs ({context})"
