"""GRPO for Router-R1 through TRL's `GRPOTrainer`: a DEVIATION from the paper, which trains with PPO.

    rollout_func = make_rollout_func(env, tokenizer, tasks_by_prompt, settings, use_chat_template, max_response_tokens)
    trainer = build_grpo_trainer(policy, tokenizer, args, prompts, rollout_func, normalizer)
    train_grpo(trainer, resume_from)

Router-R1 (arXiv 2506.09033) optimises its policy with PPO (critic, GAE, KL in the reward): that is
training/train_router_r1.py. training/train_router_r1_grpo.py swaps the optimiser for GRPO (Shao et al.
2024, DeepSeekMath): no critic; each prompt is rolled out `num_generations` times and an episode's
advantage is its reward minus its group's mean (divided by the group's std with scale_rewards=group);
the KL to the frozen reference is a loss term (TRL's k3 estimator, weight `beta`), not a reward term.
Everything else is shared with PPO: the tasks, the candidate pool, `RoutingEnv`'s multi-turn episodes,
the reward (format -1, EM, cost; routerforge/rl/reward.py) and the generation (routerforge/rl/generation.py).

How the episodes reach TRL (TRL 1.16 `rollout_func`, grpo_trainer.py `_generate`):

* TRL's `RepeatSampler` already repeats every prompt `num_generations` times in the slice it hands to
  `rollout_func(prompts, trainer)`, so the function runs ONE episode per entry it receives.
* `prompt_ids`: the chat-templated prompt's tokens; `completion_ids`: the episode's response, policy and
  env segments in order (`Rollout.token_ids_and_mask`), cut at `max_response_tokens` like the PPO collation.
* `env_mask`: 1 on tokens the policy sampled, 0 on the ``<information>`` blocks the environment inserted.
  TRL multiplies it into the loss mask, so inserted tokens carry no policy loss, KL or entropy
  (Router-R1's state masking). An episode with no token at all (EOS first) gets one EOS placeholder with
  env_mask 0: TRL reads every completion's last token, and the placeholder carries no loss.
* `logprobs`: None. Without vLLM, TRL's own transformers-generate path returns None too ("not used in this
  case"): the sampling log-probs only feed vLLM's importance-sampling correction and `off_policy_mask_threshold`,
  neither of which this path enables; the old log-probs TRL needs come from its own forward pass.
* Extra fields (`episode_reward`, `format_ok`, `outcome`, `calls`, `cost_usd`) are forwarded to the reward
  function `episode_reward`, which returns the env's reward as is and logs the others as metrics.

TRL counts every completion as "clipped" in `completions/clipped_ratio`: episodes end at ``</answer>`` (a stop
string), not at an EOS token, and TRL calls a completion that does not end in EOS truncated. The metric is
meaningless here; `mask_truncated_completions` would drop every episode, so it stays off.

Limits: FSDP is refused (generation under FSDP needs TRL's private full-parameter gathering); multi-process
DDP and DeepSpeed go through TRL's `unwrap_model_for_generation` but are not tested here (CPU, 1 process).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from routerforge.config import doc
from routerforge.errors import CheckpointError, ConfigError
from routerforge.rl.env import Rollout, RoutingEnv
from routerforge.rl.generation import GenerationSettings, make_lm_policy, templated_prompt
from routerforge.rl.reward import CostNormalizer
from routerforge.rl.tasks import RoutingTask
from routerforge.train.accelerator_setup import check_launched_world
from routerforge.train.run_config import CheckpointConfig, OptimConfig, RunConfig, TrackingConfig
from routerforge.train.tracking import TrackingRun, resolve_wandb_mode

GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo")
SCALE_REWARDS = ("group", "batch", "none")
EPISODE_REWARD_FIELD = "episode_reward"
COST_WINDOW_FILE = "cost_window_rank{rank}.json"
HF_CHECKPOINT_PREFIX = "checkpoint-"
HF_LR_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


@dataclass(frozen=True)
class GRPOBlockConfig:
    """GRPO hyperparameters (training/train_router_r1_grpo.py; a deviation from Router-R1, which uses PPO)."""

    num_generations: int = doc("episodes per prompt, the GRPO group whose mean reward is the baseline (count, >= 2)",
                               default=8)
    rollout_batch_size: int = doc("episodes per generation round over all processes (episodes; a multiple of "
                                  "grpo.num_generations and of grpo.mini_batch_size): rollout_batch_size / "
                                  "num_generations prompts per round", default=64)
    mini_batch_size: int = doc("episodes per optimizer update over all processes (episodes); run.micro_batch_size "
                               "episodes go through each forward pass", default=32)
    num_iterations: int = doc("passes over each generation round (count; GRPO's mu, PPO's epochs)", default=1)
    beta: float = doc("weight of the KL(actor || reference) loss term (unitless; TRL's k3 estimator; 0 loads no "
                      "reference model; 0.001 matches the paper's PPO KL coefficient)", default=0.001)
    loss_type: str = doc(f"TRL loss aggregation: {', '.join(GRPO_LOSS_TYPES)} (dapo: token mean over the "
                         f"accumulated batch, no length bias; grpo: per-sequence mean)", default="dapo")
    epsilon: float = doc("clip range of the probability ratio, lower side (unitless; PPO/GRPO: 0.2)", default=0.2)
    epsilon_high: float | None = doc("clip range, upper side (unitless; DAPO: 0.28); None: grpo.epsilon",
                                     default=None)
    entropy_coef: float = doc("weight of the entropy bonus on policy tokens (unitless; the PPO path's rl.entropy_coef, "
                              "veRL default 0.001; TRL's entropy_coef)", default=0.001)
    scale_rewards: str = doc("advantage scaling: group (divide by the group's reward std, GRPO), batch, or none "
                             "(Dr. GRPO)", default="group")
    max_new_tokens: int = doc("tokens the policy may generate per turn (tokens; Router-R1: 500)", default=500)
    max_prompt_tokens: int = doc("longest prompt accepted (tokens); a longer one is an error", default=4096)
    max_response_tokens: int = doc("longest response trained on, policy + inserted tokens (tokens); longer episodes "
                                   "are cut there (the reward is still the whole episode's)", default=4096)
    temperature: float = doc("sampling temperature of the rollouts (> 0)", default=1.0)
    top_p: float = doc("nucleus sampling mass of the rollouts (0-1]", default=1.0)
    gradient_checkpointing: bool = doc("recompute activations in the backward pass (saves memory, ~30% slower)",
                                       default=True)

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError(f"grpo.num_generations must be >= 2 (a group needs a baseline), got "
                             f"{self.num_generations}")
        for name in ("rollout_batch_size", "mini_batch_size", "num_iterations", "max_new_tokens",
                     "max_prompt_tokens", "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_batch_size % self.num_generations:
            raise ValueError(f"grpo.rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"grpo.num_generations ({self.num_generations}): a round holds whole groups")
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError(f"grpo.rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"grpo.mini_batch_size ({self.mini_batch_size})")
        for name in ("beta", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"grpo.{name} must be >= 0, got {getattr(self, name)}")
        if self.loss_type not in GRPO_LOSS_TYPES:
            raise ValueError(f"grpo.loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, got '{self.loss_type}'")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"grpo.scale_rewards must be one of {', '.join(SCALE_REWARDS)}, "
                             f"got '{self.scale_rewards}'")
        if not self.epsilon > 0 or (self.epsilon_high is not None and not self.epsilon_high > 0):
            raise ValueError(f"grpo.epsilon and grpo.epsilon_high must be > 0, got {self.epsilon}, "
                             f"{self.epsilon_high}")
        if not self.temperature > 0:
            raise ValueError(f"grpo.temperature must be > 0 (GRPO needs diverse samples), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"grpo.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens > self.max_response_tokens:
            raise ValueError(f"grpo.max_new_tokens ({self.max_new_tokens}) must be <= grpo.max_response_tokens "
                             f"({self.max_response_tokens})")

    def generation_settings(self, micro_batch_size: int) -> GenerationSettings:
        """The rollout generation: the same token budget rule as the PPO path."""
        return GenerationSettings(max_new_tokens=self.max_new_tokens, micro_batch_size=micro_batch_size,
                                  token_budget=self.max_prompt_tokens + self.max_response_tokens - self.max_new_tokens,
                                  temperature=self.temperature, top_p=self.top_p)


def gradient_accumulation_for(grpo: GRPOBlockConfig, run: RunConfig, world_size: int) -> int:
    """Micro-batches per optimizer update; ConfigError naming the key when the batch sizes do not divide."""
    if run.gradient_accumulation_steps != 1:
        raise ConfigError("run.gradient_accumulation_steps must be 1 for router_r1 GRPO: it follows from "
                          "grpo.mini_batch_size / (run.micro_batch_size x processes); set those instead.")
    per_update = run.micro_batch_size * world_size
    if grpo.mini_batch_size % per_update:
        raise ConfigError(f"grpo.mini_batch_size={grpo.mini_batch_size} is not a multiple of run.micro_batch_size "
                          f"({run.micro_batch_size}) x {world_size} processes; each process runs whole micro-batches.")
    return grpo.mini_batch_size // per_update


# ----------------------------------------------------------------------------------------------------
# Rollouts and reward
# ----------------------------------------------------------------------------------------------------
def make_rollout_func(env: RoutingEnv, tokenizer, tasks_by_prompt: Mapping[str, RoutingTask],
                      settings: GenerationSettings, use_chat_template: bool, max_response_tokens: int
                      ) -> Callable[[list[str], object], dict]:
    """TRL's `rollout_func(prompts, trainer)`: one `RoutingEnv` episode per prompt entry (see the module docstring).

    tasks_by_prompt: raw prompt (`env.prompt_for(task)`, the dataset's "prompt" column) -> its task.
    """
    from trl.models.utils import unwrap_model_for_generation

    def rollout_func(prompts: list[str], trainer) -> dict:
        unknown = [p for p in prompts if p not in tasks_by_prompt]
        if unknown:
            raise RuntimeError(f"rollout_func got {len(unknown)} prompt(s) that are not training tasks; the GRPO "
                               f"dataset must hold env.prompt_for(task) strings")
        templates = {p: templated_prompt(tokenizer, p, use_chat_template) for p in set(prompts)}
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
                                         ) as model:
            was_training = model.training
            model.eval()  # no dropout while sampling, as the PPO path
            try:
                policy = make_lm_policy(model, tokenizer, templates, trainer.accelerator.device, settings)
                rollouts = env.rollout_many([tasks_by_prompt[p] for p in prompts], policy)
            finally:
                model.train(was_training)
        return trl_rollout_fields(rollouts, [templates[p] for p in prompts], tokenizer, max_response_tokens)

    return rollout_func


def trl_rollout_fields(rollouts: list[Rollout], conditioned_prompts: list[str], tokenizer, max_response_tokens: int
                       ) -> dict:
    """Finished episodes -> the dict TRL's `rollout_func` returns (see the module docstring for each field).

    conditioned_prompts: the text each episode's policy was conditioned on (the chat-templated prompt).
    """
    special_ids = [i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None]
    out: dict[str, list | None] = {"prompt_ids": [], "completion_ids": [], "env_mask": [], EPISODE_REWARD_FIELD: [],
                                   "format_ok": [], "outcome": [], "calls": [], "cost_usd": []}
    for conditioned, rollout in zip(conditioned_prompts, rollouts, strict=True):
        ids, mask = rollout.token_ids_and_mask(tokenizer)
        ids, mask = ids[:max_response_tokens], mask[:max_response_tokens]
        if not ids:  # TRL reads each completion's last token; the placeholder carries no loss (mask 0)
            ids, mask = special_ids[:1], [0]
        out["prompt_ids"].append(tokenizer(conditioned, add_special_tokens=False)["input_ids"])
        out["completion_ids"].append(ids)
        out["env_mask"].append(mask)
        out[EPISODE_REWARD_FIELD].append(float(rollout.reward.reward))
        out["format_ok"].append(float(rollout.reward.format_ok))
        out["outcome"].append(float(rollout.reward.outcome))
        out["calls"].append(float(rollout.executed_calls))
        out["cost_usd"].append(float(rollout.cost_usd))
    out["logprobs"] = None  # TRL uses sampling log-probs only with vLLM (module docstring)
    return out


def episode_reward(completions: list, episode_reward: list[float], log_metric: Callable | None = None,
                   **fields) -> list[float]:
    """TRL reward function: the reward `RoutingEnv` computed for each episode (format -1, EM, cost), unchanged.

    The other rollout fields are logged as batch means (TRL's `log_metric`): format_ok, outcome, calls, cost_usd.
    """
    if len(episode_reward) != len(completions):
        raise RuntimeError(f"{len(episode_reward)} episode rewards for {len(completions)} completions")
    if log_metric is not None:
        for name in ("format_ok", "outcome", "calls", "cost_usd"):
            if name in fields:
                log_metric(f"episode/{name}", sum(fields[name]) / max(len(fields[name]), 1))
    return [float(r) for r in episode_reward]


# ----------------------------------------------------------------------------------------------------
# TRL config, tracking, trainer, resume
# ----------------------------------------------------------------------------------------------------
def configure_tracking(tracking: TrackingConfig, run_dir: Path, run_name: str) -> tuple[list[str], TrackingRun]:
    """HF Trainer's `report_to` for our tracking block, and where it writes (for the manifest).

    W&B runs offline unless a key and a network are there (routerforge/train/tracking.py); HF's WandbCallback
    reads the WANDB_* environment, so it is set here. The W&B run id is kept in the run directory and reused
    on resume. TensorBoard writes under <run_dir>/tensorboard.
    """
    if tracking.report_to == "none":
        return [], TrackingRun("none", None, None, None)
    if tracking.report_to == "tensorboard":
        local = run_dir / "tensorboard"
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(local)
        return ["tensorboard"], TrackingRun("tensorboard", run_name, None, str(local))
    from routerforge.train.tracking import new_run_id

    id_file = run_dir / "wandb_run_id.txt"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not id_file.is_file():
        id_file.write_text(new_run_id() + "\n", encoding="utf-8")
    run_id = id_file.read_text(encoding="utf-8").strip()
    mode = resolve_wandb_mode(tracking)
    os.environ.update({"WANDB_MODE": mode, "WANDB_DIR": str(run_dir), "WANDB_PROJECT": tracking.project,
                       "WANDB_RUN_ID": run_id, "WANDB_RESUME": "allow"})
    if tracking.entity:
        os.environ["WANDB_ENTITY"] = tracking.entity
    return ["wandb"], TrackingRun("wandb", run_id, mode, str(run_dir / "wandb"))


def build_grpo_args(grpo: GRPOBlockConfig, run: RunConfig, optim: OptimConfig, checkpoint: CheckpointConfig,
                    tracking: TrackingConfig, report_to: list[str], run_dir: Path, world_size: int,
                    model_init_kwargs: dict | None = None):
    """TRL's `GRPOConfig` from our blocks. Steps are optimizer updates (TRL/HF `global_step`).

    One generation round of grpo.rollout_batch_size episodes feeds rollout_batch_size / mini_batch_size x
    num_iterations optimizer updates; checkpoints are HF's <run_dir>/checkpoint-N directories.
    """
    from trl import GRPOConfig

    if optim.name == "adam" and optim.weight_decay > 0:
        raise ConfigError("optim.name=adam with optim.weight_decay > 0 (an L2 penalty) has no HF Trainer optimizer; "
                          "use optim.name=adamw for GRPO (or weight_decay=0, where adam equals adamw).")
    if run.mixed_precision == "fp16":
        raise ConfigError("run.mixed_precision=fp16 is not supported by the GRPO path; use bf16 or no.")
    accumulation = gradient_accumulation_for(grpo, run, world_size)
    # Without an accelerator HF's TrainingArguments form a multi-process world only with use_cpu (and gloo);
    # otherwise every process launched by `accelerate launch` / torchrun trains alone (world size 1), as
    # build_accelerator explains for the other recipes. build_grpo_trainer checks the world it formed.
    cpu = not torch.accelerator.is_available()
    return GRPOConfig(
        use_cpu=cpu, ddp_backend="gloo" if cpu and world_size > 1 else None,
        output_dir=str(run_dir), seed=run.seed, data_seed=run.seed,
        max_steps=run.max_optimizer_steps if run.max_optimizer_steps is not None else -1,
        num_train_epochs=run.epochs, per_device_train_batch_size=run.micro_batch_size,
        gradient_accumulation_steps=accumulation, generation_batch_size=grpo.rollout_batch_size,
        num_generations=grpo.num_generations, num_iterations=grpo.num_iterations, beta=grpo.beta,
        loss_type=grpo.loss_type, epsilon=grpo.epsilon, epsilon_high=grpo.epsilon_high,
        scale_rewards=grpo.scale_rewards, entropy_coef=grpo.entropy_coef,
        max_completion_length=grpo.max_response_tokens, temperature=grpo.temperature, top_p=grpo.top_p,
        learning_rate=optim.lr, weight_decay=optim.weight_decay, adam_beta1=optim.betas[0],
        adam_beta2=optim.betas[1], adam_epsilon=optim.eps, optim="adamw_torch",
        max_grad_norm=optim.max_grad_norm,  # 0: HF Trainer does not clip
        lr_scheduler_type=HF_LR_SCHEDULES[optim.lr_schedule],
        # transformers reads a float in [0, 1) as a fraction of the run's steps, an int as steps
        warmup_steps=optim.warmup_fraction if optim.warmup_fraction is not None else optim.warmup_optimizer_steps,
        bf16=run.mixed_precision == "bf16", fp16=False,
        activation_checkpointing=grpo.gradient_checkpointing,
        save_strategy="steps" if checkpoint.every_optimizer_steps else "no",
        save_steps=max(checkpoint.every_optimizer_steps, 1), save_total_limit=checkpoint.keep_last,
        logging_steps=tracking.log_every_optimizer_steps, report_to=report_to, run_name=run.name,
        disable_tqdm=not run.progress_bar, model_init_kwargs=model_init_kwargs,
        shuffle_dataset=True, remove_unused_columns=False,
    )


def save_cost_window_callback(normalizer: CostNormalizer):
    """A TrainerCallback that writes this process's cost window into every HF checkpoint (exact resume)."""
    from transformers import TrainerCallback

    class _SaveCostWindow(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            from accelerate import PartialState

            directory = Path(args.output_dir) / f"{HF_CHECKPOINT_PREFIX}{state.global_step}"
            if directory.is_dir():
                path = directory / COST_WINDOW_FILE.format(rank=PartialState().process_index)
                path.write_text(json.dumps(normalizer.state_dict()) + "\n", encoding="utf-8")

    return _SaveCostWindow()


def load_cost_window(normalizer: CostNormalizer, checkpoint: Path, rank: int) -> None:
    path = Path(checkpoint) / COST_WINDOW_FILE.format(rank=rank)
    if not path.is_file():
        raise CheckpointError(f"{path}: no cost window for process {rank} in this checkpoint; resume with the same "
                              f"number of processes, from a checkpoint this recipe wrote.")
    normalizer.load_state_dict(json.loads(path.read_text(encoding="utf-8")))


def resolve_grpo_resume(resume: str, run_dir: Path) -> Path | None:
    """never | auto | <path> over HF Trainer's <run_dir>/checkpoint-N directories; None: start fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    newest = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    if resume == "never":
        if newest is not None:
            raise CheckpointError(f"{run_dir} already holds checkpoints (newest: {Path(newest).name}); pass "
                                  f"resume=auto to continue that run, or set run.name to start a new one.")
        return None
    if resume == "auto":
        return Path(newest) if newest is not None else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"resume={resume}: not an HF Trainer checkpoint (no trainer_state.json); use "
                              f"resume=auto or a {run_dir}/checkpoint-N directory.")
    return path


def build_grpo_trainer(policy: str, tokenizer, args, prompts: list[str], rollout_func, normalizer: CostNormalizer,
                       peft_config=None):
    """TRL's GRPOTrainer over `prompts` (the dataset's "prompt" column), rewarded by `episode_reward`.

    policy: Hub id or directory; TRL loads it (and, when grpo.beta > 0 without LoRA, the reference) with
    `args.model_init_kwargs` (dtype, revision).
    """
    from datasets import Dataset
    from trl import GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL 1.x; we know
    trainer = GRPOTrainer(model=policy, reward_funcs=[episode_reward], args=args,
                          train_dataset=Dataset.from_dict({"prompt": list(prompts)}), processing_class=tokenizer,
                          rollout_func=rollout_func, peft_config=peft_config,
                          callbacks=[save_cost_window_callback(normalizer)])
    if trainer.is_fsdp_enabled or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ConfigError("router_r1 GRPO does not support FSDP (its multi-turn generation needs the full "
                          "parameters; TRL gathers them only through private API); use DDP or DeepSpeed "
                          "(algorithm=ppo runs under FSDP2).")
    check_launched_world(trainer.accelerator.num_processes, who="the GRPO trainer")
    return trainer


def train_grpo(trainer, resume_from: Path | None, normalizer: CostNormalizer):
    """`trainer.train`, resuming (model, optimizer, schedule, RNG, step, cost window) from `resume_from`."""
    if resume_from is not None:
        load_cost_window(normalizer, resume_from, trainer.accelerator.process_index)
    return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
