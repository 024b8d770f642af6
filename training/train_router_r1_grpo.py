"""Train a Router-R1 policy with GRPO through TRL's GRPOTrainer: a DEVIATION from the paper (Router-R1 uses PPO).

    python training/train_router_r1_grpo.py --config configs/router_r1_grpo/tiny.yaml model.policy=<tiny model dir>
    accelerate launch --config_file launch/accelerate/deepspeed_zero3.yaml training/train_router_r1_grpo.py \
        --config configs/router_r1_grpo/qwen2_5_3b.yaml
    ... resume=auto                                   # continue from the newest checkpoint-N of the run

The paper's optimiser is PPO: training/train_router_r1.py. This recipe trains the same policy on the same
tasks, candidate pool, environment, reward and masks (routerforge/rl/policy_run.py, shared with PPO), with no
critic: each prompt is rolled out grpo.num_generations times and an episode's advantage is its reward minus
its group's mean (Shao et al. 2024, DeepSeekMath); the KL to the frozen reference is a loss term.
routerforge/rl/grpo.py connects RoutingEnv's multi-turn episodes to TRL (env tokens masked by env_mask).
TRL's trainer owns the accelerator, the tracker and the checkpoints (HF Trainer's <run_dir>/checkpoint-N); the
export is PPO's minus the value head (model.safetensors holds no tensor).

Reads top to bottom (main() at the end calls the sections in order; routerforge/train/lifecycle.py holds the
export tail, shared by every recipe):
  1. config   2. run dir, resume, tracking   3. tasks, pool, environment   4. prompts and TRL's trainer
  5. training (TRL)   6. export (main process): the policy (save_pretrained), the pool config, the manifest

Exit status: 0 trained and exported; 2 a user error (one line).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from routerforge.config import doc
from routerforge.errors import ConfigError
from routerforge.registry.register import register_run_export
from routerforge.rl.env import EnvConfig
from routerforge.rl.generation import templated_prompt
from routerforge.rl.grpo import (
    GRPOBlockConfig,
    build_grpo_args,
    build_grpo_trainer,
    configure_tracking,
    make_rollout_func,
    resolve_grpo_resume,
    train_grpo,
)
from routerforge.rl.policy_run import (
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
from routerforge.train.accelerator_setup import peak_accelerator_memory_bytes
from routerforge.train.consistency import agreed_parameter_digests
from routerforge.train.entrypoint import run_recipe
from routerforge.train.lifecycle import NO_ENCODER, RunContext, context_for_trainer
from routerforge.train.run_config import (
    RESUME_HELP,
    CheckpointConfig,
    ExportConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    parse_recipe_args,
    run_dir_for,
)

REPO_DIR = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# 1. Config: shared blocks + model, lora, tasks (routerforge/rl/policy_run.py), pool, env, reward and grpo
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterR1GRPOConfig:
    # A config written for PPO (training/train_router_r1.py) carries an `rl` block this recipe does not read.
    RETIRED_KEYS = {"rl": "the rl block holds PPO's settings (training/train_router_r1.py); GRPO's are the grpo "
                          "block (routerforge/rl/grpo.py). Start from configs/router_r1_grpo/."}

    run: RunConfig = doc("run name, output dir, seed, length (run.max_optimizer_steps = optimizer updates), "
                         "micro_batch_size = episodes per forward pass",
                         default_factory=paper_run)
    model: RouterR1ModelConfig = doc("policy LM (the reference starts from it)", default_factory=RouterR1ModelConfig)
    lora: RouterR1LoraConfig = doc("LoRA on the policy", default_factory=RouterR1LoraConfig)
    tasks: RouterR1TaskConfig = doc("training questions", default_factory=RouterR1TaskConfig)
    pool: PoolConfig = doc("candidate models the policy can call (routerforge/rl/pool_config.py)",
                           default_factory=PoolConfig)
    env: EnvConfig = doc("episode limits (routerforge/rl/env.py)", default_factory=EnvConfig)
    reward: RewardConfig = doc("format / outcome / cost reward (routerforge/rl/reward.py)",
                               default_factory=RewardConfig)
    algorithm: str = doc("grpo (TRL's GRPOTrainer, group-mean baseline, no critic): a DEVIATION from Router-R1; "
                         "kept so that configs naming it load. PPO: training/train_router_r1.py", default="grpo")
    grpo: GRPOBlockConfig = doc("GRPO hyperparameters (routerforge/rl/grpo.py)", default_factory=GRPOBlockConfig)
    optim: OptimConfig = doc("policy optimizer (paper: AdamW, lr 1e-6)",
                             default_factory=paper_optim)
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = doc("checkpoints (every N optimizer updates)", default_factory=CheckpointConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)
    resume: str = doc(RESUME_HELP + " (HF Trainer's checkpoint-N directories)", default="never")

    def __post_init__(self) -> None:
        if self.algorithm != "grpo":
            raise ValueError(f"algorithm must be grpo, got '{self.algorithm}'; PPO (the paper's optimiser) is "
                             f"training/train_router_r1.py.")


# ----------------------------------------------------------------------------------------------------
# 4. Prompts (the dataset TRL samples from) and the trainer; TRL loads the policy (and the reference, beta > 0)
# ----------------------------------------------------------------------------------------------------
def build_trainer(cfg: RouterR1GRPOConfig, setup: RoutingSetup, run_dir: Path, report_to: list[str]):
    """(tokenizer, TRL's GRPOTrainer) over the training tasks' prompts (a repeated question is one prompt)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.policy, revision=cfg.model.revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tasks_by_prompt: dict[str, object] = {}
    for task in setup.train_tasks:
        tasks_by_prompt.setdefault(setup.env.prompt_for(task), task)
    longest = max(len(tokenizer(templated_prompt(tokenizer, p, cfg.model.use_chat_template),
                                add_special_tokens=False)["input_ids"]) for p in tasks_by_prompt)
    if longest > cfg.grpo.max_prompt_tokens:
        raise ConfigError(f"grpo.max_prompt_tokens={cfg.grpo.max_prompt_tokens} but the longest training prompt has "
                          f"{longest} tokens; raise grpo.max_prompt_tokens (or shorten the pool descriptions).")
    peft_config = cfg.lora.peft_config() if cfg.lora.enabled else None
    args = build_grpo_args(cfg.grpo, cfg.run, cfg.optim, cfg.checkpoint, cfg.tracking, report_to, run_dir,
                           int(os.environ.get("WORLD_SIZE", "1")),  # the trainer checks the world it forms
                           model_init_kwargs={"dtype": cfg.model.dtype, "revision": cfg.model.revision})
    rollout_func = make_rollout_func(setup.env, tokenizer, tasks_by_prompt, cfg.grpo.generation_settings(
        cfg.run.micro_batch_size), cfg.model.use_chat_template, cfg.grpo.max_response_tokens)
    trainer = build_grpo_trainer(cfg.model.policy, tokenizer, args, list(tasks_by_prompt), rollout_func,
                                 setup.normalizer, peft_config)
    return tokenizer, trainer


# ----------------------------------------------------------------------------------------------------
# 6. Export (main process): policy/, pool_config.json, config.json, manifest.json, an empty model.safetensors
# ----------------------------------------------------------------------------------------------------
def export(ctx: RunContext, trainer, tokenizer, setup: RoutingSetup, loop_seconds: float) -> dict:
    cfg: RouterR1GRPOConfig = ctx.cfg
    accelerator = ctx.accelerator
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    accelerator.wait_for_everyone()
    actor_digests = agreed_parameter_digests(accelerator, trainer.model, what="actor weights")
    throughput = {"train_loop_seconds": loop_seconds, "peak_accelerator_memory_bytes": peak_accelerator_memory_bytes()}
    result = ctx.result(optimizer_steps=trainer.state.global_step, history=history, throughput=throughput,
                        actor_sha256_per_process=actor_digests,
                        resumed_from=str(ctx.resume_from) if ctx.resume_from else None)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(trainer.model)
        policy_model = unwrapped.merge_and_unload() if cfg.lora.enabled else unwrapped
        last = history[-1] if history else {}
        # No value head: model.safetensors holds no tensor. policy/ + pool_config.json go in the same atomic write.
        ctx.export(
            {}, {**policy_router_config(cfg, setup.model_pool, {"temperature": cfg.grpo.temperature,
                                                                "top_p": cfg.grpo.top_p,
                                                                "max_new_tokens": cfg.grpo.max_new_tokens}),
                 "algorithm": "grpo"},
            model_pool=setup.model_pool, encoder=NO_ENCODER, register=register_run_export,
            data=task_data_facts(cfg, setup),
            training={"algorithm": "grpo (deviation from the paper's PPO)",
                      "optimizer_steps": trainer.state.global_step,
                      "resumed_from": str(ctx.resume_from) if ctx.resume_from else None, "history": history,
                      "actor_sha256_per_process": actor_digests, **throughput},
            metrics={k: last[key] for k, key in (("reward", "reward"), ("format_ok", "episode/format_ok"),
                                                 ("outcome", "episode/outcome"), ("calls_per_episode", "episode/calls"))
                     if key in last},
            extra_files=lambda directory: write_policy_files(directory, policy_model, tokenizer, cfg.pool))
    accelerator.wait_for_everyone()  # TRL's trainer ends its own tracking
    return result


def main(argv: list[str] | None = None) -> dict:
    # 1. Config
    cfg = parse_recipe_args(RouterR1GRPOConfig, argv, description=__doc__.splitlines()[0])
    # 2. Run directory, resume (HF Trainer's checkpoint-N), tracking (TRL's trainer builds the accelerator)
    run_dir = run_dir_for(cfg.run, RECIPE)
    resume_from = resolve_grpo_resume(cfg.resume, run_dir)
    report_to, tracking = configure_tracking(cfg.tracking, run_dir, cfg.run.name)
    # 3. Tasks, candidate pool, environment (each process's cost window goes into every checkpoint-N)
    setup = build_routing_setup(cfg)
    # 4. Prompts and TRL's trainer
    tokenizer, trainer = build_trainer(cfg, setup, run_dir, report_to)
    # 5. Training
    loop_started = time.perf_counter()
    train_grpo(trainer, resume_from, setup.normalizer)
    loop_seconds = time.perf_counter() - loop_started
    # 6. Export
    ctx = context_for_trainer(cfg, RECIPE, REPO_DIR, trainer.accelerator, tracking, resume_from)
    return export(ctx, trainer, tokenizer, setup, loop_seconds)


if __name__ == "__main__":
    run_recipe(main)
