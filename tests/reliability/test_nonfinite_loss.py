"""NaN/Inf loss in training/train_mf.py: the step is skipped on every process with weights unchanged and
counted; N such steps in a row end the run cleanly, with a checkpoint and exit status 3.

The non-finite losses are real NaN/Inf tensors made by the test-only fault hook
ROUTERFORGE_FAULT_NONFINITE_LOSS_AT_OPTIMIZER_STEPS (routerforge/train/faults.py) at exact steps.
Tiny config: 109 trainable pairs / micro-batch 16 = 7 optimizer steps per epoch on 1 process, 3 epochs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from routerforge.train.faults import (
    NONFINITE_LOSS_RANKS_ENV,
    NONFINITE_LOSS_STEPS_ENV,
    NONFINITE_LOSS_VALUE_ENV,
)
from tests.fixtures.recipe_runner import REPO_ROOT, read_export, recipe_env, run_recipe, run_recipe_in_process
from tests.fixtures.tiny_dataset import build_tiny_dataset

CONFIG = "configs/mf/tiny.yaml"
SCRIPT = "training/train_mf.py"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"), n_pairs=200)


def overrides(data_dir, out_dir, *extra: str) -> list[str]:
    return [f"data.path={data_dir}", f"run.output_dir={out_dir}", "checkpoint.every_optimizer_steps=1",
            "checkpoint.keep_last=100", *extra]


def weights_at(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"step-{step:06d}" / "model.safetensors"))


def adam_state_at(run_dir, step: int) -> dict:
    return torch.load(run_dir / f"step-{step:06d}" / "optimizer.bin", weights_only=True)["state"]


def trainer_state_at(run_dir, step: int) -> dict:
    return json.loads((run_dir / f"step-{step:06d}" / "trainer_state.json").read_text())


def assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs: {what}"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nonfinite_steps_are_skipped_with_weights_unchanged_and_counted(tiny_data, tmp_path, monkeypatch, value):
    monkeypatch.setenv(NONFINITE_LOSS_STEPS_ENV, "4,5")
    monkeypatch.setenv(NONFINITE_LOSS_VALUE_ENV, value)
    result = run_recipe_in_process("train_mf", ["--config", str(REPO_ROOT / CONFIG), *overrides(tiny_data, tmp_path)])
    run_dir = tmp_path / "mf" / "mf-tiny"
    # Steps 4 and 5 changed nothing: weights and Adam's moments are those after step 3.
    for step in (4, 5):
        assert_same(weights_at(run_dir, step), weights_at(run_dir, 3), f"weights changed in skipped step {step}")
        for param, moments in adam_state_at(run_dir, step).items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(moments[key], adam_state_at(run_dir, 3)[param][key])
    assert not torch.equal(weights_at(run_dir, 6)["P.weight"], weights_at(run_dir, 5)["P.weight"])  # trains again
    # Counted: per checkpoint, in the history, the result and the manifest.
    assert [(trainer_state_at(run_dir, s)["skipped_nonfinite_steps"],
             trainer_state_at(run_dir, s)["consecutive_nonfinite_steps"])
            for s in (3, 4, 5, 6)] == [(0, 0), (1, 1), (2, 2), (2, 0)]
    weights, _, manifest = read_export(run_dir / "final")
    history = manifest["training"]["loss_history"]
    assert [h["optimizer_step"] for h in history if h["skipped_nonfinite"]] == [4, 5]
    assert all(math.isnan(h["train_loss"]) == h["skipped_nonfinite"] for h in history)
    assert manifest["training"]["skipped_nonfinite_steps"] == result["skipped_nonfinite_steps"] == 2
    assert manifest["training"]["optimizer_steps"] == 21  # a skipped step still takes its slot
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.slow
def test_consecutive_nonfinite_steps_end_the_run_with_a_checkpoint_and_exit_3(tiny_data, tmp_path, monkeypatch):
    # Reference: the same NaN steps but a limit they do not reach (in-process, fast).
    monkeypatch.setenv(NONFINITE_LOSS_STEPS_ENV, "4,5,6")
    run_recipe_in_process("train_mf", ["--config", str(REPO_ROOT / CONFIG),
                                       *overrides(tiny_data, tmp_path / "reference",
                                                  "checkpoint.every_optimizer_steps=4")])
    monkeypatch.delenv(NONFINITE_LOSS_STEPS_ENV)
    reference_weights, _, _ = read_export(tmp_path / "reference" / "mf" / "mf-tiny" / "final")

    out = tmp_path / "stopped"
    args = overrides(tiny_data, out, "checkpoint.every_optimizer_steps=4", "run.max_consecutive_nonfinite_steps=3")
    stopped = run_recipe(SCRIPT, CONFIG, args, env=recipe_env(**{NONFINITE_LOSS_STEPS_ENV: "4,5,6"}), check=False)
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    last_line = stopped.stderr.strip().splitlines()[-1]
    run_dir = out / "mf" / "mf-tiny"
    assert last_line == (
        "error: training stopped at optimizer step 6: the loss was NaN/Inf in 3 consecutive optimizer steps "
        "(run.max_consecutive_nonfinite_steps=3; 3 skipped in this run); the last good weights are in "
        f"{run_dir / 'step-000006'}. Lower optim.lr, set optim.max_grad_norm or check the data, then continue "
        "with resume=auto.")
    # A clean end: a COMPLETE checkpoint at the stop (step 6 is not on the every-4 cadence), no export.
    assert sorted(p.name for p in run_dir.glob("step-*")) == ["step-000004", "step-000006"]
    assert trainer_state_at(run_dir, 6)["skipped_nonfinite_steps"] == 3
    assert trainer_state_at(run_dir, 6)["consecutive_nonfinite_steps"] == 3
    assert_same(weights_at(run_dir, 6), weights_at(run_dir, 4), "weights changed in skipped steps 5-6")
    assert not (run_dir / "final").exists() and not list(run_dir.glob(".tmp-*"))

    # Fixed (here: the fault is gone), the run continues from the stop and ends where the reference did.
    resumed = run_recipe(SCRIPT, CONFIG, [*args, "resume=auto"])
    assert f"resumed from {run_dir / 'step-000006'} (optimizer step 6" in resumed.stdout
    weights, _, manifest = read_export(run_dir / "final")
    assert_same(weights, reference_weights, "resumed after the stop vs. uninterrupted")
    assert manifest["training"]["skipped_nonfinite_steps"] == 3


@pytest.mark.slow
def test_one_process_nan_makes_every_process_skip_the_step(tiny_data, tmp_path):
    # Only process 1's loss is NaN at step 3: both processes skip it (or DDP would desynchronise).
    proc = run_recipe(SCRIPT, CONFIG, overrides(tiny_data, tmp_path), processes=2,
                      env=recipe_env(**{NONFINITE_LOSS_STEPS_ENV: "3", NONFINITE_LOSS_RANKS_ENV: "1"}))
    run_dir = tmp_path / "mf" / "mf-tiny"
    _, _, manifest = read_export(run_dir / "final")
    training = manifest["training"]
    assert training["world_size"] == 2 and training["skipped_nonfinite_steps"] == 1
    digests = training["param_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]  # the replicas still agree
    assert_same(weights_at(run_dir, 3), weights_at(run_dir, 2), "weights changed in the skipped step")
    assert [h["optimizer_step"] for h in training["loss_history"] if h["skipped_nonfinite"]] == [3]
    assert sum(line.startswith("checkpoint: ") for line in proc.stdout.splitlines()) == 1
