"""training/train_router_r1.py: a tiny PPO run on CPU over real GSM8K tasks and RouteLLM's recorded pool.

The policy is a random-init 2-layer Qwen2 (tests/fixtures/tiny_qwen2.py): these tests check the PPO
plumbing (rollouts, masks, finite losses, which weights move, checkpoints, export), never learning.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from routerforge.errors import ConfigError
from routerforge.registry.load import verify_checkpoint
from routerforge.rl import ppo_math
from routerforge.rl.env import ENV, POLICY, EnvConfig, RoutingEnv
from routerforge.rl.pool_config import PoolConfig, resolve_model_cards
from routerforge.rl.pools import build_pool
from routerforge.rl.reward import CostNormalizer, RewardConfig
from routerforge.rl.rollout_batch import collate_rollouts, response_log_probs
from routerforge.rl.tasks import gsm8k_tasks_from_routellm
from routerforge.train.consistency import parameter_digest
from tests.fixtures.recipe_runner import REPO_ROOT, load_recipe_module, run_recipe_in_process
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

CONFIG = REPO_ROOT / "configs" / "router_r1" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_qwen2"))


def tiny_argv(model_dir, out_dir, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), f"model.policy={model_dir}", f"run.output_dir={out_dir}", *extra]


def test_tiny_ppo_run_trains_the_actor_keeps_the_reference_and_exports_the_policy(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    result = run_recipe_in_process("train_router_r1", tiny_argv(tiny_lm, tmp_path))

    history = result["history"]
    assert [h["ppo_step"] for h in history] == [1, 2]
    for h in history:
        assert h["updates"] == 2  # rollout batch 4 / mini-batch 2, one PPO epoch
        for key in ("pg_loss", "vf_loss", "entropy", "approx_kl", "kl_to_reference", "reward"):
            assert torch.isfinite(torch.tensor(h[key])), (key, h)
        assert h["policy_tokens"] > 0
        assert -1.0 <= h["reward"] <= 1.0
    assert history[0]["vf_loss"] > 0  # zero-init critic against non-zero returns

    initial = AutoModelForCausalLM.from_pretrained(tiny_lm)
    # The reference is the untouched base model at the end of the run; the actor moved away from it.
    assert result["reference_sha256"] == parameter_digest(initial)
    assert result["actor_sha256_per_process"][0] != result["reference_sha256"]

    export_dir = tmp_path / "router_r1" / "router-r1-tiny" / "final"
    assert result["export_dir"] == str(export_dir)
    assert sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file()) == [
        "config.json", "manifest.json", "model.safetensors", "policy/chat_template.jinja", "policy/config.json",
        "policy/generation_config.json", "policy/model.safetensors", "policy/tokenizer.json",
        "policy/tokenizer_config.json", "pool_config.json"]
    manifest, config = verify_checkpoint(export_dir)  # every file listed with its sha256, nothing unlisted
    assert config["router_type"] == "router_r1" and config["policy_dir"] == "policy"
    assert manifest["model_pool"] == ["Mixtral-8x7B", "GPT-4-Turbo"]
    assert json.loads((export_dir / "pool_config.json").read_text())["models"][0]["name"] == "Mixtral-8x7B"
    value_head = load_file(str(export_dir / "model.safetensors"))
    assert value_head["value_head.weight"].shape == (1, 32)
    assert value_head["value_head.weight"].abs().sum() > 0  # trained away from its zero init

    exported = AutoModelForCausalLM.from_pretrained(export_dir / "policy")
    assert parameter_digest(exported) != parameter_digest(initial)
    changed = [name for name, p in exported.state_dict().items() if not torch.equal(p, initial.state_dict()[name])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed

    run_dir = tmp_path / "router_r1" / "router-r1-tiny"
    assert sorted(p.name for p in run_dir.glob("step-*")) == ["step-000001", "step-000002"]
    assert (run_dir / "step-000002" / "custom_checkpoint_0.pkl").is_file()  # the cost normaliser's window


def test_env_inserted_tokens_carry_no_policy_loss_weight(tiny_lm):
    """Real env + real recorded pool + the recipe's collation: <information> tokens get mask 0 and zero gradient."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tasks, _ = gsm8k_tasks_from_routellm(max_rows=3)
    pool_cfg = PoolConfig()
    pool = build_pool(pool_cfg, resolve_model_cards(pool_cfg), max_rows=3)
    env = RoutingEnv(pool, RewardConfig(match_numbers=True), CostNormalizer(), EnvConfig(max_turns=1,
                                                                                      max_information_chars=120))

    def scripted(contexts: list[str]) -> list[str]:
        out = []
        for context in contexts:
            question = next(t.question for t in tasks if t.question in context)
            if context.rstrip().endswith("</information>"):  # the prompt itself mentions the tags
                out.append("<think> it says 5 </think>\n<answer> 5 </answer>")
            else:  # an exact-text sub-query: the pool serves the recorded answer without the encoder
                out.append(f"<think> ask </think>\n<search> Mixtral-8x7B: {question} </search>")
        return out

    rollouts = env.rollout_many(tasks[:2], scripted)
    assert all([s.source for s in r.segments] == [POLICY, ENV, POLICY] for r in rollouts)
    prompts = [tokenizer(r.prompt, add_special_tokens=False)["input_ids"] for r in rollouts]
    batch = collate_rollouts(rollouts, prompts, tokenizer, tokenizer.pad_token_id, max_response_tokens=512)

    for row, rollout in enumerate(rollouts):
        counts = {source: sum(len(tokenizer(s.text, add_special_tokens=False)["input_ids"])
                              for s in rollout.segments if s.source == source) for source in (POLICY, ENV)}
        assert batch.response_mask[row].sum().item() == counts[POLICY]
        assert batch.env_mask[row].sum().item() == counts[ENV] > 0
        assert (batch.response_mask[row] * batch.env_mask[row]).sum().item() == 0
        # The env tokens are exactly the <information> block, decoded back.
        env_ids = batch.responses[row][batch.env_mask[row].bool()].tolist()
        assert tokenizer.decode(env_ids).strip().startswith("<information>")
    assert batch.rewards.tolist() == [r.reward.reward for r in rollouts]

    log_probs, _ = response_log_probs(model, batch, temperature=1.0)
    log_probs.retain_grad()
    advantages = torch.randn_like(log_probs)
    loss = ppo_math.clipped_policy_loss(log_probs, log_probs.detach() - 0.01, advantages, batch.response_mask).loss
    loss.backward()
    grad = log_probs.grad
    assert grad[batch.env_mask.bool()].abs().max().item() == 0.0
    assert grad[batch.response_mask.bool()].abs().min().item() > 0.0


def test_config_typo_and_bad_geometry_name_the_key(tiny_lm, tmp_path):
    recipe = load_recipe_module("train_router_r1")
    with pytest.raises(ConfigError, match="rl.kl_coeff"):
        recipe.main(tiny_argv(tiny_lm, tmp_path, "rl.kl_coeff=0.01"))
    with pytest.raises(ConfigError, match="rl.rollout_batch_size"):
        recipe.main(tiny_argv(tiny_lm, tmp_path, "rl.mini_batch_size=3"))
    with pytest.raises(ConfigError, match="rl.temperature"):
        recipe.main(tiny_argv(tiny_lm, tmp_path, "rl.temperature=0"))


def test_resume_from_a_step_checkpoint_reproduces_the_uninterrupted_run(tiny_lm, tmp_path):
    """Models, optimizers, schedules, RNG (sampling) and the cost window come back: same weights, same metrics."""
    argv = ["export.registry=false"]
    full = run_recipe_in_process("train_router_r1", tiny_argv(tiny_lm, tmp_path / "full", *argv))
    run_recipe_in_process("train_router_r1", tiny_argv(tiny_lm, tmp_path / "cut", *argv, "run.max_optimizer_steps=1"))
    resumed = run_recipe_in_process("train_router_r1", tiny_argv(tiny_lm, tmp_path / "cut", *argv, "resume=auto"))
    assert resumed["history"][-1] == full["history"][-1]
    assert resumed["actor_sha256_per_process"] == full["actor_sha256_per_process"]


def test_lora_trains_adapters_and_exports_a_merged_plain_policy(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    result = run_recipe_in_process("train_router_r1", tiny_argv(tiny_lm, tmp_path, "export.registry=false",
                                                                "lora.enabled=true", "lora.r=2",
                                                                "run.max_optimizer_steps=1"))
    assert all(torch.isfinite(torch.tensor(result["history"][-1][k])) for k in ("pg_loss", "vf_loss", "entropy"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "router_r1" / "router-r1-tiny" / "final" / "policy")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert sorted(exported.state_dict()) == sorted(base.state_dict())  # merged: no lora_A/lora_B left
    changed = {k for k, v in exported.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert "model.layers.0.self_attn.q_proj.weight" in changed  # an adapted module, merged in
    assert "model.embed_tokens.weight" not in changed  # not adapted: frozen under LoRA
