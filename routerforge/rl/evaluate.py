"""Evaluate Router-R1 exports on held-out tasks, like the other routers.

    report = evaluate_export("checkpoints/router_r1/<run>/final", EvalSettings(alphas=(0.0, 0.3, 0.6)))
    routerforge eval-router-r1 --export DIR [--export DIR ...] [--alphas 0,0.3,0.6] [--max-tasks N] --out DIR

An export (training/train_router_r1.py, section 8) holds the policy (``policy/``, save_pretrained +
tokenizer), the pool (``pool_config.json``), generation/env/reward settings (``config.json``) and the
resolved training config (``manifest.json``). Evaluation rebuilds the TEST split of the training run
(same task table, ``max_rows``, ``test_fraction`` and ``split_seed``: `tasks.split_tasks`), the pool and
the environment, and drives the policy through `RoutingEnv` with the generation code the trainer uses
(`generation.make_lm_policy`), greedy by default.

Per export it reports exact match (the outcome, over every episode: a format violation counts 0),
format-ok rate, mean reward at the training alpha, mean USD cost per query, executed (and attempted)
calls per query, each pool model's share of the executed calls and the reward re-scored for several
alphas (`reward.score_trajectory` with `RewardConfig.cost_weight` replaced). Cost rewards come from a
fresh `CostNormalizer` that sees the held-out episodes in order (the training window is not part of the
export), the same for every alpha, so the alpha sweep changes only the weighting:
reward(alpha) = (1 - alpha) * outcome + alpha * cost_reward for well-formed episodes, the penalty else.

Across exports (e.g. policies trained at several alphas) it writes the cost-quality points (mean cost per
query, exact match), one per export labelled by its training alpha, as JSON and as a PNG drawn by
`routerforge.eval.plots.plot_cost_quality_points`, with the other routers' plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from routerforge.config import doc
from routerforge.errors import CheckpointError, ConfigError, RouterForgeError
from routerforge.io.names import CONFIG_FILE, MANIFEST_FILE
from routerforge.rl.env import EnvConfig, Rollout, RoutingEnv
from routerforge.rl.pool_config import PoolConfig
from routerforge.rl.reward import CostNormalizer, RewardConfig, exact_match, score_trajectory
from routerforge.rl.tasks import RoutingTask, gsm8k_tasks_from_routellm, split_tasks

REPORT_FILE = "router_r1_eval.json"
PLOT_FILE = "router_r1_cost_quality.png"
EXPORT_FILES = (CONFIG_FILE, MANIFEST_FILE, "pool_config.json", "policy/config.json")


@dataclass(frozen=True)
class EvalSettings:
    """How the held-out episodes are generated and scored."""

    temperature: float = doc("sampling temperature of the policy (0 = greedy decoding)", default=0.0)
    top_p: float = doc("nucleus sampling mass (0-1], used when temperature > 0", default=1.0)
    seed: int = doc("torch seed set before sampling (temperature > 0)", default=0)
    max_tasks: int | None = doc("evaluate only the first N held-out tasks (count); None: all", default=None)
    alphas: tuple[float, ...] = doc("cost weights alpha (0-1) the reward is re-scored with", default=(0.0, 0.3, 0.6))
    micro_batch_size: int = doc("episodes per generate call (episodes)", default=16)
    max_context_tokens: int = doc("longest context (prompt + response, tokens) that may still generate a turn",
                                  default=4096)
    device: str | None = doc("torch device; None: cuda when available, else cpu", default=None)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError(f"max_tasks must be >= 1 or None, got {self.max_tasks}")
        if not self.alphas or any(not 0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas must be one or more cost weights in [0, 1], got {list(self.alphas)}")
        if self.micro_batch_size < 1 or self.max_context_tokens < 1:
            raise ValueError("micro_batch_size and max_context_tokens must be >= 1")


@dataclass(frozen=True)
class RouterR1Export:
    """An export directory, read and checked (the policy itself is loaded by `load_policy`)."""

    path: Path
    config: dict  # config.json
    manifest: dict  # manifest.json
    pool: PoolConfig
    env: EnvConfig
    reward: RewardConfig

    @property
    def training_config(self) -> dict:
        return self.manifest.get("config") or {}

    @property
    def training_alpha(self) -> float:
        return float(self.reward.cost_weight)

    @property
    def label(self) -> str:
        run = (self.training_config.get("run") or {}).get("name") or self.path.name
        return f"{run} (alpha={self.training_alpha:g})"


def _dataclass_from_dict(cls, data: dict, where: str):
    """A config dataclass (nested ones included) from its `config_to_dict` form; CheckpointError when it
    does not fit."""
    from routerforge.config import load_config

    overrides = [f"{key}={json.dumps(value)}" for key, value in data.items()]
    try:
        return load_config(cls, None, overrides)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def read_export(export_dir: str | Path) -> RouterR1Export:
    """Read a Router-R1 export; CheckpointError (one line) when `export_dir` is not one."""
    path = Path(export_dir)
    if not path.is_dir():
        raise CheckpointError(f"Router-R1 export '{path}' is not a directory; pass the export that "
                              "training/train_router_r1.py printed as 'checkpoint: ...'.")
    missing = [name for name in EXPORT_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"'{path}' is not a Router-R1 export: it lacks {', '.join(missing)}; pass the export "
                              "directory of training/train_router_r1.py (it holds policy/ and pool_config.json).")
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        pool_data = json.loads((path / "pool_config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"'{path}': a JSON file of the export is not valid JSON ({exc}).") from None
    if config.get("router_type") != "router_r1":
        raise CheckpointError(f"'{path}' is a '{config.get('router_type')}' export, not router_r1; use "
                              "`routerforge eval` for the other routers.")
    for key in ("env", "reward", "generation"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"'{path}/config.json' has no '{key}' settings; re-export with the current "
                                  "training/train_router_r1.py.")
    return RouterR1Export(
        path=path, config=config, manifest=manifest,
        pool=_dataclass_from_dict(PoolConfig, pool_data, f"{path}/pool_config.json"),
        env=_dataclass_from_dict(EnvConfig, config["env"], f"{path}/config.json env"),
        reward=_dataclass_from_dict(RewardConfig, config["reward"], f"{path}/config.json reward"))


def heldout_tasks(export: RouterR1Export) -> list[RoutingTask]:
    """The test split of the export's training run (the tasks it never trained on)."""
    tasks_cfg = export.training_config.get("tasks")
    if not isinstance(tasks_cfg, dict):
        raise CheckpointError(f"'{export.path}/manifest.json' has no config.tasks; cannot rebuild its test split.")
    if tasks_cfg.get("source", "gsm8k_routellm") != "gsm8k_routellm":
        raise CheckpointError(f"'{export.path}': task source '{tasks_cfg['source']}' has no held-out builder here; "
                              "pass the tasks to evaluate_export explicitly.")
    tasks, _ = gsm8k_tasks_from_routellm(tasks_cfg["path"], max_rows=tasks_cfg.get("max_rows"))
    _, test = split_tasks(tasks, tasks_cfg["test_fraction"], tasks_cfg.get("split_seed", 0))
    if not test:
        raise CheckpointError(f"'{export.path}': its training run held out no task (tasks.test_fraction="
                              f"{tasks_cfg['test_fraction']}); pass tasks to evaluate on explicitly.")
    return test


def load_policy(export: RouterR1Export, device, policy_dir: str | Path | None = None):
    """(model, tokenizer) of the exported policy (or of `policy_dir`), in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy_dir = Path(policy_dir) if policy_dir is not None else export.path / export.config.get("policy_dir", "policy")
    try:
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        model = AutoModelForCausalLM.from_pretrained(policy_dir)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"'{policy_dir}': cannot load the policy ({first}).") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def rescore(rollouts: Sequence[Rollout], reward_cfg: RewardConfig, alpha: float) -> list[float]:
    """Each finished episode's reward with cost weight `alpha`; a fresh cost window sees the episodes in order."""
    cfg = dataclasses.replace(reward_cfg, cost_weight=alpha)
    normalizer = CostNormalizer.from_config(cfg)
    return [score_trajectory(format_ok=r.format_check.ok, answer=r.answer, golds=r.task.answers, cost_usd=r.cost_usd,
                             cfg=cfg, normalizer=normalizer).reward for r in rollouts]


def summarize_rollouts(rollouts: Sequence[Rollout], reward_cfg: RewardConfig, model_names: Sequence[str],
                       alphas: Sequence[float]) -> dict:
    """The report's metrics over finished episodes (see the module docstring); means are per query."""
    n = len(rollouts)
    if not n:
        raise ValueError("no episodes to summarise")
    executed = Counter(call.model for r in rollouts for call in r.calls if call.answer is not None)
    total_executed = sum(executed.values())
    exact = [float(r.format_check.ok and r.answer is not None
                   and exact_match(r.answer, r.task.answers, match_numbers=reward_cfg.match_numbers)) for r in rollouts]
    return {
        "n_tasks": n,
        "exact_match": sum(exact) / n,
        "outcome": sum(r.reward.outcome for r in rollouts) / n,
        "format_ok": sum(r.format_check.ok for r in rollouts) / n,
        "mean_reward": sum(r.reward.reward for r in rollouts) / n,
        "cost_usd_per_query": sum(r.cost_usd for r in rollouts) / n,
        "calls_per_query": total_executed / n,
        "attempted_calls_per_query": sum(len(r.calls) for r in rollouts) / n,
        "calls_per_query_by_model": {name: executed.get(name, 0) / n for name in model_names},
        "call_share_by_model": {name: (executed.get(name, 0) / total_executed if total_executed else 0.0)
                                for name in model_names},
        "end_reasons": dict(sorted(Counter(r.end_reason for r in rollouts).items())),
        "reward_by_alpha": {f"{alpha:g}": sum(rescore(rollouts, reward_cfg, alpha)) / n for alpha in alphas},
    }


def evaluate_export(export_dir: str | Path, settings: EvalSettings | None = None,
                    tasks: Sequence[RoutingTask] | None = None, policy_dir: str | Path | None = None) -> dict:
    """Roll the exported policy out on held-out tasks and summarise (see the module docstring).

    tasks: the tasks to evaluate on; default the export's own test split (`heldout_tasks`).
    policy_dir: evaluate this policy instead of the exported one, under the export's pool, env, reward and
    generation settings (e.g. the initial policy the run started from, `config.json` base_policy).
    The report keeps the episodes' responses in `episodes` for inspection.
    """
    import torch

    from routerforge.rl.generation import GenerationSettings, make_lm_policy, templated_prompt
    from routerforge.rl.pools import build_pool

    settings = settings or EvalSettings()
    export = read_export(export_dir)
    tasks_given = tasks is not None
    tasks = list(tasks) if tasks is not None else heldout_tasks(export)
    if settings.max_tasks is not None:
        tasks = tasks[:settings.max_tasks]
    max_rows = (export.training_config.get("tasks") or {}).get("max_rows")
    pool = build_pool(export.pool, max_rows=max_rows)
    env = RoutingEnv(pool, export.reward, CostNormalizer.from_config(export.reward), export.env)
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer = load_policy(export, device, policy_dir)
    use_chat_template = bool(export.config.get("use_chat_template", True))
    templates = {}
    for task in tasks:
        raw = env.prompt_for(task)
        templates[raw] = templated_prompt(tokenizer, raw, use_chat_template)
    max_new_tokens = int(export.config["generation"]["max_new_tokens"])
    policy = make_lm_policy(model, tokenizer, templates, device, GenerationSettings(
        max_new_tokens=max_new_tokens, token_budget=settings.max_context_tokens - max_new_tokens,
        micro_batch_size=settings.micro_batch_size, temperature=settings.temperature, top_p=settings.top_p))
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        rollouts = env.rollout_many(tasks, policy)
    seconds = time.perf_counter() - started
    report = {
        "export": str(export.path), "label": export.label, "training_alpha": export.training_alpha,
        "policy": str(policy_dir) if policy_dir is not None else "exported",
        "base_policy": export.config.get("base_policy"), "model_pool": list(pool.cards),
        "ppo_steps": (export.manifest.get("training") or {}).get("ppo_steps"),
        "settings": {**dataclasses.asdict(settings), "alphas": list(settings.alphas)},
        "tasks": {"source": "given" if tasks_given else "test split of the training run",
                  "prompt_ids": [t.prompt_id for t in tasks]},
        **summarize_rollouts(rollouts, export.reward, list(pool.cards), settings.alphas),
        "seconds": seconds,
        "episodes": [{"prompt_id": r.task.prompt_id, "response": r.response, "answer": r.answer,
                      "golds": list(r.task.answers), "reward": r.reward.reward, "format_ok": r.format_check.ok,
                      "format_problem": r.format_check.reason, "cost_usd": r.cost_usd,
                      "calls": [c.model for c in r.calls if c.answer is not None]} for r in rollouts],
    }
    return report


def cost_quality_points(reports: Sequence[dict]) -> list[dict]:
    """One (cost per query, exact match) point per export, labelled by its training alpha."""
    return [{"label": r["label"], "export": r["export"], "training_alpha": r["training_alpha"],
             "cost_usd_per_query": r["cost_usd_per_query"], "exact_match": r["exact_match"],
             "calls_per_query": r["calls_per_query"], "n_tasks": r["n_tasks"]} for r in reports]


def write_evaluation(reports: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """Write REPORT_FILE and PLOT_FILE into `out_dir`, each atomically (temp file + rename); return their paths."""
    from routerforge.eval.plots import plot_cost_quality_points  # matplotlib only when a report is written

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out '{out_dir}' is a file; pass a directory for the report and the plot.")
    out_dir.mkdir(parents=True, exist_ok=True)
    points = cost_quality_points(reports)
    report_path, plot_path = out_dir / REPORT_FILE, out_dir / PLOT_FILE
    tmp_json = out_dir / f".{REPORT_FILE}.tmp-{os.getpid()}"
    tmp_png = out_dir / f".tmp-{os.getpid()}-{PLOT_FILE}"
    try:
        tmp_json.write_text(json.dumps({"cost_quality_points": points, "exports": list(reports)}, indent=2) + "\n",
                            encoding="utf-8")
        plot_cost_quality_points(points, tmp_png)
        os.replace(tmp_json, report_path)
        os.replace(tmp_png, plot_path)
    finally:
        for tmp in (tmp_json, tmp_png):
            tmp.unlink(missing_ok=True)
    return [report_path, plot_path]


def _alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers "
                                         f"(e.g. 0,0.3,0.6)") from None
    if not values or any(not (math.isfinite(v) and 0.0 <= v <= 1.0) for v in values):
        raise argparse.ArgumentTypeError(f"alphas must be cost weights in [0, 1], got '{text}'")
    return values


def format_table(reports: Sequence[dict]) -> str:
    alphas = list(reports[0]["reward_by_alpha"]) if reports else []
    header = f"{'export':<40}{'n':>6}{'EM':>8}{'fmt':>7}{'reward':>8}{'$/query':>11}{'calls':>7}  " + \
        "  ".join(f"r(a={a})" for a in alphas)
    lines = [header]
    for r in reports:
        lines.append(f"{r['label'][:39]:<40}{r['n_tasks']:>6}{r['exact_match']:>8.3f}{r['format_ok']:>7.3f}"
                     f"{r['mean_reward']:>8.3f}{r['cost_usd_per_query']:>11.6f}{r['calls_per_query']:>7.2f}  "
                     + "  ".join(f"{r['reward_by_alpha'][a]:>{len(f'r(a={a})')}.3f}" for a in alphas))
        lines.append("    call share: " + ", ".join(f"{m} {s:.2f}" for m, s in r["call_share_by_model"].items()))
    return "\n".join(lines)


def eval_router_r1_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="routerforge eval-router-r1",
        description="Evaluate Router-R1 exports on the held-out tasks of their training run: exact match, format, "
                    "reward (re-scored for several alphas), cost and calls per query; writes "
                    f"{REPORT_FILE} and the cost-quality plot {PLOT_FILE} into --out.")
    parser.add_argument("--export", action="append", required=True, type=Path, metavar="DIR",
                        help="a Router-R1 export directory (repeatable: one cost-quality point each)")
    parser.add_argument("--alphas", type=_alphas, default=(0.0, 0.3, 0.6),
                        help="cost weights the reward is re-scored with, comma-separated (default 0,0.3,0.6)")
    parser.add_argument("--max-tasks", type=int, default=None, help="evaluate only the first N held-out tasks")
    parser.add_argument("--temperature", type=float, default=0.0, help="policy sampling temperature (0: greedy)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="episodes per generate call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--out", required=True, type=Path, help="output directory for the report and the plot")
    args = parser.parse_args(argv)
    try:
        try:
            settings = EvalSettings(temperature=args.temperature, seed=args.seed, max_tasks=args.max_tasks,
                                    alphas=args.alphas, micro_batch_size=args.micro_batch_size, device=args.device)
        except ValueError as exc:
            raise ConfigError(f"eval-router-r1: {exc}") from None
        for export_dir in args.export:
            read_export(export_dir)  # every directory is checked before the first (slow) evaluation
        reports = [evaluate_export(export_dir, settings) for export_dir in args.export]
        print(format_table(reports))
        for path in write_evaluation(reports, args.out):
            print(f"wrote {path}")
    except RouterForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
