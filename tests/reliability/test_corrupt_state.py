"""Missing or corrupt checkpoint state: a named error (CorruptCheckpointError) and exit status 2, never a
traceback from inside torch.load and never a resume that silently continues from different state.

Every COMPLETE marker records the sha256 of each file of its checkpoint (routerforge/train/checkpointing.py);
the resume checks them before accelerate loads anything. The runs are training/train_mf.py on the tiny config.
"""

from __future__ import annotations

import json
import shutil

import pytest

from routerforge.train.checkpointing import CorruptCheckpointError
from tests.fixtures.recipe_runner import REPO_ROOT, read_export, run_recipe, run_recipe_in_process
from tests.fixtures.tiny_dataset import build_tiny_dataset

CONFIG = "configs/mf/tiny.yaml"
SCRIPT = "training/train_mf.py"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"), n_pairs=200)


def overrides(data_dir, out_dir, *extra: str) -> list[str]:
    return [f"data.path={data_dir}", f"run.output_dir={out_dir}", "checkpoint.every_optimizer_steps=3",
            "checkpoint.keep_last=5", *extra]


@pytest.fixture(scope="module")
def interrupted_run(tiny_data, tmp_path_factory):
    """A run stopped after optimizer step 6: checkpoints step-3 and step-6."""
    out = tmp_path_factory.mktemp("interrupted")
    run_recipe_in_process("train_mf", ["--config", str(REPO_ROOT / CONFIG),
                                       *overrides(tiny_data, out, "run.max_optimizer_steps=6")])
    return out


@pytest.fixture
def run_copy(interrupted_run, tmp_path):
    shutil.copytree(interrupted_run, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "mf" / "mf-tiny" / "final")  # the stopped run's export: a resume must not make one
    return tmp_path


def damage(path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif how == "overwrite":
        path.write_bytes(bytes(reversed(path.read_bytes())))  # same size, different bytes
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncate", "overwrite", "delete"])
@pytest.mark.parametrize("victim", ["optimizer.bin", "random_states_0.pkl", "scheduler.bin", "model.safetensors"])
def test_damaged_state_is_a_named_error_that_points_to_the_previous_checkpoint(tiny_data, run_copy, victim, how):
    run_dir = run_copy / "mf" / "mf-tiny"
    damage(run_dir / "step-000006" / victim, how)
    with pytest.raises(CorruptCheckpointError) as info:
        run_recipe_in_process("train_mf", ["--config", str(REPO_ROOT / CONFIG),
                                           *overrides(tiny_data, run_copy, "resume=auto")])
    reason = "is missing from the checkpoint" if how == "delete" else "is corrupt: its sha256 differs"
    assert str(info.value) == (
        f"cannot resume: {run_dir / 'step-000006' / victim} {reason} from the one recorded when the checkpoint "
        f"was saved (truncated, overwritten or damaged on disk); resume from an earlier checkpoint "
        f"(resume={run_dir / 'step-000003'}) or delete step-000006 and use resume=auto."
        if how != "delete" else
        f"cannot resume: {run_dir / 'step-000006' / victim} {reason}; resume from an earlier checkpoint "
        f"(resume={run_dir / 'step-000003'}) or delete step-000006 and use resume=auto.")
    assert not (run_dir / "final").exists()


def test_an_edited_trainer_state_is_caught_too(tiny_data, run_copy):
    # Valid JSON, plausible values: without the digest the run would resume at the wrong position.
    path = run_copy / "mf" / "mf-tiny" / "step-000006" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["batches_done_in_epoch"] -= 1
    path.write_text(json.dumps(state))
    with pytest.raises(CorruptCheckpointError, match=r"trainer_state.json is corrupt: its sha256 differs"):
        run_recipe_in_process("train_mf", ["--config", str(REPO_ROOT / CONFIG),
                                           *overrides(tiny_data, run_copy, "resume=auto")])


@pytest.mark.slow
def test_corrupt_optimizer_state_exits_2_with_one_line_and_the_hint_works(tiny_data, run_copy, tmp_path):
    run_dir = run_copy / "mf" / "mf-tiny"
    damage(run_dir / "step-000006" / "optimizer.bin", "truncate")
    failed = run_recipe(SCRIPT, CONFIG, overrides(tiny_data, run_copy, "resume=auto"), check=False)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: cannot resume: {run_dir / 'step-000006' / 'optimizer.bin'} is corrupt")
    # Following the message: resume from the previous complete checkpoint.
    resumed = run_recipe(SCRIPT, CONFIG, overrides(tiny_data, run_copy, f"resume={run_dir / 'step-000003'}"))
    assert f"resumed from {run_dir / 'step-000003'} (optimizer step 3" in resumed.stdout
    _, _, manifest = read_export(run_dir / "final")
    assert manifest["training"]["optimizer_steps"] == 21


@pytest.mark.slow
def test_two_processes_both_stop_on_one_corrupt_rng_file(tiny_data, tmp_path):
    # The main process checks the digests and broadcasts the verdict: every process raises, none hangs.
    run_recipe(SCRIPT, CONFIG, overrides(tiny_data, tmp_path, "run.max_optimizer_steps=6"), processes=2)
    run_dir = tmp_path / "mf" / "mf-tiny"
    damage(run_dir / "step-000006" / "random_states_1.pkl", "truncate")
    failed = run_recipe(SCRIPT, CONFIG, overrides(tiny_data, tmp_path, "resume=auto"), processes=2, check=False,
                        timeout_s=180)
    assert failed.returncode != 0
    expected = f"error: cannot resume: {run_dir / 'step-000006' / 'random_states_1.pkl'} is corrupt"
    assert failed.stderr.count(expected) == 2  # both processes, one line each
