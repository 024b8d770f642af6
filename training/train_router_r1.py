"""Train a Router-R1 policy with PPO: an LLM that thinks, calls pool models, and answers.

    accelerate launch training/train_router_r1.py --config configs/router_r1/qwen2_5_3b.yaml [key=value ...]
    python training/train_router_r1.py --config configs/router_r1/tiny.yaml model.policy=<tiny model dir>
    ... resume=auto                                   # continue the run from its newest complete checkpoint
    python training/train_router_r1.py --config configs/router_r1/tiny_grpo.yaml model.policy=<tiny model dir>
    accelerate launch training/train_router_r1.py --config configs/router_r1/qwen2_5_3b.yaml algorithm=grpo

`algorithm: grpo` trains with GRPO through TRL's GRPOTrainer instead: a DEVIATION from the paper (Router-R1
uses PPO). Same tasks, pool, environment, reward, masks and export (minus the value head); no critic, a
group of grpo.num_generations episodes per prompt as the baseline. Section 1b; routerforge/rl/grpo.py.

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

Reads top to bottom:
  1. config   1b. the GRPO path (algorithm=grpo; main() dispatches to it first)   2. accelerate, seeds, run dir, tracking   3. tasks, pool, environment   4. models
  5. optimizers + schedules   6. resume   7. PPO loop (rollout, advantages, updates, log, checkpoint)
  8. export (main process): the policy (save_pretrained), the value head, the pool config, the manifest

Exit status: 0 trained and exported; 2 a user error (one line); 3 stopped after
run.max_consecutive_nonfinite_steps NaN/Inf updates, with a checkpoint to resume from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, broadcast_object_list, gather_object
from tqdm.auto import tqdm

from routerforge.config import config_to_dict, doc
from routerforge.errors import ConfigError, DataError
from routerforge.registry.register import register_run_export
from routerforge.rl import ppo_math
from routerforge.rl.critic import build_value_model
from routerforge.rl.env import EnvConfig, RoutingEnv
from routerforge.rl.generation import GenerationSettings, make_lm_policy, templated_prompt
from routerforge.rl.grpo import (
    GRPOBlockConfig,
    build_grpo_args,
    build_grpo_trainer,
    configure_tracking,
    make_rollout_func,
    resolve_grpo_resume,
    train_grpo,
)
from routerforge.rl.pool_config import PoolConfig, resolve_model_cards
from routerforge.rl.pools import build_pool
from routerforge.rl.protocol import STOP_TAGS
from routerforge.rl.reward import CostNormalizer, RewardConfig
from routerforge.rl.rollout_batch import RolloutBatch, collate_rollouts, response_log_probs, response_values
from routerforge.rl.tasks import GSM8K_RESPONSES, gsm8k_tasks_from_routellm, split_tasks
from routerforge.train import checkpointing, faults, nan_guard
from routerforge.train.accelerator_setup import (
    build_accelerator,
    peak_accelerator_memory_bytes,
    seed_for_model_init,
    seed_for_training,
    world_description,
)
from routerforge.train.consistency import parameter_digest, parameter_digests
from routerforge.train.entrypoint import run_recipe
from routerforge.train.final_export import build_manifest, export_router
from routerforge.train.optimization import build_lr_scheduler, build_optimizer
from routerforge.train.run_config import (
    RESUME_HELP,
    CheckpointConfig,
    ExportConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    export_dir_for,
    parse_recipe_args,
    run_dir_for,
)
from routerforge.train.sharded_models import (
    full_state_dict,
    gathered_for_generation,
    is_fsdp,
    place_frozen_model,
)
from routerforge.train.tracking import finish_tracking, new_run_id, start_tracking

RECIPE = "router_r1"
REPO_DIR = Path(__file__).resolve().parents[1]
TASK_SOURCES = ("gsm8k_routellm",)
ALGORITHMS = ("ppo", "grpo")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
POLICY_DIR = "policy"
POOL_CONFIG_FILE = "pool_config.json"


# ----------------------------------------------------------------------------------------------------
# 1. Config: shared blocks + model, lora, tasks, pool, env, reward and the PPO (rl) block
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterR1ModelConfig:
    policy: str = doc("the policy LM: Hub id or local directory of a causal LM (paper: Qwen2.5-3B-Instruct); the "
                      "critic trunk and the reference start from the same weights", default="Qwen/Qwen2.5-3B-Instruct")
    revision: str | None = doc("Hub revision (commit sha or tag) of model.policy; None: the default branch",
                               default=None)
    dtype: str = doc("weights dtype: float32, bfloat16, float16 or auto (the checkpoint's)", default="float32")
    use_chat_template: bool = doc("wrap the prompt in the tokenizer's chat template as a user turn when it has one "
                                  "(Router-R1/Search-R1 do)", default=True)

    def __post_init__(self) -> None:
        if not self.policy.strip():
            raise ValueError("model.policy must name a causal LM (Hub id or local directory)")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")


@dataclass(frozen=True)
class RouterR1LoraConfig:
    enabled: bool = doc("train LoRA adapters on the actor and the critic trunk instead of all weights", default=False)
    r: int = doc("LoRA rank (count)", default=16)
    alpha: float = doc("LoRA alpha (scaling = alpha / r, unitless)", default=32.0)
    dropout: float = doc("dropout on the LoRA input (probability)", default=0.05)
    target_modules: list[str] = doc("module names that get adapters (Qwen2/Llama attention and MLP projections)",
                                    default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"])

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.enabled and not self.target_modules:
            raise ValueError("lora.target_modules is empty; name the modules that get adapters")

    def peft_config(self, task_type: str | None = "CAUSAL_LM"):
        """peft's LoraConfig with these settings (task_type None: a bare trunk, the critic's)."""
        from peft import LoraConfig

        return LoraConfig(task_type=task_type, r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules))


@dataclass(frozen=True)
class RouterR1TaskConfig:
    source: str = doc("where the training questions come from: gsm8k_routellm (RouteLLM's recorded GSM8K answers; "
                      "routerforge/rl/tasks.py)", default="gsm8k_routellm")
    path: str = doc("the task table (path)", default=GSM8K_RESPONSES)
    max_rows: int | None = doc("read only the first N questions (count); None: all", default=None)
    test_fraction: float = doc("share of the tasks held out from training (0-1), by a seeded hash of the prompt id",
                               default=0.1)
    split_seed: int = doc("seed of the train/test hash split", default=0)

    def __post_init__(self) -> None:
        if self.source not in TASK_SOURCES:
            raise ValueError(f"tasks.source must be one of {', '.join(TASK_SOURCES)}, got '{self.source}'")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"tasks.max_rows must be >= 1 or null, got {self.max_rows}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"tasks.test_fraction must be in [0, 1), got {self.test_fraction}")


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
    run: RunConfig = doc("run name, output dir, seed, length (run.max_optimizer_steps = PPO steps; paper: 225), "
                         "micro_batch_size = episodes per forward pass",
                         default_factory=lambda: RunConfig(name="router_r1", epochs=1, max_optimizer_steps=225,
                                                           micro_batch_size=8))
    model: RouterR1ModelConfig = doc("policy LM (actor; critic trunk and reference start from it)",
                                     default_factory=RouterR1ModelConfig)
    lora: RouterR1LoraConfig = doc("LoRA on actor and critic", default_factory=RouterR1LoraConfig)
    tasks: RouterR1TaskConfig = doc("training questions", default_factory=RouterR1TaskConfig)
    pool: PoolConfig = doc("candidate models the policy can call (routerforge/rl/pool_config.py)",
                           default_factory=PoolConfig)
    env: EnvConfig = doc("episode limits (routerforge/rl/env.py)", default_factory=EnvConfig)
    reward: RewardConfig = doc("format / outcome / cost reward (routerforge/rl/reward.py)",
                               default_factory=RewardConfig)
    algorithm: str = doc("ppo (the paper's optimiser: critic, GAE, KL in the reward; the `rl` block) or grpo (TRL's "
                         "GRPOTrainer, group-mean baseline, no critic; the `grpo` block): grpo is a DEVIATION from "
                         "Router-R1", default="ppo")
    rl: PPOConfig = doc("PPO hyperparameters (paper: batch 64, mini-batch 32, KL 0.001)", default_factory=PPOConfig)
    grpo: GRPOBlockConfig = doc("GRPO hyperparameters, read only with algorithm=grpo (routerforge/rl/grpo.py)",
                                default_factory=GRPOBlockConfig)
    optim: OptimConfig = doc("actor optimizer (paper: AdamW, lr 1e-6); the critic uses the same with rl.critic_lr",
                             default_factory=lambda: OptimConfig(name="adamw", lr=1e-6, weight_decay=0.01,
                                                                 max_grad_norm=1.0))
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = doc("step checkpoints (every N PPO steps)", default_factory=CheckpointConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)
    resume: str = doc(RESUME_HELP + " (grpo: HF Trainer's checkpoint-N directories)", default="never")

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got '{self.algorithm}'")


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
# Section 3's setup, shared by the PPO and GRPO paths: tasks, candidate pool, environment
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoutingSetup:
    train_tasks: list
    test_tasks: list
    cards: list
    env: RoutingEnv
    normalizer: CostNormalizer
    model_pool: list[str]
    data_fingerprint: str  # sha256 of the training task ids and the pool config (checked on resume)


def build_routing_setup(cfg: RouterR1Config, cost_gather=None) -> RoutingSetup:
    all_tasks, task_report = gsm8k_tasks_from_routellm(cfg.tasks.path, max_rows=cfg.tasks.max_rows)
    train_tasks, test_tasks = split_tasks(all_tasks, cfg.tasks.test_fraction, cfg.tasks.split_seed)
    if not train_tasks:
        raise DataError(f"{cfg.tasks.path}: no training task left ({task_report.kept} built, all held out); "
                        f"raise tasks.max_rows or lower tasks.test_fraction.")
    cards = resolve_model_cards(cfg.pool)
    pool = build_pool(cfg.pool, cards, max_rows=cfg.tasks.max_rows)
    normalizer = CostNormalizer.from_config(cfg.reward)
    env = RoutingEnv(pool, cfg.reward, normalizer, cfg.env, cost_gather=cost_gather)
    data_fingerprint = hashlib.sha256(json.dumps(
        {"tasks": [t.prompt_id for t in train_tasks], "pool": config_to_dict(cfg.pool)}, sort_keys=True
    ).encode()).hexdigest()
    return RoutingSetup(train_tasks=train_tasks, test_tasks=test_tasks, cards=cards, env=env, normalizer=normalizer,
                        model_pool=[card.name for card in cards], data_fingerprint=data_fingerprint)


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
        raise ConfigError("algorithm=ppo does not run under DeepSpeed (actor and critic are two prepared models; "
                          "accelerate takes one per Accelerator under DeepSpeed). Shard with "
                          "launch/accelerate/fsdp.yaml (FSDP2) or train data-parallel with ddp_8gpu.yaml; "
                          "algorithm=grpo runs under DeepSpeed through TRL.")


# ----------------------------------------------------------------------------------------------------
# 1b. GRPO path (algorithm=grpo; a DEVIATION from the paper, which trains with PPO): TRL's GRPOTrainer runs the
#     same tasks, pool and environment through routerforge/rl/grpo.py's rollout function (env tokens masked by
#     env_mask), checkpoints as HF Trainer does (<run_dir>/checkpoint-N), and exports like PPO minus the value head
# ----------------------------------------------------------------------------------------------------
def main_grpo(cfg: RouterR1Config) -> dict:
    from transformers import AutoTokenizer

    run_dir = run_dir_for(cfg.run, RECIPE)
    resume_from = resolve_grpo_resume(cfg.resume, run_dir)
    report_to, tracking = configure_tracking(cfg.tracking, run_dir, cfg.run.name)
    resolved_config = config_to_dict(cfg)

    # Tasks, candidate pool, environment: as section 3 (each process's cost window goes into every checkpoint-N)
    setup = build_routing_setup(cfg)
    train_tasks, test_tasks, cards, env, normalizer = (setup.train_tasks, setup.test_tasks, setup.cards, setup.env,
                                                       setup.normalizer)
    model_pool, data_fingerprint = setup.model_pool, setup.data_fingerprint

    # Prompts (the dataset TRL samples from) and the trainer; TRL loads the policy (and the reference, beta > 0)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.policy, revision=cfg.model.revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tasks_by_prompt: dict[str, object] = {}
    for task in train_tasks:
        tasks_by_prompt.setdefault(env.prompt_for(task), task)  # a repeated question is one prompt
    longest = max(len(tokenizer(templated_prompt(tokenizer, p, cfg.model.use_chat_template),
                                add_special_tokens=False)["input_ids"]) for p in tasks_by_prompt)
    if longest > cfg.grpo.max_prompt_tokens:
        raise ConfigError(f"grpo.max_prompt_tokens={cfg.grpo.max_prompt_tokens} but the longest training prompt has "
                          f"{longest} tokens; raise grpo.max_prompt_tokens (or shorten the pool descriptions).")
    peft_config = cfg.lora.peft_config() if cfg.lora.enabled else None
    args = build_grpo_args(cfg.grpo, cfg.run, cfg.optim, cfg.checkpoint, cfg.tracking, report_to, run_dir,
                           int(os.environ.get("WORLD_SIZE", "1")),  # the trainer checks the world it forms
                           model_init_kwargs={"dtype": cfg.model.dtype, "revision": cfg.model.revision})
    rollout_func = make_rollout_func(env, tokenizer, tasks_by_prompt, cfg.grpo.generation_settings(
        cfg.run.micro_batch_size), cfg.model.use_chat_template, cfg.grpo.max_response_tokens)
    trainer = build_grpo_trainer(cfg.model.policy, tokenizer, args, list(tasks_by_prompt), rollout_func, normalizer,
                                 peft_config)
    loop_started = time.perf_counter()
    train_grpo(trainer, resume_from, normalizer)
    loop_seconds = time.perf_counter() - loop_started
    history = [entry for entry in trainer.state.log_history if "loss" in entry]

    # Export (main process): policy/, pool_config.json, config.json, manifest.json, an empty model.safetensors
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    actor_digests = parameter_digests(accelerator, trainer.model)
    if len(set(actor_digests)) != 1:
        raise RuntimeError(f"processes ended with different actor weights (sha256 per process: {actor_digests}); "
                           f"data-parallel training went out of sync.")
    export_dir = export_dir_for(cfg.run, cfg.export, RECIPE)
    throughput = {"train_loop_seconds": loop_seconds, "peak_accelerator_memory_bytes": peak_accelerator_memory_bytes()}
    result = {"export_dir": str(export_dir), "run_dir": str(run_dir), "optimizer_steps": trainer.state.global_step,
              "history": history, "tracking": tracking.to_dict(), "throughput": throughput,
              "actor_sha256_per_process": actor_digests, "resumed_from": str(resume_from) if resume_from else None}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(trainer.model)
        policy_model = unwrapped.merge_and_unload() if cfg.lora.enabled else unwrapped
        model_config = {"router_type": RECIPE, "algorithm": "grpo", "model_pool": model_pool, "policy_dir": POLICY_DIR,
                        "pool_config": POOL_CONFIG_FILE, "base_policy": cfg.model.policy,
                        "base_revision": cfg.model.revision, "use_chat_template": cfg.model.use_chat_template,
                        "generation": {"temperature": cfg.grpo.temperature, "top_p": cfg.grpo.top_p,
                                       "max_new_tokens": cfg.grpo.max_new_tokens,
                                       "stop_strings": [f"</{t}>" for t in STOP_TAGS]},
                        "env": config_to_dict(cfg.env), "reward": config_to_dict(cfg.reward)}
        last = history[-1] if history else {}
        manifest = build_manifest(
            recipe=RECIPE, router_type=RECIPE, resolved_config=resolved_config, model_pool=model_pool,
            encoder={"id": None, "revision": None, "dim": None}, repo_dir=REPO_DIR, tracking=tracking.to_dict(),
            data={"tasks": cfg.tasks.path, "train_tasks": len(train_tasks), "test_tasks": len(test_tasks),
                  "fingerprint": data_fingerprint,
                  "prices_usd_per_million_tokens": {c.name: [c.input_price, c.output_price] for c in cards}},
            training={**world_description(accelerator), "algorithm": "grpo (deviation from the paper's PPO)",
                      "optimizer_steps": trainer.state.global_step,
                      "resumed_from": str(resume_from) if resume_from else None, "history": history,
                      "actor_sha256_per_process": actor_digests, **throughput},
            metrics={k: last[key] for k, key in (("reward", "reward"), ("format_ok", "episode/format_ok"),
                                                 ("outcome", "episode/outcome"), ("calls_per_episode", "episode/calls"))
                     if key in last})
        # No value head: model.safetensors holds no tensor. policy/ + pool_config.json go in the same atomic write.
        export_router(export_dir, {}, model_config, manifest, extra_files=lambda directory: write_policy_files(
            directory, policy_model, tokenizer, cfg.pool))
        registered = register_run_export(cfg.export, export_dir, cfg.run.output_dir)
        if registered is not None:
            print(f"registered checkpoint: {registered}")
        print(f"checkpoint: {export_dir}")
        print(f"step checkpoints: {run_dir}")
        print(tracking.describe(), flush=True)
    accelerator.wait_for_everyone()
    return result


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_recipe_args(RouterR1Config, argv, description=__doc__.splitlines()[0])
    if cfg.algorithm == "grpo":
        return main_grpo(cfg)  # section 1b: TRL's GRPOTrainer (a deviation from the paper's PPO)

    # ------------------------------------------------------------------------------------------------
    # 2. accelerate, seeds, run directory, tracking
    # ------------------------------------------------------------------------------------------------
    run_dir = run_dir_for(cfg.run, RECIPE)
    accelerator = build_accelerator(cfg.run, cfg.tracking, run_dir)
    refuse_deepspeed_ppo(accelerator)
    rollouts_per_process, mini_per_process = check_batch_geometry(cfg, accelerator.num_processes)
    resume_from = checkpointing.resolve_resume(cfg.resume, run_dir)
    resumed_state = checkpointing.TrainerState.read(resume_from) if resume_from else None
    run_id_box = [resumed_state.tracking_run_id if resumed_state and resumed_state.tracking_run_id else new_run_id()]
    broadcast_object_list(run_id_box)
    tracking_run_id = run_id_box[0]
    resolved_config = config_to_dict(cfg)
    tracking = start_tracking(accelerator, cfg.tracking, run_dir, cfg.run.name, tracking_run_id, resolved_config)

    # ------------------------------------------------------------------------------------------------
    # 3. Tasks, candidate pool, environment (one cost window over every process's episodes, checkpointed)
    # ------------------------------------------------------------------------------------------------
    setup = build_routing_setup(cfg, gather_costs_across_processes if accelerator.num_processes > 1 else None)
    train_tasks, test_tasks, cards, env, normalizer = (setup.train_tasks, setup.test_tasks, setup.cards, setup.env,
                                                       setup.normalizer)
    model_pool, data_fingerprint = setup.model_pool, setup.data_fingerprint

    # ------------------------------------------------------------------------------------------------
    # 4. Models: actor, critic (separate trunk + value head), frozen reference; LoRA optional
    # ------------------------------------------------------------------------------------------------
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seed_for_model_init(cfg.run.seed)
    dtype = DTYPES[cfg.model.dtype]
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.policy, revision=cfg.model.revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    actor = AutoModelForCausalLM.from_pretrained(cfg.model.policy, revision=cfg.model.revision, dtype=dtype)
    reference = AutoModelForCausalLM.from_pretrained(cfg.model.policy, revision=cfg.model.revision, dtype=dtype)
    reference.requires_grad_(False).eval()
    reference_digest = parameter_digest(reference)  # checked at the end: the reference must never move
    critic = build_value_model(cfg.model.policy, dtype=dtype, revision=cfg.model.revision)
    if cfg.lora.enabled:
        from peft import get_peft_model

        actor = get_peft_model(actor, cfg.lora.peft_config())
        critic.trunk = get_peft_model(critic.trunk, cfg.lora.peft_config(task_type=None))  # value head: fully trained
    templates = {}
    prompt_tokens = {}
    for task in train_tasks:
        raw = env.prompt_for(task)
        templates[raw] = templated_prompt(tokenizer, raw, cfg.model.use_chat_template)
        prompt_tokens[raw] = tokenizer(templates[raw], add_special_tokens=False)["input_ids"]
    longest = max(len(ids) for ids in prompt_tokens.values())
    if longest > cfg.rl.max_prompt_tokens:
        raise ConfigError(f"rl.max_prompt_tokens={cfg.rl.max_prompt_tokens} but the longest training prompt has "
                          f"{longest} tokens; raise rl.max_prompt_tokens (or shorten the pool descriptions).")

    # ------------------------------------------------------------------------------------------------
    # 5. Optimizers and LR schedules (one optimizer step per mini-batch, for each of actor and critic)
    # ------------------------------------------------------------------------------------------------
    total_ppo_steps = cfg.run.max_optimizer_steps if cfg.run.max_optimizer_steps is not None else \
        cfg.run.epochs * math.ceil(len(train_tasks) / cfg.rl.rollout_batch_size)
    updates_per_step = cfg.rl.ppo_epochs * (cfg.rl.rollout_batch_size // cfg.rl.mini_batch_size)
    actor_optimizer = build_optimizer([p for p in actor.parameters() if p.requires_grad], cfg.optim)
    critic_optimizer = build_optimizer([p for p in critic.parameters() if p.requires_grad],
                                       dataclasses.replace(cfg.optim, lr=cfg.rl.critic_lr))
    actor_scheduler = build_lr_scheduler(actor_optimizer, cfg.optim, total_ppo_steps * updates_per_step)
    critic_scheduler = build_lr_scheduler(critic_optimizer, cfg.optim, total_ppo_steps * updates_per_step)
    seed_for_training(cfg.run.seed, accelerator)
    # One model per prepare call: FSDP2 shards one model (with its optimizer) per call. Under FSDP2 the
    # reference is sharded too (sharded_models.place_frozen_model); its forward passes are then collectives,
    # which is fine: every process scores the same number of micro-batches.
    actor, actor_optimizer, actor_scheduler = accelerator.prepare(actor, actor_optimizer, actor_scheduler)
    critic, critic_optimizer, critic_scheduler = accelerator.prepare(critic, critic_optimizer, critic_scheduler)
    reference = place_frozen_model(reference, accelerator)
    accelerator.register_for_checkpointing(normalizer)  # the cost window is part of the exact resume

    # ------------------------------------------------------------------------------------------------
    # 6. Resume: models, optimizers, schedules, RNG, cost window, step counter
    # ------------------------------------------------------------------------------------------------
    ppo_step, state = 0, None
    if resume_from is not None:
        checkpointing.check_resume_compatible(
            resumed_state, recipe=RECIPE, world_size=accelerator.num_processes,
            micro_batch_size=cfg.run.micro_batch_size, gradient_accumulation_steps=cfg.run.gradient_accumulation_steps,
            data_fingerprint=data_fingerprint, where=resume_from)
        state = checkpointing.load_checkpoint(accelerator, resume_from)
        ppo_step = state.optimizer_step
        accelerator.print(f"resumed from {resume_from} (PPO step {ppo_step})")
    guard = nan_guard.guard_for_run(cfg.run.max_consecutive_nonfinite_steps, state)

    def trainer_state() -> checkpointing.TrainerState:
        # optimizer_step counts PPO steps (rollout + updates); tasks are drawn per step, so the step is the position.
        return checkpointing.TrainerState(
            recipe=RECIPE, optimizer_step=ppo_step, epoch=0, batches_done_in_epoch=ppo_step,
            world_size=accelerator.num_processes, micro_batch_size=cfg.run.micro_batch_size,
            gradient_accumulation_steps=cfg.run.gradient_accumulation_steps, data_fingerprint=data_fingerprint,
            tracking_run_id=tracking_run_id, seed=cfg.run.seed, skipped_nonfinite_steps=guard.skipped_steps,
            consecutive_nonfinite_steps=guard.consecutive_skipped_steps)

    # ------------------------------------------------------------------------------------------------
    # 7. PPO loop
    # ------------------------------------------------------------------------------------------------
    unwrapped_actor = accelerator.unwrap_model(actor)
    policy = make_lm_policy(unwrapped_actor, tokenizer, templates, accelerator.device, GenerationSettings(
        max_new_tokens=cfg.rl.max_new_tokens, micro_batch_size=cfg.run.micro_batch_size,
        token_budget=cfg.rl.max_prompt_tokens + cfg.rl.max_response_tokens - cfg.rl.max_new_tokens,
        temperature=cfg.rl.temperature, top_p=cfg.rl.top_p))
    progress = tqdm(total=total_ppo_steps, initial=ppo_step, desc=RECIPE, unit="step",
                    disable=not (accelerator.is_main_process and cfg.run.progress_bar))
    history: list[dict] = []
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
        if cfg.checkpoint.every_optimizer_steps and ppo_step % cfg.checkpoint.every_optimizer_steps == 0:
            checkpointing.save_checkpoint(accelerator, run_dir, trainer_state(), keep_last=cfg.checkpoint.keep_last)
        faults.maybe_hang(run_dir, ppo_step, accelerator.process_index)
        if nan_guard.must_stop(guard):
            saved = checkpointing.save_checkpoint(accelerator, run_dir, trainer_state(),
                                                  keep_last=cfg.checkpoint.keep_last)
            progress.close()
            finish_tracking(accelerator)
            raise nan_guard.stop_error(guard, ppo_step, saved)
    progress.close()
    loop_seconds = time.perf_counter() - loop_started

    # ------------------------------------------------------------------------------------------------
    # 8. Export (main process): policy/ (save_pretrained + tokenizer), value head, pool config, manifest
    # ------------------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if parameter_digest(reference) != reference_digest:
        raise RuntimeError("the frozen reference model changed during training; the KL penalty was measured "
                           "against a moving target.")
    actor_digests = parameter_digests(accelerator, actor)
    if len(set(actor_digests)) != 1:
        raise RuntimeError(f"processes ended with different actor weights (sha256 per process: {actor_digests}); "
                           f"data-parallel training went out of sync.")
    # Whole weights on the main process: under FSDP2 a gather (a collective, so every process calls it).
    sharded = is_fsdp(accelerator)
    actor_state = full_state_dict(accelerator, actor) if sharded else None
    critic_state = full_state_dict(accelerator, critic) if sharded else None
    export_dir = export_dir_for(cfg.run, cfg.export, RECIPE)
    throughput = {"train_episodes": episodes_seen * accelerator.num_processes, "train_loop_seconds": loop_seconds,
                  "peak_accelerator_memory_bytes": peak_accelerator_memory_bytes()}
    result = {"export_dir": str(export_dir), "run_dir": str(run_dir), "ppo_steps": ppo_step, "history": history,
              "tracking": tracking.to_dict(), "throughput": throughput, "reference_sha256": reference_digest,
              "actor_sha256_per_process": actor_digests}
    if accelerator.is_main_process:
        if sharded:
            policy_model = rebuild_policy(cfg, actor_state, dtype)
            value_head_state = {k.removeprefix("value_head."): v for k, v in critic_state.items()
                                if k.startswith("value_head.")}
        else:
            policy_model = unwrapped_actor.merge_and_unload() if cfg.lora.enabled else unwrapped_actor
            value_head_state = accelerator.unwrap_model(critic).value_head.state_dict()
        model_config = {"router_type": RECIPE, "model_pool": model_pool, "policy_dir": POLICY_DIR,
                        "pool_config": POOL_CONFIG_FILE, "base_policy": cfg.model.policy,
                        "base_revision": cfg.model.revision, "use_chat_template": cfg.model.use_chat_template,
                        "value_head_hidden_size": int(value_head_state["weight"].shape[1]),
                        "generation": {"temperature": cfg.rl.temperature, "top_p": cfg.rl.top_p,
                                       "max_new_tokens": cfg.rl.max_new_tokens,
                                       "stop_strings": [f"</{t}>" for t in STOP_TAGS]},
                        "env": config_to_dict(cfg.env), "reward": config_to_dict(cfg.reward)}
        manifest = build_manifest(
            recipe=RECIPE, router_type=RECIPE, resolved_config=resolved_config, model_pool=model_pool,
            encoder={"id": None, "revision": None, "dim": None}, repo_dir=REPO_DIR, tracking=tracking.to_dict(),
            data={"tasks": cfg.tasks.path, "train_tasks": len(train_tasks), "test_tasks": len(test_tasks),
                  "fingerprint": data_fingerprint,
                  "prices_usd_per_million_tokens": {c.name: [c.input_price, c.output_price] for c in cards}},
            training={**world_description(accelerator), "ppo_steps": ppo_step, "total_ppo_steps": total_ppo_steps,
                      "resumed_from": str(resume_from) if resume_from else None, "history": history,
                      "skipped_nonfinite_updates": guard.skipped_steps, "reference_sha256": reference_digest,
                      "actor_sha256_per_process": actor_digests, **throughput},
            metrics={k: history[-1][k] for k in ("reward", "format_ok", "outcome", "calls_per_episode")}
            if history else {})
        # One atomic export: policy/ and pool_config.json are written into export_router's temporary directory,
        # so a crash while saving the policy leaves the previous export as it was.
        export_router(export_dir, {f"value_head.{k}": v for k, v in value_head_state.items()}, model_config,
                      manifest, extra_files=lambda directory: write_policy_files(directory, policy_model, tokenizer,
                                                                                 cfg.pool))
        registered = register_run_export(cfg.export, export_dir, cfg.run.output_dir)
        if registered is not None:
            print(f"registered checkpoint: {registered}")
        print(f"checkpoint: {export_dir}")
        print(f"step checkpoints: {run_dir}")
        print(tracking.describe(), flush=True)
    finish_tracking(accelerator)
    return result


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


def write_policy_files(directory: Path, policy_model, tokenizer, pool_cfg: PoolConfig) -> None:
    """policy/ (save_pretrained, safetensors, + the tokenizer) and pool_config.json, written into `directory`.

    export_router's `extra_files`: `directory` is its temporary directory, and the manifest it writes
    afterwards lists these files with their sha256 (the registry copies and verifies exactly that set).
    """
    policy_model.save_pretrained(directory / POLICY_DIR, safe_serialization=True)
    tokenizer.save_pretrained(directory / POLICY_DIR)
    (directory / POOL_CONFIG_FILE).write_text(json.dumps(config_to_dict(pool_cfg), indent=2, sort_keys=True) + "\n",
                                              encoding="utf-8")


if __name__ == "__main__":
    run_recipe(main)
