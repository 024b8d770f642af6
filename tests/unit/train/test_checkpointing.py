"""routerforge.train.checkpointing with a real (single-process, CPU) Accelerator and real files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from routerforge.errors import CheckpointError
from routerforge.train import checkpointing as ckpt
from routerforge.train.checkpointing import TrainerState


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make_training(accelerator):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, n):
    for _ in range(n):
        loss = model(torch.randn(3, 4)).pow(2).mean()  # consumes the global RNG, like embedding noise
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def state(step: int, **changes) -> TrainerState:
    values = dict(recipe="unit", optimizer_step=step, epoch=0, batches_done_in_epoch=step, world_size=1,
                  micro_batch_size=3, gradient_accumulation_steps=1, data_fingerprint="f" * 64,
                  tracking_run_id="abcd1234", seed=0)
    values.update(changes)
    return TrainerState(**values)


def test_save_writes_a_complete_checkpoint_atomically(accelerator, tmp_path):
    model, optimizer, scheduler = make_training(accelerator)
    train_steps(model, optimizer, scheduler, 2)
    path = ckpt.save_checkpoint(accelerator, tmp_path, state(2), keep_last=3)
    assert path == tmp_path / "step-000002"
    assert sorted(p.name for p in path.iterdir()) == [
        "COMPLETE", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin", "trainer_state.json"]
    assert TrainerState.read(path) == state(2)
    assert not list(tmp_path.glob(".tmp-*"))


def test_load_restores_model_optimizer_scheduler_rng_and_counters(accelerator, tmp_path):
    model, optimizer, scheduler = make_training(accelerator)
    train_steps(model, optimizer, scheduler, 2)
    path = ckpt.save_checkpoint(accelerator, tmp_path, state(2), keep_last=3)
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_exp_avg = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    expected_draw = torch.rand(5)  # what the uninterrupted run draws next
    expected_lr = scheduler.get_last_lr()

    train_steps(model, optimizer, scheduler, 3)  # move everything on, then go back
    torch.manual_seed(1234)
    restored = ckpt.load_checkpoint(accelerator, path)

    assert restored == state(2)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved_weights[name])
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved_exp_avg)
    assert scheduler.get_last_lr() == expected_lr
    assert torch.equal(torch.rand(5), expected_draw)


def test_load_refuses_a_checkpoint_whose_rng_state_accelerate_could_not_apply(accelerator, tmp_path):
    model, optimizer, scheduler = make_training(accelerator)
    path = ckpt.save_checkpoint(accelerator, tmp_path, state(1), keep_last=3)
    # Drop a key accelerate reads before the torch state: it then only logs "Could not load random states".
    rng_file = path / "random_states_0.pkl"
    rng = torch.load(rng_file, weights_only=False)
    del rng["numpy_random_seed"]
    torch.save(rng, rng_file)
    torch.manual_seed(99)
    with pytest.raises(CheckpointError, match="random_states_0.pkl: the RNG state was not restored"):
        ckpt.load_checkpoint(accelerator, path)


def test_resume_auto_picks_the_newest_complete_checkpoint_only(accelerator, tmp_path):
    model, optimizer, scheduler = make_training(accelerator)
    for step in (2, 4):
        ckpt.save_checkpoint(accelerator, tmp_path, state(step), keep_last=5)
    # A save killed before COMPLETE (in its temp dir), and a step dir without COMPLETE (e.g. a partial copy).
    shutil.copytree(tmp_path / "step-000004", tmp_path / ".tmp-step-000006")
    (tmp_path / ".tmp-step-000006" / "COMPLETE").unlink()
    shutil.copytree(tmp_path / "step-000004", tmp_path / "step-000008")
    (tmp_path / "step-000008" / "COMPLETE").unlink()

    assert ckpt.list_complete_checkpoints(tmp_path) == [tmp_path / "step-000002", tmp_path / "step-000004"]
    assert ckpt.resolve_resume("auto", tmp_path) == tmp_path / "step-000004"
    with pytest.raises(CheckpointError, match=r"step-000008: checkpoint is incomplete \(no COMPLETE"):
        ckpt.resolve_resume(str(tmp_path / "step-000008"), tmp_path)
    with pytest.raises(CheckpointError, match="is incomplete"):
        ckpt.load_checkpoint(accelerator, tmp_path / "step-000008")
    assert ckpt.resolve_resume(str(tmp_path / "step-000002"), tmp_path) == tmp_path / "step-000002"
    with pytest.raises(CheckpointError, match="already holds step checkpoints \\(newest: step-000004\\)"):
        ckpt.resolve_resume("never", tmp_path)
    # The next save clears the interrupted temp dir.
    ckpt.save_checkpoint(accelerator, tmp_path, state(10), keep_last=5)
    assert not (tmp_path / ".tmp-step-000006").exists()


def test_fresh_run_dir_resolves_to_no_checkpoint(tmp_path):
    assert ckpt.resolve_resume("never", tmp_path / "missing") is None
    assert ckpt.resolve_resume("auto", tmp_path / "missing") is None
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_only_the_last_n_checkpoints_are_kept(accelerator, tmp_path):
    model, optimizer, scheduler = make_training(accelerator)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(accelerator, tmp_path, state(step), keep_last=2)
    assert [p.name for p in ckpt.list_complete_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003", "step-000004"]


def test_resave_of_an_existing_step_replaces_it(accelerator, tmp_path):
    model, optimizer, scheduler = make_training(accelerator)
    ckpt.save_checkpoint(accelerator, tmp_path, state(2, seed=1), keep_last=3)
    ckpt.save_checkpoint(accelerator, tmp_path, state(2, seed=2), keep_last=3)
    assert json.loads((tmp_path / "step-000002" / "trainer_state.json").read_text())["seed"] == 2


def test_resume_compatibility_names_every_mismatch(tmp_path):
    saved = state(4)
    ckpt.check_resume_compatible(saved, recipe="unit", world_size=1, micro_batch_size=3, gradient_accumulation_steps=1,
                                 data_fingerprint="f" * 64, where=tmp_path)
    with pytest.raises(CheckpointError) as info:
        ckpt.check_resume_compatible(saved, recipe="mf", world_size=2, micro_batch_size=8,
                                     gradient_accumulation_steps=2, data_fingerprint="e" * 64, where=tmp_path)
    message = str(info.value)
    for part in ("recipe 'unit', not 'mf'", "written by 1 processes, this run has 2", "run.micro_batch_size was 3",
                 "run.gradient_accumulation_steps was 1", "dataset fingerprint changed"):
        assert part in message
    assert "\n" not in message


def test_unreadable_trainer_state_is_a_checkpoint_error(tmp_path):
    (tmp_path / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable trainer state"):
        TrainerState.read(tmp_path)
