"""Router-R1 PPO under FSDP2: real sharding over gloo with 2 CPU processes (launch/accelerate/fsdp_cpu_2proc.yaml).

What must hold when actor, critic and reference are sharded (each process keeps half of every weight):
- the run IS sharded (the manifest says FSDP; step checkpoints hold per-process DCP shards, not whole files);
- it computes the same PPO updates as data-parallel training: the same tiny config under DDP
  (cpu_2proc.yaml) and FSDP2 exports the same policy and value head, up to float summation order
  (reduce-scatter vs all-reduce), with full fine-tuning and with LoRA;
- a run stopped after a sharded step checkpoint and resumed with resume=auto exports bit-identical weights.
Rollouts with a different number of turns / generate calls per process are covered by
tests/unit/train/test_sharded_models.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.recipe_runner import CPU_2PROC, FSDP_CPU_2PROC, run_recipe
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

CONFIG = "configs/router_r1/tiny.yaml"
SCRIPT = "training/train_router_r1.py"
WEIGHT_FILES = ("policy/model.safetensors", "model.safetensors")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_qwen2"))


def run_dir(out_dir):
    return out_dir / "router_r1" / "router-r1-tiny"


def train(tiny_lm, out_dir, launch_config, *extra: str):
    return run_recipe(SCRIPT, CONFIG, [f"model.policy={tiny_lm}", f"run.output_dir={out_dir}", *extra], processes=2,
                      launch_config=launch_config)


def exported(out_dir) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(run_dir(out_dir) / "final" / name) for name in WEIGHT_FILES}


def training_facts(out_dir) -> dict:
    return json.loads((run_dir(out_dir) / "final" / "manifest.json").read_text())["training"]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    for name in WEIGHT_FILES:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], rtol=0, atol=atol, msg=f"{name}:{key}")


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp2_ppo_shards_and_computes_the_same_updates_as_ddp(tiny_lm, tmp_path, lora):
    extra = ["lora.enabled=true", "lora.r=4"] if lora else []
    train(tiny_lm, tmp_path / "ddp", CPU_2PROC, *extra)
    train(tiny_lm, tmp_path / "fsdp", FSDP_CPU_2PROC, *extra)

    ddp_facts, fsdp_facts = training_facts(tmp_path / "ddp"), training_facts(tmp_path / "fsdp")
    assert (ddp_facts["distributed_type"], ddp_facts["world_size"]) == ("MULTI_CPU", 2)
    assert (fsdp_facts["distributed_type"], fsdp_facts["world_size"]) == ("FSDP", 2)
    # Sharded step checkpoints: one DCP directory per prepared model (actor, critic) and per optimizer.
    step = sorted(p.name for p in (run_dir(tmp_path / "fsdp") / "step-000002").iterdir())
    for entry in ("pytorch_model_fsdp_0", "pytorch_model_fsdp_1", "optimizer_0", "optimizer_1"):
        assert entry in step
    assert not any(name.startswith("model") and name.endswith(".safetensors") for name in step)

    ddp, fsdp = exported(tmp_path / "ddp"), exported(tmp_path / "fsdp")
    # Same updates: the rollouts are identical (same weights, same per-process sampling RNG); only the order
    # of the gradient sums differs (reduce-scatter vs all-reduce), ~1e-7 after two PPO steps.
    assert_same_weights(ddp, fsdp, atol=1e-5)
    for history_ddp, history_fsdp in zip(ddp_facts["history"], fsdp_facts["history"], strict=True):
        assert history_fsdp["reward"] == history_ddp["reward"]
        assert history_fsdp["policy_tokens"] == history_ddp["policy_tokens"]
        assert history_fsdp["pg_loss"] == pytest.approx(history_ddp["pg_loss"], abs=1e-6)
    # ... and training did something: the exported policy is not the initial model, the value head not zero.
    initial = load_file(tiny_lm / "model.safetensors")
    moved = max((fsdp["policy/model.safetensors"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4
    assert fsdp["model.safetensors"]["value_head.weight"].abs().sum() > 0
    if lora:  # merged on export: a plain model with exactly the base model's tensors, no adapter keys
        assert set(fsdp["policy/model.safetensors"]) == set(initial)


@pytest.mark.slow
def test_fsdp2_ppo_resumed_from_a_sharded_checkpoint_exports_bit_identical_weights(tiny_lm, tmp_path):
    train(tiny_lm, tmp_path / "uninterrupted", FSDP_CPU_2PROC, "run.max_optimizer_steps=3")

    interrupted = tmp_path / "interrupted"
    train(tiny_lm, interrupted, FSDP_CPU_2PROC, "run.max_optimizer_steps=2")
    shutil.rmtree(run_dir(interrupted) / "final")  # as if stopped right after the step-2 checkpoint
    resumed = train(tiny_lm, interrupted, FSDP_CPU_2PROC, "run.max_optimizer_steps=3", "resume=auto")
    assert f"resumed from {run_dir(interrupted) / 'step-000002'} (PPO step 2)" in resumed.stdout

    def digests(out_dir):
        return {name: hashlib.sha256((run_dir(out_dir) / "final" / name).read_bytes()).hexdigest()
                for name in WEIGHT_FILES}

    assert digests(interrupted) == digests(tmp_path / "uninterrupted")
    assert training_facts(interrupted)["resumed_from"] == str(run_dir(interrupted) / "step-000002")
