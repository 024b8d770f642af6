"""Train a Router-R1 policy with PPO: an LLM that thinks, calls pool models, and answers.

    accelerate launch training/train_router_r1.py --config configs/router_r1/qwen2_5_3b.yaml [key=value ...]
    python training/train_router_r1.py --config configs/router_r1/tiny.yaml model.policy=<tiny model dir>
    ... resume=auto                                   # continue the run from its newest complete checkpoint

GRPO (TRL's GRPOTrainer, a deviation from the paper) is its own recipe, training/train_router_r1_grpo.py: same
tasks, pool, environment, reward, masks and export (minus the value head), shared through
routerforge/rl/policy_run.py.

Router-R1 (Zhang, Feng, You 2025, arXiv 2506.09033; code ulab-uiuc/Router-R1, on veRL) trains the router
as a policy LM: it writes <think>, calls a candidate model with <search> Model: query </search>, reads the
<information> the environment inserts, and ends with <answer>. Reward: format, outcome (EM), cost
(routerforge/rl/reward.py). Optimiser: PPO with a critic and a KL penalty to a frozen reference in the reward.

Why our own PPO: TRL dropped its PPO trainer (TRL 1.x has no PPOTrainer), so RouterForge owns this loop;
the math is routerforge/rl/ppo_math.py (veRL's, cited there), the tensors routerforge/rl/rollout_batch.py.

Models: the ACTOR (any causal LM: Hub id or local dir), the CRITIC (a separate copy of the LM trunk with
a 1-unit value head, routerforge/rl/critic.py) and the frozen REFERENCE (another copy, never updated).
`lora.enabled` puts LoRA adapters on the actor and the critic trunk (the value head trains fully).

One PPO step (Router-R1's "training step"; the paper runs 225): sample rl.rollout_batch_size tasks ->
multi-turn rollouts with `generate` stopping at </search> or </answer> (routerforge/rl/env.py inserts
the candidates' answers) -> old, reference log-probs and values in one pass each -> token rewards = the
episode reward on its last policy token minus kl_coef * KL(actor || reference) on every policy token ->
GAE -> rl.ppo_epochs passes over mini-batches of rl.mini_batch_size episodes, each one optimizer step of
the actor (clipped policy loss - entropy_coef * entropy) and one of the critic (clipped value loss).
Every loss term is masked to the tokens the policy sampled: the inserted <information> tokens and the
padding have weight 0 ("state masking", Router-R1's actor.state_masking=true).

Reads top to bottom (main() at the end calls the sections in order; routerforge/train/lifecycle.py holds the
run's start, step checkpoints, NaN/Inf stop and export, shared by every recipe):
  1. config   2. accelerate, seeds, run dir, tracking   3. tasks, pool, environment   4. models
  5. optimizers + schedules   6. resume   7. PPO loop (rollout, advantages, updates, log, checkpoint)
  8. export (main process): the policy (save_pretrained), the value head, the pool config, the manifest

Exit status: 0 trained and exported; 2 a user error (one line); 3 stopped after
run.max_consecutive_nonfinite_steps NaN/Inf updates, with a checkpoint to resume from.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, gather_object
from tqdm.auto import tqdm

from routerforge.config import doc
from routerforge.errors import ConfigError
from routerforge.registry.register import register_run_export
from routerforge.rl import ppo_math
from routerforge.rl.critic import build_value_model
from routerforge.rl.env import EnvConfig
from routerforge.rl.generation import GenerationSettings, make_lm_policy, templated_prompt
from routerforge.rl.policy_run import (
    DTYPES,
    RECIPE,
    RouterR1LoraConfig,
    RouterR1ModelConfig,
    RouterR1TaskConfig,
    RoutingSetup,
    build_routing_setup,
    paper_optim,
    paper_run,
    policy_router_config,
    task_data_facts,
    write_policy_files,
)
from routerforge.rl.pool_config import PoolConfig
from routerforge.rl.reward import RewardConfig
from routerforge.rl.rollout_batch import RolloutBatch, collate_rollouts, response_log_probs, response_values
from routerforge.train import nan_guard
from routerforge.train.accelerator_setup import (
    peak_accelerator_memory_bytes,
    seed_for_model_init,
    seed_for_training,
)
from routerforge.train.consistency import agreed_parameter_digests, parameter_digest
from routerforge.train.entrypoint import run_recipe
from routerforge.train.lifecycle import NO_ENCODER, Position, RunContext, start_run
from routerforge.train.optimization import build_lr_scheduler, build_optimizer
from routerforge.train.run_config import (
    RESUME_HELP,
    CheckpointConfig,
    ExportConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    parse_recipe_args,
)
from routerforge.train.sharded_models import (
    full_state_dict,
    gathered_for_generation,
    is_fsdp,
    place_frozen_model,
)

REPO_DIR = Path(__file__).resolve().parents[1]
GRPO_MOVED = ("GRPO is its own recipe: python training/train_router_r1_grpo.py --config configs/router_r1_grpo/"
              "tiny.yaml (routerforge train router-r1-grpo); this one trains with PPO.")


# ----------------------------------------------------------------------------------------------------
# 1. Config: shared blocks + model, lora, tasks (routerforge/rl/policy_run.py), pool, env, reward and PPO (rl)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PPOConfig:
    gamma: float = doc("GAE discount per policy token (0-1; veRL/Router-R1: 1.0)", default=1.0)
    lam: float = doc("GAE lambda (0-1; veRL/Router-R1: 1.0)", default=1.0)
    clip_ratio: float = doc("PPO clip range of the probability ratio (unitless; paper: 0.2)", default=0.2)
    value_clip: float = doc("clip range of the new value around the old one (value units; veRL: 0.5)", default=0.5)
    entropy_coef: float = doc("weight of the entropy bonus (unitless; veRL default 0.001)", default=0.001)
    kl_coef: float = doc("beta of the KL(actor || reference) penalty in the token rewards (unitless; paper: 0.001)",
                         default=0.001)
    kl_estimator: str = doc("per-token KL estimator: k1, k2, k3 or abs (ppo_math.kl_penalty; veRL default k1)",
                            default="k1")
    whiten_advantages: bool = doc("normalise the advantages over the policy tokens of the batch (veRL does)",
                                  default=True)
    ppo_epochs: int = doc("passes over each rollout batch (count; paper: 1)", default=1)
    rollout_batch_size: int = doc("episodes per PPO step over all processes (episodes; paper: 64)", default=64)
    mini_batch_size: int = doc("episodes per optimizer update over all processes (episodes; paper: 32); "
                               "run.micro_batch_size episodes go through each forward pass", default=32)
    max_new_tokens: int = doc("tokens the policy may generate per turn (tokens; Router-R1: 500)", default=500)
    max_prompt_tokens: int = doc("longest prompt accepted (tokens; Router-R1: 4096); a longer one is an error",
                                 default=4096)
    max_response_tokens: int = doc("longest response trained on, policy + inserted tokens (tokens); an episode "
                                   "whose context would exceed it ends", default=4096)
    temperature: float = doc("sampling temperature of the rollouts (> 0; paper: 1.0)", default=1.0)
    top_p: float = doc("nucleus sampling mass of the rollouts (0-1]", default=1.0)
    critic_lr: float = doc("critic learning rate (per optimizer step; paper: 1e-5); optim.lr is the actor's",
                           default=1e-5)

    def __post_init__(self) -> None:
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"rl.gamma and rl.lam must be in [0, 1], got {self.gamma}, {self.lam}")
        for name in ("clip_ratio", "value_clip", "temperature", "critic_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"rl.{name} must be > 0, got {getattr(self, name)}")
        for name in ("entropy_coef", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"rl.{name} must be >= 0, got {getattr(self, name)}")
        if self.kl_estimator not in ppo_math.KL_ESTIMATORS:
            raise ValueError(f"rl.kl_estimator must be one of {', '.join(ppo_math.KL_ESTIMATORS)}, "
                             f"got '{self.kl_estimator}'")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"rl.top_p must be in (0, 1], got {self.top_p}")
        for name in ("ppo_epochs", "rollout_batch_size", "mini_batch_size", "max_new_tokens", "max_prompt_tokens",
                     "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError(f"rl.rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"rl.mini_batch_size ({self.mini_batch_size})")
        if self.max_new_tokens > self.max_response_tokens:
            raise ValueError(f"rl.max_new_tokens ({self.max_new_tokens}) must be <= rl.max_response_tokens "
                             f"({self.max_response_tokens})")


@dataclass(frozen=True)
class RouterR1Config:
    # Top-level keys of configs written when this recipe also trained GRPO (now train_router_r1_grpo.py).
    RETIRED_KEYS = {"grpo": GRPO_MOVED}

    run: RunConfig = doc("run name, output dir, seed, length (run.max_optimizer_steps = PPO steps; paper: 225), "
                         "micro_batch_size = episodes per forward pass",
                         default_factory=paper_run)
    model: RouterR1ModelConfig = doc("policy LM (actor; critic trunk and reference start from it)",
                                     default_factory=RouterR1ModelConfig)
    lora: RouterR1LoraConfig = doc("LoRA on actor and critic", default_factory=RouterR1LoraConfig)
    tasks: RouterR1TaskConfig = doc("training questions", default_factory=RouterR1TaskConfig)
    pool: PoolConfig = doc("candidate models the policy can call (routerforge/rl/pool_config.py)",
                           default_factory=PoolConfig)
    env: EnvConfig = doc("episode limits (routerforge/rl/env.py)", default_factory=EnvConfig)
    reward: RewardConfig = doc("format / outcome / cost reward (routerforge/rl/reward.py)",
                               default_factory=RewardConfig)
    algorithm: str = doc("ppo, the paper's optimiser (critic, GAE, KL in the reward); kept so that configs naming "
                         "it load. GRPO: training/train_router_r1_grpo.py", default="ppo")
    rl: PPOConfig = doc("PPO hyperparameters (paper: batch 64, mini-batch 32, KL 0.001)", default_factory=PPOConfig)
    optim: OptimConfig = doc("actor optimizer (paper: AdamW, lr 1e-6); the critic uses the same with rl.critic_lr",
                             default_factory=paper_optim)
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = doc("step checkpoints (every N PPO steps)", default_factory=CheckpointConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)
    resume: str = doc(RESUME_HELP, default="never")

    def __post_init__(self) -> None:
        if self.algorithm != "ppo":
            raise ValueError(f"algorithm must be ppo, got '{self.algorithm}'. " + GRPO_MOVED)


def check_batch_geometry(cfg: RouterR1Config, world_size: int) -> tuple[int, int]:
    """(rollout episodes, mini-batch episodes) per process; ConfigError naming the key when they do not divide."""
    if cfg.run.gradient_accumulation_steps != 1:
        raise ConfigError("run.gradient_accumulation_steps must be 1 for router_r1: a PPO update accumulates the "
                          "micro-batches of one mini-batch itself (set rl.mini_batch_size and run.micro_batch_size).")
    for key, size in (("rl.rollout_batch_size", cfg.rl.rollout_batch_size), ("rl.mini_batch_size",
                                                                             cfg.rl.mini_batch_size)):
        if size % world_size:
            raise ConfigError(f"{key}={size} is not a multiple of the {world_size} processes; each process runs an "
                              f"equal share.")
    return cfg.rl.rollout_batch_size // world_size, cfg.rl.mini_batch_size // world_size


def task_indices_for_step(num_tasks: int, per_process: int, seed: int, ppo_step: int, rank: int) -> list[int]:
    """The tasks process `rank` rolls out at `ppo_step`: a function of (seed, step, rank) only, so a resume
    at step k draws exactly what the interrupted run would have drawn."""
    rng = np.random.default_rng([seed, ppo_step, rank])
    return rng.choice(num_tasks, size=per_process, replace=num_tasks < per_process).tolist()


def micro_batches(batch: RolloutBatch, rows: torch.Tensor, micro_batch_size: int):
    for start in range(0, len(rows), micro_batch_size):
        yield batch.rows(rows[start:start + micro_batch_size])


# ----------------------------------------------------------------------------------------------------
# 3. Tasks, candidate pool, environment: routerforge/rl/policy_run.py (shared with the GRPO recipe)
# ----------------------------------------------------------------------------------------------------
def gather_costs_across_processes(costs: list[float]) -> tuple[list[float], int]:
    """RoutingEnv's cost_gather for a multi-process PPO run: every process's episode costs in rank order."""
    per_process = gather_object([costs])
    offset = sum(len(c) for c in per_process[:PartialState().process_index])
    return [cost for chunk in per_process for cost in chunk], offset


def refuse_deepspeed_ppo(accelerator) -> None:
    """PPO trains two models (actor, critic), each prepared with its own optimizer: accelerate accepts one
    model per Accelerator under DeepSpeed. A clear error at start-up instead of accelerate's assertion
    (launch/README.md, "Router-R1 at scale"). FSDP2 takes one model per `prepare` call, which is what we do."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError("PPO does not run under DeepSpeed (actor and critic are two prepared models; "
                          "accelerate takes one per Accelerator under DeepSpeed). Shard with "
                          "launch/accelerate/fsdp.yaml (FSDP2) or train data-parallel with ddp_8gpu.yaml; "
                          "training/train_router_r1_grpo.py runs under DeepSpeed through TRL.")


@dataclass(frozen=True)
class PolicyModels:
    """Section 4's result: tokenizer, actor, critic, frozen reference and the tokenized training prompts."""

    tokenizer: object
    actor: torch.nn.Module
    critic: torch.nn.Module
    reference: torch.nn.Module
    reference_digest: str  # sha256 of the reference's weights: checked at the end, it must never move
    dtype: object
    templates: dict[str, str]  # raw prompt -> templated prompt
    prompt_tokens: dict[str, list[int]]  # raw prompt -> its token ids


# ----------------------------------------------------------------------------------------------------
# 4. Models: actor, critic (separate trunk + value head), frozen reference; LoRA optional
# ----------------------------------------------------------------------------------------------------
def build_models(cfg: RouterR1Config, setup: RoutingSetup) -> PolicyModels:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seed_for_model_init(cfg.run.seed)
    dtype = DTYPES[cfg.model.dtype]
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.policy, revision=cfg.model.revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    actor = AutoModelForCausalLM.from_pretrained(cfg.model.policy, revision=cfg.model.revision, dtype=dtype)
    reference = AutoModelForCausalLM.from_pretrained(cfg.model.policy, revision=cfg.model.revision, dtype=dtype)
    reference.requires_grad_(False).eval()
    reference_digest = parameter_digest(reference)
    critic = build_value_model(cfg.model.policy, dtype=dtype, revision=cfg.model.revision)
    if cfg.lora.enabled:
        from peft import get_peft_model

        actor = get_peft_model(actor, cfg.lora.peft_config())
        critic.trunk = get_peft_model(critic.trunk, cfg.lora.peft_config(task_type=None))  # value head: fully trained
    templates = {}
    prompt_tokens = {}
    for task in setup.train_tasks:
        raw = setup.env.prompt_for(task)
        templates[raw] = templated_prompt(tokenizer, raw, cfg.model.use_chat_template)
        prompt_tokens[raw] = tokenizer(templates[raw], add_special_tokens=False)["input_ids"]
    longest = max(len(ids) for ids in prompt_tokens.values())
    if longest > cfg.rl.max_prompt_tokens:
        raise ConfigError(f"rl.max_prompt_tokens={cfg.rl.max_prompt_tokens} but the longest training prompt has "
                          f"{longest} tokens; raise rl.max_prompt_tokens (or shorten the pool descriptions).")
    return PolicyModels(tokenizer=tokenizer, actor=actor, critic=critic, reference=reference,
                        reference_digest=reference_digest, dtype=dtype, templates=templates,
                        prompt_tokens=prompt_tokens)


@dataclass(frozen=True)
class PPOOutcome:
    """What the PPO loop hands to the export (section 8)."""

    actor: torch.nn.Module  # as prepared
    critic: torch.nn.Module
    reference: torch.nn.Module
    ppo_step: int
    total_ppo_steps: int
    history: list[dict]
    skipped_nonfinite_updates: int
    throughput: dict


# ----------------------------------------------------------------------------------------------------
# 5-7. Optimizers and LR schedules, resume, PPO loop
# ----------------------------------------------------------------------------------------------------
def fit(ctx: RunContext, m: PolicyModels, setup: RoutingSetup) -> PPOOutcome:
    cfg: RouterR1Config = ctx.cfg
    accelerator = ctx.accelerator
    rollouts_per_process, mini_per_process = check_batch_geometry(cfg, accelerator.num_processes)

    # 5. Optimizers and LR schedules (one optimizer step per mini-batch, for each of actor and critic)
    total_ppo_steps = cfg.run.max_optimizer_steps if cfg.run.max_optimizer_steps is not None else \
        cfg.run.epochs * math.ceil(len(setup.train_tasks) / cfg.rl.rollout_batch_size)
    updates_per_step = cfg.rl.ppo_epochs * (cfg.rl.rollout_batch_size // cfg.rl.mini_batch_size)
    actor_optimizer = build_optimizer([p for p in m.actor.parameters() if p.requires_grad], cfg.optim)
    critic_optimizer = build_optimizer([p for p in m.critic.parameters() if p.requires_grad],
                                       dataclasses.replace(cfg.optim, lr=cfg.rl.critic_lr))
    actor_scheduler = build_lr_scheduler(actor_optimizer, cfg.optim, total_ppo_steps * updates_per_step)
    critic_scheduler = build_lr_scheduler(critic_optimizer, cfg.optim, total_ppo_steps * updates_per_step)
    seed_for_training(cfg.run.seed, accelerator)
    # One model per prepare call: FSDP2 shards one model (with its optimizer) per call. Under FSDP2 the
    # reference is sharded too (sharded_models.place_frozen_model); its forward passes are then collectives,
    # which is fine: every process scores the same number of micro-batches.
    actor, actor_optimizer, actor_scheduler = accelerator.prepare(m.actor, actor_optimizer, actor_scheduler)
    critic, critic_optimizer, critic_scheduler = accelerator.prepare(m.critic, critic_optimizer, critic_scheduler)
    reference = place_frozen_model(m.reference, accelerator)
    accelerator.register_for_checkpointing(setup.normalizer)  # the cost window is part of the exact resume

    # 6. Resume: models, optimizers, schedules, RNG, cost window, step counter. optimizer_step counts PPO steps
    #    (rollout + updates); tasks are drawn per step, so the step is the position.
    position, state = ctx.resume(setup.data_fingerprint, step_name="PPO step")
    ppo_step = position.optimizer_step
    guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)

    def save_step_checkpoint() -> Path:
        return ctx.save_checkpoint(ctx.trainer_state(Position(ppo_step, 0, ppo_step), setup.data_fingerprint, guard))

    # 7. PPO loop
    unwrapped_actor = accelerator.unwrap_model(actor)
    policy = make_lm_policy(unwrapped_actor, m.tokenizer, m.templates, accelerator.device, GenerationSettings(
        max_new_tokens=cfg.rl.max_new_tokens, micro_batch_size=cfg.run.micro_batch_size,
        token_budget=cfg.rl.max_prompt_tokens + cfg.rl.max_response_tokens - cfg.rl.max_new_tokens,
        temperature=cfg.rl.temperature, top_p=cfg.rl.top_p))
    progress = tqdm(total=total_ppo_steps, initial=ppo_step, desc=RECIPE, unit="step",
                    disable=not (accelerator.is_main_process and cfg.run.progress_bar))
    history: list[dict] = []
    train_tasks, env, tokenizer, prompt_tokens = setup.train_tasks, setup.env, m.tokenizer, m.prompt_tokens
    episodes_seen, loop_started = 0, time.perf_counter()
    while ppo_step < total_ppo_steps:
        # 7a. Rollouts (actor in eval mode: no dropout while sampling)
        actor.eval()
        indices = task_indices_for_step(len(train_tasks), rollouts_per_process, cfg.run.seed, ppo_step,
                                        accelerator.process_index)
        tasks = [train_tasks[i] for i in indices]
        # Under FSDP2 the actor is gathered whole for the rollouts: each process's episodes take their own
        # number of turns and generate calls, which per-layer all-gathers would deadlock on.
        with torch.no_grad(), gathered_for_generation(actor, accelerator):
            rollouts = env.rollout_many(tasks, policy)
        batch = collate_rollouts(rollouts, [prompt_tokens[r.prompt] for r in rollouts], tokenizer,
                                 tokenizer.pad_token_id, cfg.rl.max_response_tokens).to(accelerator.device)
        mask = batch.response_mask
        every_row = torch.arange(len(rollouts), device=accelerator.device)

        # 7b. Old and reference log-probs, old values; token rewards with the KL penalty; GAE
        critic.eval()
        with torch.no_grad():
            old_log_probs = torch.cat([response_log_probs(actor, mb, cfg.rl.temperature)[0]
                                       for mb in micro_batches(batch, every_row, cfg.run.micro_batch_size)])
            ref_log_probs = torch.cat([response_log_probs(reference, mb, cfg.rl.temperature)[0]
                                       for mb in micro_batches(batch, every_row, cfg.run.micro_batch_size)])
            old_values = torch.cat([response_values(critic, mb)
                                    for mb in micro_batches(batch, every_row, cfg.run.micro_batch_size)]) * mask
            scores = ppo_math.sequence_reward_to_tokens(batch.rewards, mask)
            token_rewards, mean_kl = ppo_math.apply_kl_penalty(scores, old_log_probs, ref_log_probs, mask,
                                                               cfg.rl.kl_coef, cfg.rl.kl_estimator)
            advantages, returns = ppo_math.compute_gae(token_rewards, old_values, mask, cfg.rl.gamma, cfg.rl.lam)
            if cfg.rl.whiten_advantages and mask.sum() > 1:
                advantages = ppo_math.masked_whiten(advantages, mask) * mask

        # 7c. PPO updates: each mini-batch is one optimizer step of the actor and one of the critic
        actor.train()
        critic.train()
        sums = torch.zeros(6, device=accelerator.device)  # pg, vf, entropy, clip frac, approx kl, updates
        order_rng = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + ppo_step)
        for _ in range(cfg.rl.ppo_epochs):
            order = torch.randperm(len(rollouts), generator=order_rng).to(accelerator.device)
            for start in range(0, len(rollouts), mini_per_process):
                mini = order[start:start + mini_per_process]
                mini_tokens = mask[mini].sum().clamp(min=1.0)
                update = torch.zeros(5, device=accelerator.device)
                for micro_start in range(0, len(mini), cfg.run.micro_batch_size):
                    rows = mini[micro_start:micro_start + cfg.run.micro_batch_size]
                    micro = batch.rows(rows)
                    micro_mask = mask[rows]
                    # Token-mean over the mini-batch: each micro-batch weighs by its share of policy tokens.
                    weight = micro_mask.sum() / mini_tokens
                    log_probs, entropy = response_log_probs(actor, micro, cfg.rl.temperature, with_entropy=True)
                    pg = ppo_math.clipped_policy_loss(log_probs, old_log_probs[rows], advantages[rows], micro_mask,
                                                      clip_eps=cfg.rl.clip_ratio)
                    mean_entropy = ppo_math.masked_mean(entropy, micro_mask)
                    values = response_values(critic, micro)
                    vf_loss, _ = ppo_math.clipped_value_loss(values, old_values[rows], returns[rows], micro_mask,
                                                             clip_range=cfg.rl.value_clip)
                    loss = (pg.loss - cfg.rl.entropy_coef * mean_entropy + vf_loss) * weight
                    # NaN/Inf on any process: every process skips this update (routerforge/train/nan_guard.py).
                    if nan_guard.update_allowed(guard, accelerator, loss, ppo_step + 1):
                        accelerator.backward(loss)  # actor and critic share no parameter: one backward feeds both
                        update += torch.stack([pg.loss.detach(), vf_loss.detach(), mean_entropy.detach(),
                                               pg.clip_fraction, pg.approx_kl]) * weight.detach()
                if not guard.window_is_nonfinite:
                    if cfg.optim.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(actor.parameters(), cfg.optim.max_grad_norm)
                        accelerator.clip_grad_norm_(critic.parameters(), cfg.optim.max_grad_norm)
                    actor_optimizer.step()
                    critic_optimizer.step()
                    sums += torch.cat([update, torch.ones(1, device=accelerator.device)])
                actor_optimizer.zero_grad()
                critic_optimizer.zero_grad()
                nan_guard.close_optimizer_step(guard)
                actor_scheduler.step()
                critic_scheduler.step()
        ppo_step += 1
        episodes_seen += len(rollouts)
        progress.update(1)

        # 7d. Log (means over processes), checkpoint
        reduced = accelerator.reduce(torch.cat([sums, torch.tensor([
            float(batch.rewards.sum()), float(sum(r.reward.format_ok for r in rollouts)),
            float(sum(r.reward.outcome for r in rollouts)), float(sum(r.executed_calls for r in rollouts)),
            float(sum(r.cost_usd for r in rollouts)), float(len(rollouts)), float(mask.sum()),
            float(batch.env_mask.sum()), float(mean_kl) * len(rollouts)], device=accelerator.device)]),
            reduction="sum").tolist()
        updates, episodes = max(reduced[5], 1.0), reduced[11]
        metrics = {"ppo_step": ppo_step, "pg_loss": reduced[0] / updates, "vf_loss": reduced[1] / updates,
                   "entropy": reduced[2] / updates, "clip_fraction": reduced[3] / updates,
                   "approx_kl": reduced[4] / updates, "updates": int(reduced[5]),
                   "reward": reduced[6] / episodes, "format_ok": reduced[7] / episodes,
                   "outcome": reduced[8] / episodes, "calls_per_episode": reduced[9] / episodes,
                   "cost_usd_per_episode": reduced[10] / episodes, "policy_tokens": int(reduced[12]),
                   "env_tokens": int(reduced[13]), "kl_to_reference": reduced[14] / episodes,
                   "actor_lr": actor_scheduler.get_last_lr()[0],
                   "skipped_nonfinite_updates": guard.skipped_steps}
        history.append(metrics)
        if ppo_step % cfg.tracking.log_every_optimizer_steps == 0 or ppo_step == total_ppo_steps:
            accelerator.log({f"train/{k}": v for k, v in metrics.items() if k != "ppo_step"}, step=ppo_step)
            progress.set_postfix(reward=f"{metrics['reward']:.3f}")
        # Every N steps a checkpoint; NaN/Inf too many updates in a row: a last checkpoint, exit status 3.
        ctx.end_optimizer_step(ppo_step, guard, save_step_checkpoint, progress)
    progress.close()
    loop_seconds = time.perf_counter() - loop_started
    return PPOOutcome(actor=actor, critic=critic, reference=reference, ppo_step=ppo_step,
                      total_ppo_steps=total_ppo_steps, history=history, skipped_nonfinite_updates=guard.skipped_steps,
                      throughput={"train_episodes": episodes_seen * accelerator.num_processes,
                                  "train_loop_seconds": loop_seconds,
                                  "peak_accelerator_memory_bytes": peak_accelerator_memory_bytes()})


# ----------------------------------------------------------------------------------------------------
# 8. Export (main process): policy/ (save_pretrained + tokenizer), value head, pool config, manifest
# ----------------------------------------------------------------------------------------------------
def export(ctx: RunContext, trained: PPOOutcome, m: PolicyModels, setup: RoutingSetup) -> dict:
    cfg: RouterR1Config = ctx.cfg
    accelerator = ctx.accelerator
    actor, critic = trained.actor, trained.critic
    accelerator.wait_for_everyone()
    if parameter_digest(trained.reference) != m.reference_digest:
        raise RuntimeError("the frozen reference model changed during training; the KL penalty was measured "
                           "against a moving target.")
    actor_digests = agreed_parameter_digests(accelerator, actor, what="actor weights")
    # Whole weights on the main process: under FSDP2 a gather (a collective, so every process calls it).
    sharded = is_fsdp(accelerator)
    actor_state = full_state_dict(accelerator, actor) if sharded else None
    critic_state = full_state_dict(accelerator, critic) if sharded else None
    history = trained.history
    result = ctx.result(ppo_steps=trained.ppo_step, history=history, throughput=trained.throughput,
                        reference_sha256=m.reference_digest, actor_sha256_per_process=actor_digests)
    if accelerator.is_main_process:
        if sharded:
            policy_model = rebuild_policy(cfg, actor_state, m.dtype)
            value_head_state = {k.removeprefix("value_head."): v for k, v in critic_state.items()
                                if k.startswith("value_head.")}
        else:
            unwrapped_actor = accelerator.unwrap_model(actor)
            policy_model = unwrapped_actor.merge_and_unload() if cfg.lora.enabled else unwrapped_actor
            value_head_state = accelerator.unwrap_model(critic).value_head.state_dict()
        model_config = {**policy_router_config(cfg, setup.model_pool, {
            "temperature": cfg.rl.temperature, "top_p": cfg.rl.top_p, "max_new_tokens": cfg.rl.max_new_tokens}),
            "value_head_hidden_size": int(value_head_state["weight"].shape[1])}
        # One atomic export: policy/ and pool_config.json are written into export_router's temporary directory,
        # so a crash while saving the policy leaves the previous export as it was.
        ctx.export(
            {f"value_head.{k}": v for k, v in value_head_state.items()}, model_config, model_pool=setup.model_pool,
            encoder=NO_ENCODER, register=register_run_export, data=task_data_facts(cfg, setup),
            training={"ppo_steps": trained.ppo_step, "total_ppo_steps": trained.total_ppo_steps,
                      "resumed_from": str(ctx.resume_from) if ctx.resume_from else None, "history": history,
                      "skipped_nonfinite_updates": trained.skipped_nonfinite_updates,
                      "reference_sha256": m.reference_digest, "actor_sha256_per_process": actor_digests,
                      **trained.throughput},
            metrics={k: history[-1][k] for k in ("reward", "format_ok", "outcome", "calls_per_episode")}
            if history else {},
            extra_files=lambda directory: write_policy_files(directory, policy_model, m.tokenizer, cfg.pool))
    ctx.finish()
    return result


def main(argv: list[str] | None = None) -> dict:
    # 1. Config
    cfg = parse_recipe_args(RouterR1Config, argv, description=__doc__.splitlines()[0])

    # 2. accelerate, run directory, resume state, tracking (DeepSpeed and a batch that does not divide: refused)
    def check_launch(accelerator) -> None:
        refuse_deepspeed_ppo(accelerator)
        check_batch_geometry(cfg, accelerator.num_processes)

    ctx = start_run(cfg, RECIPE, REPO_DIR, check_accelerator=check_launch)
    # 3. Tasks, candidate pool, environment (one cost window over every process's episodes, checkpointed)
    setup = build_routing_setup(cfg, gather_costs_across_processes if ctx.accelerator.num_processes > 1 else None)
    # 4. Models
    models = build_models(cfg, setup)
    # 5-7. Optimizers, resume, PPO loop
    trained = fit(ctx, models, setup)
    # 8. Export
    return export(ctx, trained, models, setup)


def rebuild_policy(cfg: RouterR1Config, state_dict: dict[str, torch.Tensor], dtype):
    """The trained policy as a plain model on the main process, from the gathered whole state dict of a
    sharded actor (FSDP2): the base model is loaded again, given the same LoRA adapters when they were
    trained, filled with `state_dict` (strictly: every key must match) and merged."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg.model.policy, revision=cfg.model.revision, dtype=dtype)
    if cfg.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, cfg.lora.peft_config())
    model.load_state_dict(state_dict, strict=True)
    return model.merge_and_unload() if cfg.lora.enabled else model


if __name__ == "__main__":
    run_recipe(main)
