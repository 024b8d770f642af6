"""routerforge.train.checkpointing with a real (single-process, CPU) Accelerator and real files."""

from __future__ import annotations

import hashlib
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


def rerecord_digests(checkpoint_dir):
    marker = checkpoint_dir / ckpt.COMPLETE_MARKER
    recorded = json.loads(marker.read_text())
    recorded["sha256"] = ckpt.checkpoint_file_digests(checkpoint_dir)
    marker.write_text(json.dumps(recorded))


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
    # Re-record the digests: a checkpoint that is intact on disk but that accelerate cannot fully apply
    # (e.g. written by another accelerate version). A plain on-disk change is caught earlier (tests below).
    rerecord_digests(path)
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


# --- file digests: corrupt or missing state is a named error, before anything is loaded ------------------

def test_complete_marker_records_the_sha256_of_every_other_file(accelerator, tmp_path):
    make_training(accelerator)
    path = ckpt.save_checkpoint(accelerator, tmp_path, state(1), keep_last=3)
    recorded = json.loads((path / "COMPLETE").read_text())
    assert recorded["format"] == 1
    assert sorted(recorded["sha256"]) == ["model.safetensors", "optimizer.bin", "random_states_0.pkl",
                                          "scheduler.bin", "trainer_state.json"]
    for name, digest in recorded["sha256"].items():
        assert digest == hashlib.sha256((path / name).read_bytes()).hexdigest()
    assert ckpt.checkpoint_problem(path) is None


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "delete"])
@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl", "model.safetensors", "scheduler.bin"])
def test_damaged_state_file_is_a_corrupt_checkpoint_error_naming_it(accelerator, tmp_path, victim, damage):
    model, optimizer, scheduler = make_training(accelerator)
    ckpt.save_checkpoint(accelerator, tmp_path, state(2), keep_last=3)
    train_steps(model, optimizer, scheduler, 1)
    path = ckpt.save_checkpoint(accelerator, tmp_path, state(4), keep_last=3)
    target = path / victim
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "overwrite":
        target.write_bytes(b"\x00" * target.stat().st_size)  # same size: only the digest can tell
    else:
        target.unlink()
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        ckpt.load_checkpoint(accelerator, path)
    message = str(info.value)
    reason = "is missing from the checkpoint" if damage == "delete" else "is corrupt: its sha256 differs"
    assert f"{target} {reason}" in message
    assert f"resume from an earlier checkpoint (resume={tmp_path / 'step-000002'})" in message
    assert "\n" not in message
    for name, tensor in model.state_dict().items():  # nothing was loaded
        assert torch.equal(tensor, weights_before[name])


def test_only_checkpoint_corrupt_says_there_is_no_earlier_one(accelerator, tmp_path):
    make_training(accelerator)
    path = ckpt.save_checkpoint(accelerator, tmp_path, state(1), keep_last=3)
    (path / "optimizer.bin").write_bytes(b"garbage")
    with pytest.raises(ckpt.CorruptCheckpointError, match="no earlier checkpoint exists: start a new run"):
        ckpt.load_checkpoint(accelerator, path)


def test_a_garbled_complete_marker_is_refused_and_a_legacy_one_is_accepted(accelerator, tmp_path):
    make_training(accelerator)
    path = ckpt.save_checkpoint(accelerator, tmp_path, state(1), keep_last=3)
    (path / "COMPLETE").write_text("{half a json")
    with pytest.raises(ckpt.CorruptCheckpointError, match="COMPLETE is unreadable"):
        ckpt.load_checkpoint(accelerator, path)
    (path / "COMPLETE").write_text("ok\n")  # the marker written before digests were recorded
    assert ckpt.load_checkpoint(accelerator, path) == state(1)


def test_state_accelerate_cannot_load_is_a_one_line_checkpoint_error(accelerator, tmp_path):
    make_training(accelerator)
    path = ckpt.save_checkpoint(accelerator, tmp_path, state(1), keep_last=3)
    (path / "optimizer.bin").write_bytes(b"not a torch file")  # consistent with its digest: an "old" format
    rerecord_digests(path)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(accelerator, path)
    assert not isinstance(info.value, ckpt.CorruptCheckpointError)
    assert f"{path}: accelerate could not load this checkpoint (" in str(info.value)
    assert "\n" not in str(info.value)


def test_trainer_state_written_before_the_nan_counters_still_reads(tmp_path):
    values = json.loads(state(3).to_json())
    del values["skipped_nonfinite_steps"], values["consecutive_nonfinite_steps"]
    (tmp_path / "trainer_state.json").write_text(json.dumps(values))
    restored = TrainerState.read(tmp_path)
    assert restored == state(3) and restored.skipped_nonfinite_steps == 0
