"""training/train_router_r1_grpo.py (TRL's GRPOTrainer; a deviation from the paper's PPO).

A tiny GRPO run on CPU over real GSM8K tasks and RouteLLM's recorded pool. The policy is a random-init
2-layer Qwen2 (tests/fixtures/tiny_qwen2.py): it breaks the protocol in every episode, so every reward is -1
and every group advantage 0; the weights move through the entropy bonus and the KL term only. These tests
check the plumbing (TRL wiring, finite loss, checkpoints, export, resume), never learning.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from routerforge.errors import ConfigError
from routerforge.registry.load import verify_checkpoint
from routerforge.train.consistency import parameter_digest
from tests.fixtures.recipe_runner import REPO_ROOT, load_recipe_module, run_recipe_in_process
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

CONFIG = REPO_ROOT / "configs" / "router_r1_grpo" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_qwen2"))


def tiny_argv(model_dir, out_dir, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), f"model.policy={model_dir}", f"run.output_dir={out_dir}", *extra]


def test_tiny_grpo_run_trains_the_policy_and_exports_it_like_ppo(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    result = run_recipe_in_process("train_router_r1_grpo", tiny_argv(tiny_lm, tmp_path))

    history = result["history"]
    assert [h["step"] for h in history] == [1, 2] and result["optimizer_steps"] == 2
    for h in history:
        for key in ("loss", "grad_norm", "entropy", "kl", "reward"):
            assert math.isfinite(h[key]), (key, h)
        assert h["grad_norm"] > 0  # the entropy bonus reaches the policy tokens
        assert h["episode/format_ok"] == 0.0 and h["reward"] == -1.0  # random-init: every episode breaks the format
        assert h["completions/mean_length"] > 0  # policy tokens (env_mask 1) counted

    initial = AutoModelForCausalLM.from_pretrained(tiny_lm)
    export_dir = tmp_path / "router_r1" / "router-r1-grpo-tiny" / "final"
    assert result["export_dir"] == str(export_dir)
    # PPO's export layout; model.safetensors holds no tensor (no value head without a critic).
    assert sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file()) == [
        "config.json", "manifest.json", "model.safetensors", "policy/chat_template.jinja", "policy/config.json",
        "policy/generation_config.json", "policy/model.safetensors", "policy/tokenizer.json",
        "policy/tokenizer_config.json", "pool_config.json"]
    assert load_file(str(export_dir / "model.safetensors")) == {}
    manifest, config = verify_checkpoint(export_dir)  # every file listed with its sha256, nothing unlisted
    assert config["router_type"] == "router_r1" and config["algorithm"] == "grpo" and config["policy_dir"] == "policy"
    assert "value_head_hidden_size" not in config
    assert manifest["model_pool"] == ["Mixtral-8x7B", "GPT-4-Turbo"]
    assert manifest["config"]["algorithm"] == "grpo"
    assert json.loads((export_dir / "pool_config.json").read_text())["models"][0]["name"] == "Mixtral-8x7B"
    assert (tmp_path / "router_r1" / "1.0.0" / "manifest.json").is_file()  # registered like every recipe

    exported = AutoModelForCausalLM.from_pretrained(export_dir / "policy")
    assert parameter_digest(exported) == result["actor_sha256_per_process"][0] != parameter_digest(initial)
    changed = [name for name, p in exported.state_dict().items() if not torch.equal(p, initial.state_dict()[name])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed

    run_dir = tmp_path / "router_r1" / "router-r1-grpo-tiny"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (run_dir / "checkpoint-2" / "cost_window_rank0.json").is_file()
    window = json.loads((run_dir / "checkpoint-2" / "cost_window_rank0.json").read_text())
    assert len(window["values"]) == 8  # 2 rounds x 4 episodes, every one scored by the env


def test_resume_auto_continues_and_matches_the_uninterrupted_run(tiny_lm, tmp_path):
    """HF Trainer's checkpoint-N (model, optimizer, schedule, RNG, sampler) + our cost window: same weights."""
    argv = ["export.registry=false"]
    full = run_recipe_in_process("train_router_r1_grpo", tiny_argv(tiny_lm, tmp_path / "full", *argv))
    run_recipe_in_process("train_router_r1_grpo",
                          tiny_argv(tiny_lm, tmp_path / "cut", *argv, "run.max_optimizer_steps=1"))
    resumed = run_recipe_in_process("train_router_r1_grpo", tiny_argv(tiny_lm, tmp_path / "cut", *argv, "resume=auto"))
    assert resumed["resumed_from"].endswith("checkpoint-1")
    assert [h["step"] for h in resumed["history"]] == [1, 2]  # the log history comes back with the checkpoint
    assert resumed["history"][-1]["loss"] == full["history"][-1]["loss"]
    assert resumed["actor_sha256_per_process"] == full["actor_sha256_per_process"]


def test_algorithm_and_grpo_keys_are_validated(tiny_lm, tmp_path):
    recipe = load_recipe_module("train_router_r1_grpo")
    with pytest.raises(ConfigError, match="algorithm"):
        recipe.main(tiny_argv(tiny_lm, tmp_path, "algorithm=trpo"))
    with pytest.raises(ConfigError, match="grpo.num_generations"):
        recipe.main(tiny_argv(tiny_lm, tmp_path, "grpo.num_generations=1"))
    with pytest.raises(ConfigError, match="grpo.mini_batch_size"):
        recipe.main(tiny_argv(tiny_lm, tmp_path, "grpo.mini_batch_size=2", "run.micro_batch_size=4"))


@pytest.mark.slow
def test_two_processes_form_one_data_parallel_world_and_fsdp_is_refused(tiny_lm, tmp_path):
    """Under `accelerate launch` on CPU, HF's TrainingArguments form the gloo world only with use_cpu; without
    it each process trained alone (world size 1) and both wrote the same export. Now: one world of 2, one
    policy, every process's cost window checkpointed. FSDP (not supported for GRPO) is a one-line error."""
    from tests.fixtures.recipe_runner import FSDP_CPU_2PROC, run_recipe

    overrides = [f"model.policy={tiny_lm}", f"run.output_dir={tmp_path / 'ddp'}"]
    run_recipe("training/train_router_r1_grpo.py", "configs/router_r1_grpo/tiny.yaml", overrides, processes=2)
    export_dir = tmp_path / "ddp" / "router_r1" / "router-r1-grpo-tiny" / "final"
    training = json.loads((export_dir / "manifest.json").read_text())["training"]
    assert (training["world_size"], training["distributed_type"]) == (2, "MULTI_CPU")
    digests = training["actor_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]  # one data-parallel policy
    from transformers import AutoModelForCausalLM

    assert parameter_digest(AutoModelForCausalLM.from_pretrained(export_dir / "policy")) == digests[0]
    run_dir = export_dir.parent
    assert sorted(p.name for p in (run_dir / "checkpoint-2").glob("cost_window_rank*.json")) == [
        "cost_window_rank0.json", "cost_window_rank1.json"]

    refused = run_recipe("training/train_router_r1_grpo.py", "configs/router_r1_grpo/tiny.yaml",
                         [f"model.policy={tiny_lm}", f"run.output_dir={tmp_path / 'fsdp'}"], processes=2,
                         launch_config=FSDP_CPU_2PROC, check=False)
    assert refused.returncode != 0
    assert "error: router_r1 GRPO does not support FSDP" in refused.stderr
    assert not (tmp_path / "fsdp" / "router_r1" / "router-r1-grpo-tiny" / "final").exists()
