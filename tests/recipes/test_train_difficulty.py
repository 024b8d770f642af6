"""training/train_difficulty.py end to end: real MMLU outcomes + real Arena votes, tiny random-init DeBERTa-v2.

Tiny config on the fixture dataset: 129 training prompts (73 with both models' MMLU outcomes, the rest with
Arena votes) / micro-batch 16 = 9 micro-batches per epoch on 1 process (5 per process on 2), 3 epochs.
The uninterrupted 2-epoch runs (1 and 2 processes) are the session's shared ones (tests/fixtures/difficulty_runs.py),
which the SIGKILL/resume tests compare against too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from routerforge.data.dataset_io import load_prepared
from routerforge.errors import CheckpointError
from routerforge.models.difficulty import DifficultyHeads, HeadSpec, load_router
from routerforge.train.consistency import parameter_digest
from routerforge.train.faults import NONFINITE_LOSS_STEPS_ENV, NONFINITE_LOSS_VALUE_ENV
from tests.fixtures import difficulty_runs
from tests.fixtures.recipe_runner import (
    ACCELERATE,
    REPO_ROOT,
    read_export,
    recipe_env,
    run_recipe,
    run_recipe_in_process,
)
from tests.fixtures.tiny_dataset import read_arena_pairs
from tests.fixtures.tiny_deberta import tiny_deberta_dir, tiny_deberta_spec
from tests.fixtures.tiny_difficulty_dataset import write_outcomes_and_pairs
from tests.fixtures.tiny_outcomes_dataset import read_mmlu_outcomes

CONFIG = "configs/difficulty/tiny.yaml"
SCRIPT = "training/train_difficulty.py"
EXPORT_FILES = ["backbone/config.json", "backbone/model.safetensors", "config.json", "manifest.json",
                "model.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return difficulty_runs.tiny_data(tmp_path_factory)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return tiny_deberta_spec(tmp_path_factory)


def overrides(data_dir, out_dir, backbone, *extra: str) -> list[str]:
    return [f"data.path={data_dir}", f"run.output_dir={out_dir}", f"model.backbone={backbone}", *extra]


def argv(data_dir, out_dir, backbone, *extra: str) -> list[str]:
    return ["--config", str(REPO_ROOT / CONFIG), *overrides(data_dir, out_dir, backbone, *extra)]


def export_of(out_dir):
    return out_dir / "difficulty" / "difficulty-tiny" / "final"


def export_files(export_dir) -> list[str]:
    return sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file())


def strongest_model(data) -> str:
    """The highest mean training score, computed here without the recipe's code."""
    scores, models = data.outcomes["train"]["score"], data.outcomes["train"]["model"]
    means = {m: sum(s for s, mm in zip(scores, models, strict=True) if mm == m) / models.count(m) for m in set(models)}
    return max(sorted(means), key=means.get)


def test_tiny_run_learns_and_exports_exactly_the_expected_files(tiny_data, backbone, tmp_path, tmp_path_factory,
                                                                capsys):
    from transformers import AutoModel, DebertaV2Model

    result = run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path, backbone))
    export_dir = export_of(tmp_path)
    assert result["export_dir"] == str(export_dir)
    assert export_files(export_dir) == EXPORT_FILES
    out = capsys.readouterr().out
    assert f"checkpoint: {export_dir}" in out and "tracking: none" in out

    heads, config, manifest = read_export(export_dir)
    data = load_prepared(tiny_data)
    # The pool is the data's; the reference is the strongest model on the training outcomes; one candidate.
    reference = strongest_model(data)
    other = next(m for m in set(data.outcomes["train"]["model"]) if m != reference)
    assert config["model_pool"] == data.models == manifest["model_pool"] and len(data.models) == 15
    assert config["reference_model"] == reference and config["tolerance"] == 0.0
    assert config["candidates"] == [{"model": other, "n_samples": 1, "name": f"{other}@best-of-1"}]
    assert config["heads"] == {"hidden_size": 32, "num_candidates": 1, "difficulty": True, "num_models": 15,
                               "dropout": 0.1}
    assert heads["candidates.weight"].shape == (1, 32) and heads["win.weight"].shape == (15, 32)

    # The backbone directory is a plain transformers model; every tensor moved away from its initial value.
    plain = AutoModel.from_pretrained(str(export_dir / "backbone"))
    assert type(plain) is DebertaV2Model
    initial_backbone = load_file(str(tiny_deberta_dir(tmp_path_factory) / "model.safetensors"))
    trained_backbone = load_file(str(export_dir / "backbone" / "model.safetensors"))
    assert trained_backbone.keys() == initial_backbone.keys()
    for name, tensor in trained_backbone.items():
        assert not torch.equal(tensor, initial_backbone[name]), f"backbone {name} did not change"
    set_seed(0)  # the heads' initial values: the recipe seeds with run.seed before building them
    initial_heads = DifficultyHeads(HeadSpec(**config["heads"])).state_dict()
    for name, tensor in heads.items():
        assert not torch.equal(tensor, initial_heads[name]), f"head {name} did not change"

    # Loss falls: the last 5 logged optimizer steps well below the first 5; each head's own loss too.
    history = manifest["training"]["loss_history"]
    assert len(history) == manifest["training"]["optimizer_steps"] == result["optimizer_steps"] == 27
    first, last = history[:5], history[-5:]
    assert sum(h["train_loss"] for h in last) / 5 < sum(h["train_loss"] for h in first) / 5 - 0.2
    for head in ("candidates_loss", "difficulty_loss"):
        assert sum(h[head] for h in last) / 5 < sum(h[head] for h in first) / 5, head

    # The manifest binds data, config, files and the trained weights.
    assert manifest["data"]["fingerprint"] == data.fingerprint
    assert manifest["data"]["train"]["prompts"] == 129 and manifest["data"]["train"]["prompts_with_outcomes"] == 73
    assert manifest["encoder"]["model_type"] == "deberta-v2" and manifest["encoder"]["spec"] == backbone
    assert manifest["config"]["optim"]["lr"] == 1e-3 and manifest["config"]["labels"]["best_of_n"] == [1]
    assert manifest["training"]["world_size"] == 1 and manifest["training"]["frozen_unused_parameters"] == []
    for name in EXPORT_FILES:
        if name != "manifest.json":
            assert manifest["files"][name] == hashlib.sha256((export_dir / name).read_bytes()).hexdigest(), name
    router, tokenizer, _ = load_router(export_dir)
    assert manifest["training"]["param_sha256_per_process"] == [parameter_digest(router)]
    metrics = manifest["metrics"]
    assert metrics["validation_candidate_labels"] == manifest["data"]["eval"]["candidate_labels"][f"{other}@best-of-1"]
    assert 0 <= metrics["validation_win_accuracy"] <= 1 and metrics["validation_decisive_pairs"] > 0

    # The exported router scores prompts: a probability per candidate, a difficulty, a strength per model.
    batch = tokenizer(data.outcomes["validation"]["prompt"][:3], padding=True, truncation=True, max_length=64,
                      return_tensors="pt")
    with torch.no_grad():
        outputs = router(batch["input_ids"], batch["attention_mask"])
    assert outputs["candidate_logits"].shape == (3, 1) and outputs["model_strengths"].shape == (3, 15)
    assert torch.isfinite(torch.sigmoid(outputs["difficulty_logit"])).all()


def test_lora_trains_only_adapters_and_heads_and_exports_a_merged_backbone(tiny_data, backbone, tmp_path,
                                                                           tmp_path_factory):
    run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path, backbone, "model.lora.enabled=true",
                                                   "model.lora.r=4", "run.max_optimizer_steps=3",
                                                   "checkpoint.every_optimizer_steps=0"))
    export_dir = export_of(tmp_path)
    assert export_files(export_dir) == EXPORT_FILES
    _, config, manifest = read_export(export_dir)
    assert config["lora"] == {"r": 4, "alpha": 16.0, "merged_into_backbone": True}
    # Adapters: 2 layers x (query, key, value) x (A: 4x32, B: 32x4); heads: 32 x (1 + 1 + 15) + 17 biases.
    assert manifest["training"]["trainable_parameters"] == 2 * 3 * 2 * 4 * 32 + 32 * 17 + 17
    initial = load_file(str(tiny_deberta_dir(tmp_path_factory) / "model.safetensors"))
    trained = load_file(str(export_dir / "backbone" / "model.safetensors"))
    assert trained.keys() == initial.keys()  # merged: no adapter tensors left
    changed = {name for name in trained if not torch.equal(trained[name], initial[name])}
    assert changed == {f"encoder.layer.{i}.attention.self.{p}_proj.weight" for i in (0, 1)
                       for p in ("query", "key", "value")}


def test_heads_follow_the_data(backbone, tmp_path):
    # Pairs only: only the win heads exist. Outcomes only: candidate + difficulty heads, no win heads.
    votes_only = write_outcomes_and_pairs(tmp_path / "data", "votes", "v1", [], read_arena_pairs(60))
    run_recipe_in_process("train_difficulty", argv(votes_only, tmp_path / "a", backbone, "run.max_optimizer_steps=2",
                                                   "checkpoint.every_optimizer_steps=0"))
    heads, config, manifest = read_export(export_of(tmp_path / "a"))
    assert config["heads"]["num_candidates"] == 0 and config["heads"]["difficulty"] is False
    assert config["heads"]["num_models"] == len(load_prepared(votes_only).models) == 10
    assert set(heads) == {"win.weight", "win.bias"} and config["reference_model"] is None
    assert set(manifest["training"]["loss_history"][0]) == {"optimizer_step", "train_loss", "skipped_nonfinite",
                                                            "win_loss"}

    outcomes_only = write_outcomes_and_pairs(tmp_path / "data", "mmlu", "v1", read_mmlu_outcomes(per_subject=8), [])
    run_recipe_in_process("train_difficulty", argv(outcomes_only, tmp_path / "b", backbone, "run.max_optimizer_steps=2",
                                                   "checkpoint.every_optimizer_steps=0", "loss.difficulty_weight=0"))
    heads, config, _ = read_export(export_of(tmp_path / "b"))
    assert set(heads) == {"candidates.weight", "candidates.bias"}  # difficulty weight 0: no difficulty head
    assert config["heads"]["num_models"] == 0 and config["heads"]["num_candidates"] == 1


def test_stop_then_resume_auto_matches_an_uninterrupted_run(tiny_data, backbone, tmp_path_factory, tmp_path):
    # In-process and fast (the SIGKILL versions are in tests/reliability/test_kill_resume_difficulty.py): a run
    # stopped after optimizer step 5 (checkpoint at step 3, mid-epoch 0) and resumed with resume=auto ends
    # bit-identical to an uninterrupted run (the shared in-process one: 2 epochs, a checkpoint every 3 steps).
    # Dropout makes this depend on the restored RNG state.
    ckpt = ["checkpoint.every_optimizer_steps=3", "checkpoint.keep_last=5", "run.epochs=2"]
    full_run = difficulty_runs.uninterrupted(tmp_path_factory, 1)
    run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "split", backbone, *ckpt,
                                                   "run.max_optimizer_steps=5"))
    with pytest.raises(CheckpointError, match="already holds step checkpoints.*resume=auto"):
        run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "split", backbone, *ckpt))
    result = run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "split", backbone, *ckpt,
                                                            "resume=auto"))
    for name in ("model.safetensors", "backbone/model.safetensors"):
        full = load_file(str(export_of(full_run) / name))
        resumed = load_file(str(export_of(tmp_path / "split") / name))
        assert full.keys() == resumed.keys()
        for key in full:
            assert torch.equal(full[key], resumed[key]), f"{name}: {key}"
    _, _, manifest = read_export(export_of(tmp_path / "split"))
    assert manifest["training"]["resumed_from"].endswith("step-000003")
    assert manifest["training"]["loss_history"][0]["optimizer_step"] == 4 and result["optimizer_steps"] == 18


def test_length_grouped_batches_resume_exactly_and_change_the_run(tiny_data, backbone, tmp_path_factory, tmp_path):
    # data.group_by_length=true: the batch order is transformers' length-grouped order seeded per epoch, so a run
    # stopped after step 5 and resumed ends bit-identical to an uninterrupted grouped run, and differs from the
    # plain shuffle's (the shared uninterrupted run).
    ckpt = ["checkpoint.every_optimizer_steps=3", "checkpoint.keep_last=5", "run.epochs=2", "data.group_by_length=true"]
    run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "full", backbone, *ckpt))
    run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "split", backbone, *ckpt,
                                                   "run.max_optimizer_steps=5"))
    run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "split", backbone, *ckpt, "resume=auto"))
    grouped = load_file(str(export_of(tmp_path / "full") / "backbone/model.safetensors"))
    resumed = load_file(str(export_of(tmp_path / "split") / "backbone/model.safetensors"))
    shuffled = load_file(str(export_of(difficulty_runs.uninterrupted(tmp_path_factory, 1))
                             / "backbone/model.safetensors"))
    assert all(torch.equal(grouped[key], resumed[key]) for key in grouped)
    assert not all(torch.equal(grouped[key], shuffled[key]) for key in grouped)


def test_config_typos_and_bad_values_name_the_key(tiny_data, backbone, tmp_path):
    proc = run_recipe(SCRIPT, CONFIG, overrides(tiny_data, tmp_path, backbone, "model.lora.rr=4"), check=False,
                      timeout_s=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: .*unknown config key 'model\.lora\.rr'\. Did you mean 'r'\? Valid keys here: "
                        r"enabled, r, alpha, dropout, target_modules\.", last), last
    assert not (tmp_path / "difficulty").exists()

    from routerforge.errors import ConfigError
    from tests.fixtures.recipe_runner import load_recipe_module

    module = load_recipe_module("train_difficulty")
    with pytest.raises(ConfigError, match="labels.tolerance must be in \\[0, 1\\] \\(score units\\), got 2.0"):
        module.parse_recipe_args(module.DifficultyConfig, argv(tiny_data, tmp_path, backbone, "labels.tolerance=2"))
    with pytest.raises(ConfigError, match="model.pooling must be one of cls, mean, got 'max'"):
        module.parse_recipe_args(module.DifficultyConfig, argv(tiny_data, tmp_path, backbone, "model.pooling=max"))
    with pytest.raises(ConfigError, match="invalid value for 'run.epochs'"):
        module.parse_recipe_args(module.DifficultyConfig, argv(tiny_data, tmp_path, backbone, "run.epochs=three"))


@pytest.mark.slow
def test_accelerate_launch_single_process_with_wandb_offline(tiny_data, backbone, tmp_path):
    # The documented command, as users type it (W&B offline: no key, no network); progress bar on.
    proc = subprocess.run(
        [ACCELERATE, "launch", str(REPO_ROOT / SCRIPT), "--config", str(REPO_ROOT / CONFIG),
         *overrides(tiny_data, tmp_path, backbone, "tracking.report_to=wandb", "run.max_optimizer_steps=3",
                    "run.progress_bar=true")],
        cwd=REPO_ROOT, env=recipe_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export_dir = export_of(tmp_path)
    _, _, manifest = read_export(export_dir)
    tracking = manifest["tracking"]
    assert tracking["tracker"] == "wandb" and tracking["mode"] == "offline"
    offline_dir = tmp_path / "difficulty" / "difficulty-tiny" / "wandb" / tracking["local_dir"].rsplit("/", 1)[-1]
    assert offline_dir.is_dir() and offline_dir.name.endswith(tracking["run_id"])
    assert f"checkpoint: {export_dir}" in proc.stdout
    assert f"W&B run {tracking['run_id']} (offline): {offline_dir}" in proc.stdout
    assert "difficulty: 100%" in proc.stderr and "3/3" in proc.stderr  # the progress bar


@pytest.mark.slow
def test_two_processes_really_run_and_agree(tmp_path_factory):
    out = difficulty_runs.uninterrupted(tmp_path_factory, 2)  # accelerate launch, 2 epochs, a checkpoint every 3
    export_dir = export_of(out)
    _, _, manifest = read_export(export_dir)
    training = manifest["training"]
    assert training["world_size"] == 2 and training["distributed_type"] == "MULTI_CPU"
    digests = training["param_sha256_per_process"]
    router, _, _ = load_router(export_dir)
    assert len(digests) == 2 and digests[0] == digests[1] == parameter_digest(router)
    # 9 micro-batches of 16 per epoch -> 5 per process -> 5 optimizer steps per epoch, 2 epochs.
    assert training["optimizer_steps"] == 10
    step_dirs = sorted(p.name for p in (out / "difficulty" / "difficulty-tiny").glob("step-*"))
    assert step_dirs == ["step-000003", "step-000006", "step-000009"]  # checkpoint every 3 steps, keep_last 5
    # only the main process exports (and prints it; "registered checkpoint: ..." is another line)
    stdout = (out / difficulty_runs.STDOUT_FILE).read_text()
    assert [line.startswith("checkpoint: ") for line in stdout.splitlines()].count(True) == 1
    assert export_files(export_dir) == EXPORT_FILES


def step_weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    """The whole router (backbone + heads) as saved in a step checkpoint."""
    return load_file(str(run_dir / f"step-{step:06d}" / "model.safetensors"))


def step_adam_state(run_dir, step: int) -> dict:
    return torch.load(run_dir / f"step-{step:06d}" / "optimizer.bin", weights_only=True)["state"]


def step_trainer_state(run_dir, step: int) -> dict:
    return json.loads((run_dir / f"step-{step:06d}" / "trainer_state.json").read_text())


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs: {what}"


def test_nonfinite_loss_steps_are_skipped_with_weights_unchanged_and_counted(tiny_data, backbone, tmp_path,
                                                                              monkeypatch):
    # Real NaN losses at optimizer steps 4 and 5 (routerforge/train/faults.py); the guard is
    # routerforge/train/nan_guard.py. Every step is checkpointed so each skipped step can be inspected.
    monkeypatch.setenv(NONFINITE_LOSS_STEPS_ENV, "4,5")
    monkeypatch.setenv(NONFINITE_LOSS_VALUE_ENV, "nan")
    result = run_recipe_in_process("train_difficulty", argv(
        tiny_data, tmp_path, backbone, "run.max_optimizer_steps=7", "checkpoint.every_optimizer_steps=1",
        "checkpoint.keep_last=100"))
    run_dir = tmp_path / "difficulty" / "difficulty-tiny"
    # Steps 4 and 5 changed nothing: backbone + heads and AdamW's moments are exactly those after step 3.
    for step in (4, 5):
        assert_same_tensors(step_weights(run_dir, step), step_weights(run_dir, 3), f"skipped step {step}")
        reference_moments = step_adam_state(run_dir, 3)
        for param, moments in step_adam_state(run_dir, step).items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(moments[key], reference_moments[param][key]), f"step {step}: {param} {key}"
    after_6, after_5 = step_weights(run_dir, 6), step_weights(run_dir, 5)
    assert not torch.equal(after_6["heads.win.weight"], after_5["heads.win.weight"])  # trains again after
    assert [(step_trainer_state(run_dir, s)["skipped_nonfinite_steps"],
             step_trainer_state(run_dir, s)["consecutive_nonfinite_steps"]) for s in (3, 4, 5, 6, 7)] == [
        (0, 0), (1, 1), (2, 2), (2, 0), (2, 0)]

    _, _, manifest = read_export(export_of(tmp_path))
    history = manifest["training"]["loss_history"]
    assert [h["optimizer_step"] for h in history] == list(range(1, 8))  # a skipped step keeps its slot
    assert [h["optimizer_step"] for h in history if h["skipped_nonfinite"]] == [4, 5]
    for h in history:  # the logging window holds only finite micro-batches: a skipped step logs no loss
        assert math.isnan(h["train_loss"]) == h["skipped_nonfinite"]
        if h["skipped_nonfinite"]:
            assert set(h) == {"optimizer_step", "train_loss", "skipped_nonfinite"}
        else:
            assert math.isfinite(h["candidates_loss"]) and math.isfinite(h["difficulty_loss"])
    assert manifest["training"]["skipped_nonfinite_steps"] == result["skipped_nonfinite_steps"] == 2
    assert manifest["training"]["optimizer_steps"] == result["optimizer_steps"] == 7
    peak = manifest["training"]["peak_accelerator_memory_bytes"]  # bytes on CUDA; None on CPU (no such counter)
    assert (peak > 0) if torch.cuda.is_available() else (peak is None)
    router, _, _ = load_router(export_of(tmp_path))
    assert all(torch.isfinite(p).all() for p in router.parameters())


@pytest.mark.slow
def test_consecutive_nonfinite_steps_end_the_run_with_a_checkpoint_and_exit_3(tiny_data, backbone, tmp_path,
                                                                               monkeypatch):
    common = ["run.max_optimizer_steps=9", "checkpoint.every_optimizer_steps=4", "checkpoint.keep_last=100"]
    # Reference: the same NaN steps under the default limit (10), which they do not reach (in-process, fast).
    monkeypatch.setenv(NONFINITE_LOSS_STEPS_ENV, "4,5,6")
    run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "reference", backbone, *common))
    monkeypatch.delenv(NONFINITE_LOSS_STEPS_ENV)

    out = tmp_path / "stopped"
    args = overrides(tiny_data, out, backbone, *common, "run.max_consecutive_nonfinite_steps=3")
    stopped = run_recipe(SCRIPT, CONFIG, args, env=recipe_env(**{NONFINITE_LOSS_STEPS_ENV: "4,5,6"}), check=False)
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    run_dir = out / "difficulty" / "difficulty-tiny"
    assert stopped.stderr.strip().splitlines()[-1] == (
        "error: training stopped at optimizer step 6: the loss was NaN/Inf in 3 consecutive optimizer steps "
        "(run.max_consecutive_nonfinite_steps=3; 3 skipped in this run); the last good weights are in "
        f"{run_dir / 'step-000006'}. Lower optim.lr, set optim.max_grad_norm or check the data, then continue "
        "with resume=auto.")
    # A complete checkpoint at the stop (step 6 is off the every-4 cadence), holding the last good weights; no export.
    assert sorted(p.name for p in run_dir.glob("step-*")) == ["step-000004", "step-000006"]
    state = step_trainer_state(run_dir, 6)
    assert (state["skipped_nonfinite_steps"], state["consecutive_nonfinite_steps"]) == (3, 3)
    assert_same_tensors(step_weights(run_dir, 6), step_weights(run_dir, 4), "skipped steps 5-6")
    assert not (run_dir / "final").exists() and not list(run_dir.parent.glob(".tmp-*"))

    # With the cause gone, resume=auto continues from the stop and ends bit-identical to the reference.
    resumed = run_recipe(SCRIPT, CONFIG, [*args, "resume=auto"])
    assert f"resumed from {run_dir / 'step-000006'} (optimizer step 6" in resumed.stdout
    for name in ("model.safetensors", "backbone/model.safetensors"):
        assert_same_tensors(load_file(str(export_of(out) / name)),
                            load_file(str(export_of(tmp_path / "reference") / name)), f"resumed vs reference: {name}")
    _, _, manifest = read_export(export_of(out))
    assert manifest["training"]["skipped_nonfinite_steps"] == 3 and manifest["training"]["optimizer_steps"] == 9


@pytest.mark.slow
def test_fsdp2_run_exports_the_same_router_as_ddp(tiny_data, backbone, tmp_path_factory, tmp_path):
    """Real FSDP2 over gloo (launch/accelerate/fsdp_cpu_2proc.yaml, one unit per DebertaV2Layer): no process
    holds the whole router, so the export is gathered (launch/README.md note 4). Same files as ever, the same
    weights as a DDP run (the shared 2-process run, same settings) up to float summation order, loadable by
    load_router."""
    from tests.fixtures.recipe_runner import FSDP_CPU_2PROC

    ddp_out = difficulty_runs.uninterrupted(tmp_path_factory, 2)
    run_recipe(SCRIPT, CONFIG, difficulty_runs.overrides(tiny_data, tmp_path / "fsdp", backbone), processes=2,
               launch_config=FSDP_CPU_2PROC, launch_args=("--fsdp_transformer_layer_cls_to_wrap", "DebertaV2Layer"))
    ddp, fsdp = export_of(ddp_out), export_of(tmp_path / "fsdp")
    assert export_files(fsdp) == EXPORT_FILES
    training = json.loads((fsdp / "manifest.json").read_text())["training"]
    assert (training["distributed_type"], training["world_size"]) == ("FSDP", 2)
    digests = training["param_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]  # over the gathered weights
    assert training["optimizer_steps"] == 10
    step = {p.name for p in (tmp_path / "fsdp" / "difficulty" / "difficulty-tiny" / "step-000003").iterdir()}
    assert {"pytorch_model_fsdp_0", "optimizer_0"} <= step  # sharded step checkpoints
    for name in ("model.safetensors", "backbone/model.safetensors"):
        a, b = load_file(ddp / name), load_file(fsdp / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=f"{name}:{key}")
    router, _, config = load_router(fsdp)  # verifies every file's sha256; weights compared above
    assert config["router_type"] == "difficulty"
    assert sum(p.numel() for p in router.parameters()) == sum(p.numel() for p in load_router(ddp)[0].parameters())


def test_early_stopping_exports_the_best_evaluations_backbone_and_heads_exactly(tiny_data, backbone, tmp_path):
    # Only the first evaluation can improve by more than min_delta: evaluations at steps 2 (best), 4, 6 -> stop.
    stop = ["run.eval_every_optimizer_steps=2", "run.early_stopping_patience_evals=2",
            "run.early_stopping_metric=candidates_loss", "run.early_stopping_min_delta=1.0"]
    result = run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "stop", backbone, *stop))
    assert result["optimizer_steps"] == 6
    stopping = result["early_stopping"]
    assert stopping["stopped_early"] and stopping["best_optimizer_step"] == 2 and stopping["exported"] == "best"
    run_recipe_in_process("train_difficulty", argv(tiny_data, tmp_path / "two", backbone, "run.max_optimizer_steps=2"))
    for name in ("model.safetensors", "backbone/model.safetensors"):
        best = load_file(str(export_of(tmp_path / "stop") / name))
        at_step_2 = load_file(str(export_of(tmp_path / "two") / name))
        assert best.keys() == at_step_2.keys() and all(torch.equal(best[k], at_step_2[k]) for k in best), name
    _, _, manifest = read_export(export_of(tmp_path / "stop"))
    assert manifest["training"]["early_stopping"]["best_optimizer_step"] == 2
    assert manifest["metrics"]["validation_candidates_loss"] == pytest.approx(stopping["best_value"], rel=1e-5)
