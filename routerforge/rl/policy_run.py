"""What the two Router-R1 recipes share (training/train_router_r1.py: PPO, the paper's optimiser;
training/train_router_r1_grpo.py: GRPO through TRL, a deviation): the policy, LoRA and task config blocks, the
tasks + candidate pool + environment a run trains on, and the export's policy files and descriptions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from routerforge.config import config_to_dict, doc
from routerforge.errors import DataError
from routerforge.rl.env import RoutingEnv
from routerforge.rl.pool_config import PoolConfig, resolve_model_cards
from routerforge.rl.pools import build_pool
from routerforge.rl.protocol import STOP_TAGS
from routerforge.rl.reward import CostNormalizer
from routerforge.rl.tasks import GSM8K_RESPONSES, gsm8k_tasks_from_routellm, split_tasks
from routerforge.train.run_config import OptimConfig, RunConfig

RECIPE = "router_r1"  # both recipes export this router type, to <output_dir>/router_r1/<run name>/
TASK_SOURCES = ("gsm8k_routellm",)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
POLICY_DIR = "policy"
POOL_CONFIG_FILE = "pool_config.json"


def paper_run() -> RunConfig:
    """Default run block of both recipes: 225 optimizer steps (the paper's), 8 episodes per forward pass."""
    return RunConfig(name="router_r1", epochs=1, max_optimizer_steps=225, micro_batch_size=8)


def paper_optim() -> OptimConfig:
    """Default policy optimizer of both recipes: the paper's AdamW at lr 1e-6, weight decay 0.01, clip 1.0."""
    return OptimConfig(name="adamw", lr=1e-6, weight_decay=0.01, max_grad_norm=1.0)


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


# ----------------------------------------------------------------------------------------------------
# Tasks, candidate pool, environment: what both recipes' section 3 builds
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


def build_routing_setup(cfg, cost_gather=None) -> RoutingSetup:
    """`cfg`: either Router-R1 recipe's config (its tasks, pool, reward and env blocks)."""
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


def policy_router_config(cfg, model_pool: list[str], generation: dict) -> dict:
    """config.json of a Router-R1 export (both algorithms): where the policy and pool config are, the base
    policy, how to generate, and the environment and reward it was trained with. `cfg` is either recipe's config."""
    return {"router_type": RECIPE, "model_pool": model_pool, "policy_dir": POLICY_DIR, "pool_config": POOL_CONFIG_FILE,
            "base_policy": cfg.model.policy, "base_revision": cfg.model.revision,
            "use_chat_template": cfg.model.use_chat_template,
            "generation": {**generation, "stop_strings": [f"</{t}>" for t in STOP_TAGS]},
            "env": config_to_dict(cfg.env), "reward": config_to_dict(cfg.reward)}


def task_data_facts(cfg, setup: RoutingSetup) -> dict:
    """The manifest's `data` entry of a Router-R1 export: the task table, its split, the pool's prices."""
    return {"tasks": cfg.tasks.path, "train_tasks": len(setup.train_tasks), "test_tasks": len(setup.test_tasks),
            "fingerprint": setup.data_fingerprint,
            "prices_usd_per_million_tokens": {c.name: [c.input_price, c.output_price] for c in setup.cards}}


def write_policy_files(directory: Path, policy_model, tokenizer, pool_cfg: PoolConfig) -> None:
    """policy/ (save_pretrained, safetensors, + the tokenizer) and pool_config.json, written into `directory`.

    export_router's `extra_files`: `directory` is its temporary directory, and the manifest it writes
    afterwards lists these files with their sha256 (the registry copies and verifies exactly that set).
    """
    policy_model.save_pretrained(directory / POLICY_DIR, safe_serialization=True)
    tokenizer.save_pretrained(directory / POLICY_DIR)
    (directory / POOL_CONFIG_FILE).write_text(json.dumps(config_to_dict(pool_cfg), indent=2, sort_keys=True) + "\n",
                                              encoding="utf-8")
