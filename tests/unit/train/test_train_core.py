"""The small pieces of routerforge.train: dataloader order, pair tensors, LR schedule, tracking, export, config."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from datasets import Dataset
from torch.utils.data import TensorDataset

from routerforge.config import load_config
from routerforge.data.pair_tensors import pairs_to_tensors
from routerforge.data.records import PAIR_FEATURES, make_pair, prompt_id_for
from routerforge.errors import ConfigError, DataError
from routerforge.train.data_loading import (
    EpochShuffleSampler,
    LengthGroupedEpochSampler,
    batches_for_epoch,
    build_eval_loader,
    build_train_loader,
    normalize_position,
)
from routerforge.train.final_export import EXPORT_FILES, export_router
from routerforge.train.optimization import build_optimizer, lr_multiplier
from routerforge.train.run_config import OptimConfig, RunConfig, TrackingConfig
from routerforge.train.tracking import TrackingRun, flatten_config, resolve_wandb_mode
from tests.fixtures.recipe_runner import REPO_ROOT, load_recipe_module


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# --- data loading ---------------------------------------------------------------------------------------

def test_epoch_order_is_a_seeded_permutation_per_epoch():
    sampler = EpochShuffleSampler(20, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(20)) and first == list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(20)) and second != first
    assert list(EpochShuffleSampler(20, seed=8)) != first


def test_skipping_batches_resumes_the_epoch_where_it_stopped(accelerator):
    loader = accelerator.prepare(build_train_loader(TensorDataset(torch.arange(23)), micro_batch_size=4, seed=3))
    for epoch in (0, 1):
        full = [b[0].tolist() for b in batches_for_epoch(accelerator, loader, epoch, 0)]
        assert len(full) == 6 and sorted(sum(full, [])) == list(range(23))
        tail = [b[0].tolist() for b in batches_for_epoch(accelerator, loader, epoch, 4)]
        assert tail == full[4:]
    assert normalize_position(0, 6, 6) == (1, 0) and normalize_position(2, 3, 6) == (2, 3)


def padded_tokens(order: list[int], lengths: list[int], micro_batch_size: int) -> int:
    """Tokens a batch-pads-to-its-longest collate computes for the micro-batches of `order`."""
    return sum(max(lengths[i] for i in order[s:s + micro_batch_size]) * len(order[s:s + micro_batch_size])
               for s in range(0, len(order), micro_batch_size))


def test_length_grouped_order_is_a_seeded_permutation_that_pads_far_less():
    lengths = torch.randint(8, 400, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedEpochSampler(lengths, micro_batch_size=16, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(1000)) and first == list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(1000)) and second != first
    assert list(LengthGroupedEpochSampler(lengths, micro_batch_size=16, seed=8)) != first
    shuffled = list(EpochShuffleSampler(1000, seed=7))
    assert padded_tokens(first, lengths, 16) < 0.7 * padded_tokens(shuffled, lengths, 16)
    # Not a global sort: mega-batches keep the epoch random (the first 50 micro-batches hold all lengths).
    assert max(lengths[i] for i in first[:800]) > 390 and min(lengths[i] for i in first[:800]) < 12


def test_length_grouped_loader_resumes_the_epoch_where_it_stopped(accelerator):
    lengths = [(7 * i) % 23 + 1 for i in range(45)]
    loader = accelerator.prepare(build_train_loader(TensorDataset(torch.arange(45)), micro_batch_size=4, seed=3,
                                                    lengths=lengths))
    full = [b[0].tolist() for b in batches_for_epoch(accelerator, loader, 1, 0)]
    assert sorted(sum(full, [])) == list(range(45))
    assert [b[0].tolist() for b in batches_for_epoch(accelerator, loader, 1, 5)] == full[5:]


def test_eval_loader_with_lengths_visits_every_example_once_longest_first():
    lengths = [5, 30, 2, 30, 17, 9, 1]
    batches = [b[0].tolist() for b in build_eval_loader(TensorDataset(torch.arange(7)), 3, lengths=lengths)]
    assert batches == [[1, 3, 4], [5, 0, 2], [6]]
    assert [b[0].tolist() for b in build_eval_loader(TensorDataset(torch.arange(7)), 3)] == [[0, 1, 2], [3, 4, 5],
                                                                                            [6]]


def test_iterating_a_loader_leaves_the_global_rng_alone(accelerator):
    loader = accelerator.prepare(build_train_loader(TensorDataset(torch.arange(10)), micro_batch_size=4, seed=0))
    before = torch.get_rng_state()
    for _ in batches_for_epoch(accelerator, loader, 0, 1):
        pass
    assert torch.equal(torch.get_rng_state(), before)


# --- pairs -> tensors -----------------------------------------------------------------------------------

def pair_table(rows: list[tuple[str, str, str, float]]) -> Dataset:
    pairs = [make_pair(prompt=f"prompt {i % 2}", model_a=a, model_b=b, winner=w, source="s", kind="arena",
                       source_file="f.jsonl", source_line=i + 1, source_id=str(i), weight=weight)
             for i, (a, b, w, weight) in enumerate(rows)]
    return Dataset.from_dict({k: [p[k] for p in pairs] for k in PAIR_FEATURES}, features=PAIR_FEATURES)


def test_pairs_to_tensors_targets_ties_and_weights():
    table = pair_table([("x", "y", "model_a", 1.0), ("x", "y", "model_b", 2.0), ("y", "x", "tie", 1.0),
                        ("x", "y", "tie_bothbad", 1.0), ("x", "x", "model_a", 1.0)])
    model_index = {"x": 0, "y": 1}
    prompt_rows = {prompt_id_for(f"prompt {i}"): i for i in (0, 1)}
    dropped = pairs_to_tensors(table, model_index, prompt_rows, ties="drop")
    assert dropped.target.tolist() == [1.0, 0.0] and dropped.weight.tolist() == [1.0, 2.0]
    assert dropped.dropped == {"tie_dropped": 1, "tie_bothbad_dropped": 1, "same_model": 1}
    half = pairs_to_tensors(table, model_index, prompt_rows, ties="half", use_source_weights=False)
    assert half.target.tolist() == [1.0, 0.0, 0.5, 0.5] and half.weight.tolist() == [1.0] * 4
    assert half.model_a.tolist() == [0, 0, 1, 0] and half.prompt_row.tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match="model 'z' is not in the dataset's model pool"):
        pairs_to_tensors(pair_table([("x", "z", "model_a", 1.0)]), model_index, prompt_rows, ties="drop")


# --- optimizer and schedule -----------------------------------------------------------------------------

def test_lr_schedules_in_optimizer_steps():
    warm_linear = OptimConfig(lr_schedule="linear", warmup_optimizer_steps=2)
    assert [lr_multiplier(s, warm_linear, 10) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    cosine = OptimConfig(lr_schedule="cosine")
    assert lr_multiplier(5, cosine, 10) == pytest.approx(0.5) and lr_multiplier(10, cosine, 10) == pytest.approx(0.0)
    assert lr_multiplier(7, OptimConfig(), 10) == 1.0
    assert math.isclose(lr_multiplier(0, cosine, 10), 1.0)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert type(build_optimizer(params, OptimConfig(name="adamw"))) is torch.optim.AdamW
    adam = build_optimizer(params, OptimConfig(weight_decay=1e-5), weight_decay=0.0)
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.0


# --- tracking -------------------------------------------------------------------------------------------

def test_wandb_mode_is_offline_without_a_key_and_the_env_wins(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_wandb_mode(TrackingConfig()) == "offline"
    assert resolve_wandb_mode(TrackingConfig(wandb_mode="disabled")) == "disabled"
    # A key but no reachable host (a closed local port): still offline, and quickly.
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert resolve_wandb_mode(TrackingConfig()) == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_wandb_mode(TrackingConfig(wandb_mode="offline")) == "online"


def test_flat_config_for_tensorboard_and_run_description():
    assert flatten_config({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "resume": "never"}) == {
        "optim.lr": 0.1, "optim.betas": "[0.9, 0.99]", "resume": "never"}
    offline = TrackingRun(tracker="wandb", run_id="abc", mode="offline", local_dir="/x/offline-run-1-abc")
    assert offline.describe() == "W&B run abc (offline): /x/offline-run-1-abc (upload: wandb sync /x/offline-run-1-abc)"


# --- export ---------------------------------------------------------------------------------------------

def test_export_is_atomic_and_holds_exactly_its_files(tmp_path):
    target = tmp_path / "final"
    export_router(target, {"w": torch.ones(2)}, {"router_type": "t"}, {"recipe": "t"})
    assert sorted(p.name for p in target.iterdir()) == sorted(EXPORT_FILES)
    manifest = json.loads((target / "manifest.json").read_text())
    assert (manifest["files"]["model.safetensors"]
            == hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest())
    good = (target / "model.safetensors").read_bytes()
    # An export that fails half-way leaves the previous one untouched and no temp dir behind.
    with pytest.raises(AttributeError):
        export_router(target, {"w": "not a tensor"}, {"router_type": "t"}, {"recipe": "t"})
    assert (target / "model.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


# --- config ---------------------------------------------------------------------------------------------

def test_shared_config_blocks_validate_with_the_key_in_the_message():
    with pytest.raises(ConfigError, match="run.name 'a/b' must be letters"):
        load_config(RunConfig, None, ["name=a/b"])
    with pytest.raises(ConfigError, match="run.mixed_precision must be one of no, fp16, bf16"):
        load_config(RunConfig, None, ["mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="optim.betas must be two numbers"):
        load_config(OptimConfig, None, ["betas=[0.9]"])
    with pytest.raises(ConfigError, match="tracking.report_to must be one of wandb, tensorboard, none"):
        load_config(TrackingConfig, None, ["report_to=mlflow"])


def test_mf_config_defaults_are_the_papers_and_typos_name_the_key(tmp_path):
    recipe = load_recipe_module("train_mf")
    cfg = load_config(recipe.MFConfig, None, [])
    assert ((cfg.model.model_embedding_dim, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay,
             cfg.run.micro_batch_size, cfg.model.prompt_noise_std, cfg.run.epochs)
            == (128, "adam", 3e-4, 1e-5, 64, 0.1, 100))
    with pytest.raises(ConfigError, match=r"unknown config key 'model.prompt_noise'.*Did you mean 'prompt_noise_std'"):
        load_config(recipe.MFConfig, None, ["model.prompt_noise=0.2"])
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text("loss:\n  tie: half\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'loss.tie'.*Did you mean 'ties'"):
        load_config(recipe.MFConfig, yaml_path)
    with pytest.raises(ConfigError, match="loss.ties must be one of drop, half"):
        load_config(recipe.MFConfig, None, ["loss.ties=win"])
    with pytest.raises(ConfigError, match="init.train_only_new_models needs init.from_export"):
        load_config(recipe.MFConfig, None, ["init.train_only_new_models=true"])
    for name in ("default", "tiny"):  # the shipped configs load
        load_config(recipe.MFConfig, REPO_ROOT / "configs" / "mf" / f"{name}.yaml")
