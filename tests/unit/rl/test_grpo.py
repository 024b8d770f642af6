"""routerforge/rl/grpo.py: the TRL rollout fields of real episodes (env mask exact on <information>), the rollout
function on a real tiny policy inside a real GRPOTrainer, the reward function, config and resume validation.

Real environment, real recorded pool (RouteLLM GSM8K), real tiny random-init Qwen2 (tests/fixtures/tiny_qwen2.py).
"""

from __future__ import annotations

import pytest

from routerforge.errors import CheckpointError, ConfigError
from routerforge.rl.env import ENV, POLICY, EnvConfig, RoutingEnv
from routerforge.rl.generation import templated_prompt
from routerforge.rl.grpo import (
    GRPOBlockConfig,
    build_grpo_args,
    build_grpo_trainer,
    episode_reward,
    gradient_accumulation_for,
    make_rollout_func,
    resolve_grpo_resume,
    trl_rollout_fields,
)
from routerforge.rl.pool_config import PoolConfig, resolve_model_cards
from routerforge.rl.pools import build_pool
from routerforge.rl.protocol import validate_format
from routerforge.rl.reward import CostNormalizer, RewardConfig
from routerforge.rl.tasks import gsm8k_tasks_from_routellm
from routerforge.train.run_config import CheckpointConfig, OptimConfig, RunConfig, TrackingConfig
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

TINY_GRPO = dict(num_generations=2, rollout_batch_size=4, mini_batch_size=4, max_new_tokens=8,
                 max_prompt_tokens=1024, max_response_tokens=64, gradient_checkpointing=False)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm)


def routing_env(max_rows: int = 3):
    tasks, _ = gsm8k_tasks_from_routellm(max_rows=max_rows)
    pool_cfg = PoolConfig()
    pool = build_pool(pool_cfg, resolve_model_cards(pool_cfg), max_rows=max_rows)
    env = RoutingEnv(pool, RewardConfig(match_numbers=True), CostNormalizer(),
                     EnvConfig(max_turns=1, max_information_chars=120))
    return tasks, env


def test_env_mask_is_zero_exactly_on_the_information_tokens(tokenizer):
    tasks, env = routing_env()

    def scripted(contexts: list[str]) -> list[str]:
        out = []
        for context in contexts:
            question = next(t.question for t in tasks if t.question in context)
            if context.rstrip().endswith("</information>"):
                out.append("<think> it says 5 </think>\n<answer> 5 </answer>")
            else:
                out.append(f"<think> ask </think>\n<search> Mixtral-8x7B: {question} </search>")
        return out

    rollouts = env.rollout_many(tasks[:2], scripted)
    assert all([s.source for s in r.segments] == [POLICY, ENV, POLICY] for r in rollouts)
    fields = trl_rollout_fields(rollouts, [r.prompt for r in rollouts], tokenizer, max_response_tokens=512)

    assert fields["logprobs"] is None
    assert fields["prompt_ids"] == [tokenizer(r.prompt, add_special_tokens=False)["input_ids"] for r in rollouts]
    for ids, mask, rollout in zip(fields["completion_ids"], fields["env_mask"], rollouts, strict=True):
        expected_ids, expected_mask = [], []
        for segment in rollout.segments:
            segment_ids = tokenizer(segment.text, add_special_tokens=False)["input_ids"]
            expected_ids += segment_ids
            expected_mask += [1 if segment.source == POLICY else 0] * len(segment_ids)
        assert ids == expected_ids and mask == expected_mask
        env_text = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m == 0]).strip()
        assert env_text.startswith("<information>") and env_text.endswith("</information>")
        policy_text = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m == 1])
        assert "<information>" not in policy_text and policy_text.startswith("<think> ask </think>")
        assert 0 < mask.count(0) < len(mask)
    assert fields["episode_reward"] == [r.reward.reward for r in rollouts]
    assert fields["format_ok"] == [1.0, 1.0] and fields["calls"] == [1.0, 1.0]
    assert all(cost > 0 for cost in fields["cost_usd"])

    cut = trl_rollout_fields(rollouts, [r.prompt for r in rollouts], tokenizer, max_response_tokens=5)
    assert [len(ids) for ids in cut["completion_ids"]] == [5, 5] and cut["env_mask"] == [[1] * 5, [1] * 5]


def test_an_empty_episode_becomes_one_eos_placeholder_without_loss(tokenizer):
    tasks, env = routing_env()
    rollouts = env.rollout_many(tasks[:1], lambda contexts: [""] * len(contexts))
    fields = trl_rollout_fields(rollouts, [rollouts[0].prompt], tokenizer, max_response_tokens=64)
    assert fields["completion_ids"] == [[tokenizer.eos_token_id]] and fields["env_mask"] == [[0]]
    assert fields["episode_reward"] == [-1.0]  # an empty response breaks the format


def test_rollout_func_runs_one_episode_per_entry_on_a_real_policy(tiny_lm, tokenizer, tmp_path):
    tasks, env = routing_env()
    grpo = GRPOBlockConfig(**TINY_GRPO)
    run = RunConfig(name="unit", output_dir=str(tmp_path), micro_batch_size=2, max_optimizer_steps=1,
                    progress_bar=False)
    args = build_grpo_args(grpo, run, OptimConfig(name="adamw"), CheckpointConfig(every_optimizer_steps=0),
                           TrackingConfig(report_to="none"), [], tmp_path / "run", world_size=1)
    prompts = [env.prompt_for(t) for t in tasks[:2]]
    rollout_func = make_rollout_func(env, tokenizer, dict(zip(prompts, tasks[:2], strict=True)),
                                     grpo.generation_settings(2), True, grpo.max_response_tokens)
    trainer = build_grpo_trainer(str(tiny_lm), tokenizer, args, prompts, rollout_func, env.normalizer)
    assert trainer.rollout_func is rollout_func and trainer.num_generations == 2

    trainer.model.train()
    batch = [prompts[0], prompts[0], prompts[1], prompts[1]]  # TRL's RepeatSampler: each prompt num_generations x
    out = trainer.rollout_func(batch, trainer)
    assert trainer.model.training  # the train/eval mode is restored after sampling

    for key in ("prompt_ids", "completion_ids", "env_mask", "episode_reward", "format_ok", "calls"):
        assert len(out[key]) == 4, key
    assert out["prompt_ids"] == [tokenizer(templated_prompt(tokenizer, p, True), add_special_tokens=False)["input_ids"]
                                 for p in batch]
    for ids, mask, reward, format_ok in zip(out["completion_ids"], out["env_mask"], out["episode_reward"],
                                            out["format_ok"], strict=True):
        assert 1 <= len(ids) <= grpo.max_response_tokens and len(mask) == len(ids) and set(mask) <= {0, 1}
        if 0 in mask:  # whatever the env inserted is an information block
            assert tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m == 0]).strip().startswith(
                "<information>")
        # The env's reward: a response that breaks the protocol scores the format penalty.
        assert format_ok == float(validate_format(tokenizer.decode(ids), env.model_names).ok)
        if not format_ok:
            assert reward == -1.0
    assert len(env.normalizer) == 4  # every episode was scored by the env


def test_reward_function_returns_the_env_reward_and_logs_the_episode_fields():
    logged = {}
    rewards = episode_reward(["a", "b"], episode_reward=[-1.0, 0.75], format_ok=[0.0, 1.0], calls=[0.0, 2.0],
                             log_metric=lambda name, value: logged.__setitem__(name, value))
    assert rewards == [-1.0, 0.75]
    assert logged == {"episode/format_ok": 0.5, "episode/calls": 1.0}
    with pytest.raises(RuntimeError, match="2 episode rewards for 3 completions"):
        episode_reward(["a", "b", "c"], episode_reward=[0.0, 1.0])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"num_generations": 1}, "grpo.num_generations must be >= 2"),
    ({"num_generations": 4, "rollout_batch_size": 6, "mini_batch_size": 6}, "multiple of grpo.num_generations"),
    ({"rollout_batch_size": 8, "mini_batch_size": 3, "num_generations": 2}, "multiple of grpo.mini_batch_size"),
    ({"loss_type": "ppo"}, "grpo.loss_type must be one of"),
    ({"scale_rewards": "std"}, "grpo.scale_rewards must be one of"),
    ({"beta": -0.1}, "grpo.beta must be >= 0"),
    ({"temperature": 0.0}, "grpo.temperature must be > 0"),
    ({"max_new_tokens": 100, "max_response_tokens": 50}, "grpo.max_new_tokens"),
])
def test_config_validation_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        GRPOBlockConfig(**{**TINY_GRPO, **overrides})


def test_batch_geometry_and_optimizer_errors_name_the_keys(tmp_path):
    grpo = GRPOBlockConfig(**TINY_GRPO)
    assert gradient_accumulation_for(grpo, RunConfig(micro_batch_size=2), world_size=1) == 2
    assert gradient_accumulation_for(grpo, RunConfig(micro_batch_size=2), world_size=2) == 1
    with pytest.raises(ConfigError, match="grpo.mini_batch_size=4 is not a multiple of run.micro_batch_size"):
        gradient_accumulation_for(grpo, RunConfig(micro_batch_size=3), world_size=1)
    with pytest.raises(ConfigError, match="run.gradient_accumulation_steps"):
        gradient_accumulation_for(grpo, RunConfig(micro_batch_size=2, gradient_accumulation_steps=2), world_size=1)
    with pytest.raises(ConfigError, match="optim.name=adam"):
        build_grpo_args(grpo, RunConfig(micro_batch_size=2), OptimConfig(name="adam", weight_decay=0.1),
                        CheckpointConfig(), TrackingConfig(report_to="none"), [], tmp_path, world_size=1)


def test_resume_never_auto_and_path_over_hf_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    assert resolve_grpo_resume("never", run_dir) is None
    assert resolve_grpo_resume("auto", run_dir) is None
    for step in (1, 2):
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="checkpoint-2"):
        resolve_grpo_resume("never", run_dir)
    assert resolve_grpo_resume("auto", run_dir) == run_dir / "checkpoint-2"
    assert resolve_grpo_resume(str(run_dir / "checkpoint-1"), run_dir) == run_dir / "checkpoint-1"
    with pytest.raises(CheckpointError, match="not an HF Trainer checkpoint"):
        resolve_grpo_resume(str(tmp_path), run_dir)
