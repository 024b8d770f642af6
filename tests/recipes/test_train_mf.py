"""training/train_mf.py end to end on real Chatbot Arena votes with real MiniLM embeddings."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from routerforge.data.dataset_io import load_prepared
from routerforge.errors import CheckpointError
from routerforge.models.mf import MFModel
from routerforge.train.consistency import parameter_digest
from tests.fixtures.recipe_runner import (
    ACCELERATE,
    REPO_ROOT,
    read_export,
    recipe_env,
    run_recipe,
    run_recipe_in_process,
)
from tests.fixtures.tiny_dataset import build_tiny_dataset

CONFIG = "configs/mf/tiny.yaml"
SCRIPT = "training/train_mf.py"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"), n_pairs=200)


def tiny_argv(data_dir, out_dir, *extra: str) -> list[str]:
    return ["--config", str(REPO_ROOT / CONFIG), f"data.path={data_dir}", f"run.output_dir={out_dir}", *extra]


def model_from_export(export_dir) -> MFModel:
    weights, config, _ = read_export(export_dir)
    model = MFModel.from_config(config)
    model.load_state_dict(weights)
    return model


def test_tiny_run_learns_and_exports_exactly_the_expected_files(tiny_data, tmp_path):
    result = run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path))
    export_dir = tmp_path / "mf" / "mf-tiny" / "final"
    assert result["export_dir"] == str(export_dir)
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
    ]

    weights, config, manifest = read_export(export_dir)
    data = load_prepared(tiny_data)
    # The pool is the data's, in its order; one embedding row per model.
    assert config["model_pool"] == data.models == manifest["model_pool"]
    assert weights["P.weight"].shape == (len(data.models), 16)
    assert weights["text_proj.weight"].shape == (16, 384) and weights["classifier.weight"].shape == (1, 16)

    # Parameters changed: rebuild the initial weights exactly as the recipe does (same seed, same constructor).
    set_seed(0)
    initial = MFModel(len(data.models), 384, 16).state_dict()
    for name, tensor in weights.items():
        assert not torch.equal(tensor, initial[name]), f"{name} did not change"

    # Loss falls: mean of the last 5 logged optimizer steps well below the first 5 (and below log 2).
    history = [h["train_loss"] for h in manifest["training"]["loss_history"]]
    assert (
        len(history) == manifest["training"]["optimizer_steps"] == 21
    )  # 109 pairs / 16 = 7 steps x 3 epochs
    assert sum(history[-5:]) / 5 < sum(history[:5]) / 5 - 0.01
    assert manifest["metrics"]["validation_pairs"] == manifest["data"]["eval_pairs"] > 0

    # The manifest binds what a user of this router needs.
    assert manifest["recipe"] == "mf" and manifest["router_type"] == "mf"
    assert manifest["data"]["fingerprint"] == data.fingerprint
    assert manifest["encoder"] == data.encoder
    assert manifest["config"]["optim"]["lr"] == 0.01 and manifest["config"]["run"]["seed"] == 0
    assert len(manifest["git"]["sha"]) == 40 and isinstance(manifest["git"]["dirty"], bool)
    assert manifest["training"]["world_size"] == 1
    assert manifest["libraries"]["torch"] == torch.__version__
    for name in ("model.safetensors", "config.json"):
        assert manifest["files"][name] == hashlib.sha256((export_dir / name).read_bytes()).hexdigest()
    assert manifest["training"]["param_sha256_per_process"] == [
        parameter_digest(model_from_export(export_dir))
    ]

    # The exported router scores prompts: a vector of δ(m, q) for every model of the pool.
    model = model_from_export(export_dir)
    _, emb = data.embeddings("validation")
    scores = model.score_all_models(torch.from_numpy(emb[:3]))
    assert scores.shape == (3, len(data.models)) and torch.isfinite(scores).all()


def test_tie_rule_half_trains_on_ties_and_drop_does_not(tiny_data, tmp_path):
    run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "drop", "run.max_optimizer_steps=1"))
    run_recipe_in_process(
        "train_mf", tiny_argv(tiny_data, tmp_path / "half", "loss.ties=half", "run.max_optimizer_steps=1")
    )
    _, _, drop_manifest = read_export(tmp_path / "drop" / "mf" / "mf-tiny" / "final")
    _, _, half_manifest = read_export(tmp_path / "half" / "mf" / "mf-tiny" / "final")
    data = load_prepared(tiny_data)
    train = data.pairs["train"]
    names = train.features["winner"].names
    n_ties = sum(names[w] in ("tie", "tie_bothbad") for w in train["winner"])
    assert n_ties > 0
    assert drop_manifest["data"]["train_pairs"] + n_ties == half_manifest["data"]["train_pairs"] == len(train)
    assert sum(drop_manifest["data"]["train_pairs_dropped"].values()) == n_ties
    assert half_manifest["data"]["train_pairs_dropped"] == {}


def test_model_pool_follows_the_data(tmp_path):
    # 60 battles hold 10 models; no list of models exists anywhere in the recipe.
    data_dir = build_tiny_dataset(tmp_path / "data", n_pairs=60, name="arena60")
    run_recipe_in_process("train_mf", tiny_argv(data_dir, tmp_path, "run.max_optimizer_steps=2"))
    weights, config, _ = read_export(tmp_path / "mf" / "mf-tiny" / "final")
    assert config["model_pool"] == load_prepared(data_dir).models and len(config["model_pool"]) == 10
    assert weights["P.weight"].shape[0] == 10


def test_adding_a_model_trains_only_its_embedding(tmp_path):
    new_model = "gpt-4"
    base_data = build_tiny_dataset(
        tmp_path / "base_data", n_pairs=150, name="without_gpt4", skip_models=(new_model,)
    )
    run_recipe_in_process("train_mf", tiny_argv(base_data, tmp_path, "run.name=base"))
    base_dir = tmp_path / "mf" / "base" / "final"
    base_weights, base_config, _ = read_export(base_dir)
    assert new_model not in base_config["model_pool"]

    # A few labeled pairs with the new model.
    few_data = build_tiny_dataset(
        tmp_path / "few_data", n_pairs=40, name="gpt4_few", only_models=(new_model,)
    )
    run_recipe_in_process(
        "train_mf",
        tiny_argv(
            few_data,
            tmp_path,
            "run.name=added",
            f"init.from_export={base_dir}",
            "init.train_only_new_models=true",
            "run.epochs=10",
        ),
    )
    weights, config, manifest = read_export(tmp_path / "mf" / "added" / "final")
    base_pool = base_config["model_pool"]
    pool = config["model_pool"]
    new_models = pool[len(base_pool) :]
    assert pool[: len(base_pool)] == base_pool and new_model in new_models
    assert set(pool) == set(base_pool) | set(load_prepared(few_data).models)
    assert manifest["training"]["frozen_models"] == base_pool

    # Everything of the base router is bit-for-bit unchanged ...
    assert torch.equal(weights["text_proj.weight"], base_weights["text_proj.weight"])
    assert torch.equal(weights["classifier.weight"], base_weights["classifier.weight"])
    assert torch.equal(weights["P.weight"][: len(base_pool)], base_weights["P.weight"])
    # ... and the new model's embedding learned from its pairs: the training loss fell.
    history = [h["train_loss"] for h in manifest["training"]["loss_history"]]
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3 - 0.01


@pytest.mark.parametrize(("accumulation", "total_steps"), [(1, 21), (2, 12)])
def test_stop_then_resume_auto_matches_an_uninterrupted_run(tiny_data, tmp_path, accumulation, total_steps):
    # In-process and fast (the SIGKILL versions are in tests/reliability/test_kill_resume_mf.py): a run that
    # stops after optimizer step 5 (checkpoints every 3: step 3 is mid-epoch 0) and is resumed with resume=auto
    # ends bit-identical to an uninterrupted run. The LR is constant, so the shorter first run changes nothing.
    # With 2 micro-batches per optimizer step, 7 micro-batches make 4 steps per epoch (the last one short).
    ckpt = ["checkpoint.every_optimizer_steps=3", "checkpoint.keep_last=5",
            f"run.gradient_accumulation_steps={accumulation}"]
    run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "full", *ckpt))
    run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "split", *ckpt, "run.max_optimizer_steps=5"))
    with pytest.raises(CheckpointError, match="already holds step checkpoints.*resume=auto"):
        run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "split", *ckpt))  # resume=never default
    result = run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "split", *ckpt, "resume=auto"))
    full, _, _ = read_export(tmp_path / "full" / "mf" / "mf-tiny" / "final")
    resumed, _, manifest = read_export(tmp_path / "split" / "mf" / "mf-tiny" / "final")
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    assert manifest["training"]["resumed_from"].endswith("step-000003")
    assert manifest["training"]["loss_history"][0]["optimizer_step"] == 4
    assert result["optimizer_steps"] == manifest["training"]["optimizer_steps"] == total_steps


def test_config_typo_names_the_key(tiny_data, tmp_path):
    proc = run_recipe(
        SCRIPT,
        CONFIG,
        [f"data.path={tiny_data}", f"run.output_dir={tmp_path}", "optim.lrr=1e-3"],
        check=False,
        timeout_s=120,
    )
    assert proc.returncode == 2
    last_line = proc.stderr.strip().splitlines()[-1]  # one line, no traceback
    assert last_line.startswith("error: ") and "Traceback" not in proc.stderr
    assert "unknown config key 'optim.lrr'. Did you mean 'lr'? Valid keys here: name, lr, weight_decay," in last_line
    assert not (tmp_path / "mf").exists()


@pytest.mark.slow
def test_accelerate_launch_single_process_with_wandb_offline(tiny_data, tmp_path):
    # The documented command, as users type it (W&B offline: no key, no network).
    proc = subprocess.run(
        [
            ACCELERATE,
            "launch",
            str(REPO_ROOT / SCRIPT),
            "--config",
            str(REPO_ROOT / CONFIG),
            f"data.path={tiny_data}",
            f"run.output_dir={tmp_path}",
            "tracking.report_to=wandb",
            "run.max_optimizer_steps=3",
        ],
        cwd=REPO_ROOT,
        env=recipe_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    export_dir = tmp_path / "mf" / "mf-tiny" / "final"
    _, _, manifest = read_export(export_dir)
    tracking = manifest["tracking"]
    assert tracking["tracker"] == "wandb" and tracking["mode"] == "offline"
    offline_dir = tmp_path / "mf" / "mf-tiny" / "wandb" / f"{tracking['local_dir'].rsplit('/', 1)[-1]}"
    assert offline_dir.is_dir() and offline_dir.name.startswith("offline-run-")
    assert offline_dir.name.endswith(tracking["run_id"])
    # The end-of-run message says where the checkpoint and the W&B run went.
    assert f"checkpoint: {export_dir}" in proc.stdout
    assert f"W&B run {tracking['run_id']} (offline): {offline_dir}" in proc.stdout
    assert f"wandb sync {offline_dir}" in proc.stdout


@pytest.mark.slow
def test_two_processes_really_run_and_agree(tiny_data, tmp_path):
    proc = run_recipe(SCRIPT, CONFIG, [f"data.path={tiny_data}", f"run.output_dir={tmp_path}"], processes=2)
    export_dir = tmp_path / "mf" / "mf-tiny" / "final"
    _, _, manifest = read_export(export_dir)
    training = manifest["training"]
    assert training["world_size"] == 2 and training["distributed_type"] == "MULTI_CPU"
    # Identical weights on both ranks, and they are the exported ones.
    digests = training["param_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1] == parameter_digest(model_from_export(export_dir))
    # Each process saw half of every epoch: 7 micro-batches of 16 -> 4 per process -> 4 optimizer steps per epoch.
    assert training["optimizer_steps"] == 12
    step_dirs = sorted(p.name for p in (tmp_path / "mf" / "mf-tiny").glob("step-*"))
    assert step_dirs == ["step-000008", "step-000012"]  # checkpoint every 4 steps, keep_last 2
    for step_dir in step_dirs:
        ckpt = tmp_path / "mf" / "mf-tiny" / step_dir
        assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2
        assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    # Only the main process prints and exports.
    assert sum(line.startswith("checkpoint: ") for line in proc.stdout.splitlines()) == 1
    assert load_file(str(export_dir / "model.safetensors"))["P.weight"].shape[0] == len(
        manifest["model_pool"]
    )


def test_tensorboard_is_the_alternative_tracker(tiny_data, tmp_path):
    result = run_recipe_in_process(
        "train_mf", tiny_argv(tiny_data, tmp_path, "tracking.report_to=tensorboard", "run.max_optimizer_steps=3")
    )
    log_dir = tmp_path / "mf" / "mf-tiny" / "tensorboard" / "routerforge"
    assert result["tracking"]["tracker"] == "tensorboard" and result["tracking"]["local_dir"] == str(log_dir)
    assert list(log_dir.glob("events.out.tfevents.*"))  # scalars (train/loss, eval/*) went here
    assert list(log_dir.glob("*/hparams.yml"))  # the flattened resolved config


EARLY_STOP = ["run.eval_every_optimizer_steps=2", "run.early_stopping_patience_evals=2",
              "run.early_stopping_metric=loss", "run.early_stopping_min_delta=1.0"]  # only the first eval "improves"


def test_early_stopping_exports_the_best_evaluations_weights_exactly_and_survives_a_resume(tiny_data, tmp_path,
                                                                                           monkeypatch):
    from routerforge.train.faults import RAISE_AT_STEP_ENV, InjectedCrash

    run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "stop", *EARLY_STOP))
    weights, _, manifest = read_export(tmp_path / "stop" / "mf" / "mf-tiny" / "final")
    stopping = manifest["training"]["early_stopping"]
    # Evaluations at steps 2 (best), 4 and 6 (no improvement > min_delta): patience 2 stops the run at step 6.
    assert manifest["training"]["optimizer_steps"] == 6 < manifest["training"]["total_optimizer_steps"] == 21
    assert stopping["stopped_early"] and stopping["best_optimizer_step"] == 2 and stopping["evaluations"] == 3
    assert stopping["exported"] == "best" and stopping["metric"] == "loss" and stopping["lower_is_better"]
    assert [e["optimizer_step"] for e in stopping["eval_history"]] == [2, 4, 6]
    assert manifest["metrics"]["validation_loss"] == pytest.approx(stopping["best_value"], rel=1e-6)

    # The exported weights are exactly those after optimizer step 2 (a run that stops there, last weights).
    run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "two", "run.max_optimizer_steps=2"))
    at_step_2, _, _ = read_export(tmp_path / "two" / "mf" / "mf-tiny" / "final")
    assert weights.keys() == at_step_2.keys()
    assert all(torch.equal(weights[k], at_step_2[k]) for k in weights)

    # Killed after step 5 and resumed from step 4's checkpoint: same stop step, same exported weights.
    resumable = [*EARLY_STOP, "checkpoint.every_optimizer_steps=2", "checkpoint.keep_last=10"]
    with monkeypatch.context() as patch:
        patch.setenv(RAISE_AT_STEP_ENV, "5")
        with pytest.raises(InjectedCrash):
            run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "resumed", *resumable))
    run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path / "resumed", *resumable, "resume=auto"))
    resumed, _, resumed_manifest = read_export(tmp_path / "resumed" / "mf" / "mf-tiny" / "final")
    assert resumed_manifest["training"]["resumed_from"].endswith("step-000004")
    assert resumed_manifest["training"]["optimizer_steps"] == 6
    assert resumed_manifest["training"]["early_stopping"]["best_optimizer_step"] == 2
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)


def test_without_early_stopping_the_last_steps_weights_can_be_exported(tiny_data, tmp_path):
    result = run_recipe_in_process("train_mf", tiny_argv(tiny_data, tmp_path, "run.eval_every_optimizer_steps=7",
                                                         "run.keep_best=false"))
    assert result["optimizer_steps"] == 21 and result["early_stopping"]["exported"] == "last"
    assert not result["early_stopping"]["stopped_early"]
    assert result["early_stopping"]["metric"] == "accuracy"  # auto: the routing metric on decisive pairs
