"""Router-R1 PPO under FSDP2: real sharding over gloo with 2 CPU processes (launch/accelerate/fsdp_cpu_2proc.yaml).

What must hold when actor, critic and reference are sharded (each process keeps half of every weight):
- the run IS sharded (the manifest says FSDP; step checkpoints hold per-process DCP shards, not whole files);
- it computes the same PPO updates as data-parallel training: the same tiny config under DDP
  (cpu_2proc.yaml) and FSDP2 exports the same policy and value head, up to float summation order
  (reduce-scatter vs all-reduce), with full fine-tuning and with LoRA;
- a run stopped after a sharded step checkpoint and resumed with resume=auto exports bit-identical weights.
Rollouts with a different number of turns / generate calls per process are covered by
tests/unit/train/test_sharded_models.py.

The uninterrupted full fine-tuning runs (4 PPO steps, a checkpoint every 2, under DDP and FSDP2) are shared
with tests/reliability/test_router_r1_resume.py (tests/fixtures/router_r1_runs.py: trained once per session).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures import router_r1_runs
from tests.fixtures.router_r1_runs import run_dir, train

WEIGHT_FILES = ("policy/model.safetensors", "model.safetensors")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return router_r1_runs.tiny_policy(tmp_path_factory.getbasetemp())


def trained_pair(tiny_lm, tmp_path_factory, tmp_path, lora: bool) -> tuple:
    """(DDP output dir, FSDP2 output dir) of the same run: the shared session runs (4 PPO steps) for full
    fine-tuning, two new runs of 2 PPO steps for LoRA."""
    if not lora:
        base = tmp_path_factory.getbasetemp()
        return router_r1_runs.uninterrupted(base, "ddp"), router_r1_runs.uninterrupted(base, "fsdp")
    for kind in ("ddp", "fsdp"):
        train(tiny_lm, tmp_path / kind, kind, "run.max_optimizer_steps=2", "lora.enabled=true", "lora.r=4")
    return tmp_path / "ddp", tmp_path / "fsdp"


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
def test_fsdp2_ppo_shards_and_computes_the_same_updates_as_ddp(tiny_lm, tmp_path_factory, tmp_path, lora):
    ddp_dir, fsdp_dir = trained_pair(tiny_lm, tmp_path_factory, tmp_path, lora)

    ddp_facts, fsdp_facts = training_facts(ddp_dir), training_facts(fsdp_dir)
    assert (ddp_facts["distributed_type"], ddp_facts["world_size"]) == ("MULTI_CPU", 2)
    assert (fsdp_facts["distributed_type"], fsdp_facts["world_size"]) == ("FSDP", 2)
    assert len(fsdp_facts["history"]) == len(ddp_facts["history"]) == (2 if lora else router_r1_runs.PPO_STEPS)
    # Sharded step checkpoints: one DCP directory per prepared model (actor, critic) and per optimizer.
    step = sorted(p.name for p in (run_dir(fsdp_dir) / "step-000002").iterdir())
    for entry in ("pytorch_model_fsdp_0", "pytorch_model_fsdp_1", "optimizer_0", "optimizer_1"):
        assert entry in step
    assert not any(name.startswith("model") and name.endswith(".safetensors") for name in step)

    ddp, fsdp = exported(ddp_dir), exported(fsdp_dir)
    # Same updates: the rollouts are identical (same weights, same per-process sampling RNG); only the order
    # of the gradient sums differs (reduce-scatter vs all-reduce), ~1e-7 after two to four PPO steps.
    assert_same_weights(ddp, fsdp, atol=1e-5)
    for history_ddp, history_fsdp in zip(ddp_facts["history"], fsdp_facts["history"], strict=True):
        assert history_fsdp["reward"] == history_ddp["reward"]
        assert history_fsdp["policy_tokens"] == history_ddp["policy_tokens"]
        # The summation-order difference compounds: pg_loss agrees to ~1e-8 over the first two PPO steps and
        # drifts to ~2.5e-6 by step 4 (measured), with identical rollouts throughout.
        tolerance = 1e-6 if history_ddp["ppo_step"] <= 2 else 1e-5
        assert history_fsdp["pg_loss"] == pytest.approx(history_ddp["pg_loss"], abs=tolerance), history_ddp["ppo_step"]
    # ... and training did something: the exported policy is not the initial model, the value head not zero.
    initial = load_file(tiny_lm / "model.safetensors")
    moved = max((fsdp["policy/model.safetensors"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4
    assert fsdp["model.safetensors"]["value_head.weight"].abs().sum() > 0
    if lora:  # merged on export: a plain model with exactly the base model's tensors, no adapter keys
        assert set(fsdp["policy/model.safetensors"]) == set(initial)


@pytest.mark.slow
def test_fsdp2_ppo_resumed_from_a_sharded_checkpoint_exports_bit_identical_weights(tiny_lm, tmp_path_factory,
                                                                                    tmp_path):
    uninterrupted = router_r1_runs.uninterrupted(tmp_path_factory.getbasetemp(), "fsdp")  # 4 PPO steps

    interrupted = tmp_path / "interrupted"
    train(tiny_lm, interrupted, "fsdp", "run.max_optimizer_steps=2")
    shutil.rmtree(run_dir(interrupted) / "final")  # as if stopped right after the step-2 checkpoint
    resumed = train(tiny_lm, interrupted, "fsdp", "resume=auto")
    assert f"resumed from {run_dir(interrupted) / 'step-000002'} (PPO step 2)" in resumed.stdout

    def digests(out_dir):
        return {name: hashlib.sha256((run_dir(out_dir) / "final" / name).read_bytes()).hexdigest()
                for name in WEIGHT_FILES}

    assert digests(interrupted) == digests(uninterrupted)
    facts = training_facts(interrupted)
    assert facts["resumed_from"] == str(run_dir(interrupted) / "step-000002")
    assert [h["ppo_step"] for h in facts["history"]] == [3, 4]  # it resumed: PPO steps 3.. only
