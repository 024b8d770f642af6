"""routerforge/rl/evaluate.py: Router-R1 exports evaluated on held-out tasks, alpha re-scoring, cost-quality output.

The exports are real: the tiny PPO recipe (configs/router_r1/tiny.yaml) runs in-process twice, at alpha 0
and 0.5, on a random-init tiny Qwen2 (so its episodes are mostly format violations: these tests check the
bookkeeping, not quality). The count and alpha checks also run on scripted episodes through the real
environment and recorded pool, where calls, costs and outcomes are known.
"""

from __future__ import annotations

import json

import pytest

from routerforge.cli import main as cli_main
from routerforge.rl.env import EnvConfig, RoutingEnv
from routerforge.rl.evaluate import (
    PLOT_FILE,
    REPORT_FILE,
    EvalSettings,
    evaluate_export,
    heldout_tasks,
    read_export,
    rescore,
    summarize_rollouts,
)
from routerforge.rl.pool_config import PoolConfig, resolve_model_cards
from routerforge.rl.pools import build_pool
from routerforge.rl.reward import CostNormalizer, RewardConfig
from routerforge.rl.tasks import final_number, gsm8k_tasks_from_routellm, split_tasks
from tests.fixtures.recipe_runner import REPO_ROOT, run_recipe_in_process
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

CONFIG = REPO_ROOT / "configs" / "router_r1" / "tiny.yaml"
ALPHAS = (0.0, 0.3, 0.6)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{training alpha: export dir} of two one-step tiny PPO runs."""
    model_dir = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_qwen2"))
    out = tmp_path_factory.mktemp("runs")
    dirs = {}
    for alpha in (0.0, 0.5):
        result = run_recipe_in_process("train_router_r1", [
            "--config", str(CONFIG), f"model.policy={model_dir}", f"run.output_dir={out}",
            f"run.name=alpha-{alpha}", "run.max_optimizer_steps=1", "checkpoint.every_optimizer_steps=0",
            "tasks.max_rows=16", "reward.match_numbers=true", f"reward.cost_weight={alpha}"])
        dirs[alpha] = result["export_dir"]
    return dirs


@pytest.fixture(scope="module")
def report(exports):
    return evaluate_export(exports[0.0], EvalSettings(alphas=ALPHAS))


def test_report_covers_the_held_out_split_with_consistent_counts(exports, report):
    export = read_export(exports[0.0])
    tasks, _ = gsm8k_tasks_from_routellm(max_rows=16)
    train, test = split_tasks(tasks, 0.25, 0)
    assert [t.prompt_id for t in heldout_tasks(export)] == [t.prompt_id for t in test]
    assert report["tasks"]["prompt_ids"] == [t.prompt_id for t in test] and report["n_tasks"] == len(test) > 0
    assert not {t.prompt_id for t in train} & set(report["tasks"]["prompt_ids"])
    assert report["training_alpha"] == 0.0 and report["model_pool"] == ["Mixtral-8x7B", "GPT-4-Turbo"]
    for key in ("exact_match", "outcome", "format_ok"):
        assert 0.0 <= report[key] <= 1.0
    assert -1.0 <= report["mean_reward"] <= 1.0
    episodes = report["episodes"]
    n = len(episodes)
    # every per-query mean is the mean of what the episodes record
    assert report["calls_per_query"] == pytest.approx(sum(len(e["calls"]) for e in episodes) / n)
    assert sum(report["calls_per_query_by_model"].values()) == pytest.approx(report["calls_per_query"])
    assert report["cost_usd_per_query"] == pytest.approx(sum(e["cost_usd"] for e in episodes) / n)
    assert report["format_ok"] == pytest.approx(sum(e["format_ok"] for e in episodes) / n)
    assert report["mean_reward"] == pytest.approx(sum(e["reward"] for e in episodes) / n)
    assert sum(report["end_reasons"].values()) == n
    # the training alpha (0) re-scored is the env's own reward
    assert report["reward_by_alpha"]["0"] == pytest.approx(report["mean_reward"])
    assert list(report["reward_by_alpha"]) == ["0", "0.3", "0.6"]


def test_greedy_evaluation_is_deterministic(exports, report):
    again = evaluate_export(exports[0.0], EvalSettings(alphas=ALPHAS, max_tasks=2))
    assert [e["response"] for e in again["episodes"]] == [e["response"] for e in report["episodes"][:2]]
    assert again["n_tasks"] == 2


@pytest.fixture(scope="module")
def scripted_rollouts():
    """Real env + recorded pool; episode i calls Mixtral or GPT-4 (or breaks the format) and answers the
    final number of what it was told, so calls, costs and outcomes are known."""
    tasks, _ = gsm8k_tasks_from_routellm(max_rows=40)
    pool_cfg = PoolConfig()
    pool = build_pool(pool_cfg, resolve_model_cards(pool_cfg), max_rows=40)
    reward_cfg = RewardConfig(match_numbers=True)
    env = RoutingEnv(pool, reward_cfg, CostNormalizer.from_config(reward_cfg), EnvConfig(max_turns=1))
    plan = {t.question.strip(): ["Mixtral-8x7B", "GPT-4-Turbo", "GPT-4-Turbo", "broken"][i % 4]
            for i, t in enumerate(tasks)}

    def scripted(contexts: list[str]) -> list[str]:
        out = []
        for context in contexts:
            question = context.rsplit("Question: ", 1)[1].strip()
            if context.rstrip().endswith("</information>"):
                told = context.rstrip()[:-len("</information>")].rsplit("<information>", 1)[1]
                out.append(f"<think> read it </think>\n<answer> {final_number(told)} </answer>")
            elif plan[question] == "broken":
                out.append("no tags at all")
            else:  # the exact question as the sub-query: served without the encoder
                out.append(f"<think> ask </think>\n<search> {plan[question]}: {question} </search>")
        return out

    return env.rollout_many(tasks, scripted), reward_cfg, plan


def test_summary_counts_add_up_to_the_environments_calls(scripted_rollouts):
    rollouts, reward_cfg, plan = scripted_rollouts
    summary = summarize_rollouts(rollouts, reward_cfg, ["Mixtral-8x7B", "GPT-4-Turbo"], ALPHAS)
    n = len(rollouts)
    planned = [plan[r.task.question.strip()] for r in rollouts]
    assert summary["calls_per_query"] == sum(r.executed_calls for r in rollouts) / n == \
        sum(p != "broken" for p in planned) / n
    assert summary["calls_per_query_by_model"] == {m: planned.count(m) / n for m in ("Mixtral-8x7B", "GPT-4-Turbo")}
    assert summary["call_share_by_model"]["GPT-4-Turbo"] == pytest.approx(
        planned.count("GPT-4-Turbo") / sum(p != "broken" for p in planned))
    assert summary["cost_usd_per_query"] == pytest.approx(
        sum(c.answer.cost_usd for r in rollouts for c in r.calls) / n)
    assert summary["format_ok"] == sum(p != "broken" for p in planned) / n
    # the outcome of a well-formed episode is the recorded correctness of the model it called
    recorded = [r.calls[0].answer.recorded_score for r in rollouts if r.calls]
    assert summary["exact_match"] == pytest.approx(sum(recorded) / n)
    assert 0 < summary["exact_match"] < summary["format_ok"]  # some recorded answers are wrong


def test_alpha_changes_the_reward_exactly_as_the_formula_says(scripted_rollouts):
    rollouts, reward_cfg, _ = scripted_rollouts
    at_zero = rescore(rollouts, reward_cfg, 0.0)
    assert at_zero == [r.reward.reward for r in rollouts]  # same fresh window, same order as the env's
    for alpha in ALPHAS[1:]:
        for rollout, r0, ra in zip(rollouts, at_zero, rescore(rollouts, reward_cfg, alpha), strict=True):
            if rollout.format_check.ok:
                assert ra - r0 == pytest.approx(alpha * (rollout.reward.cost_reward - rollout.reward.outcome))
            else:
                assert ra == r0 == -1.0
    summary = summarize_rollouts(rollouts, reward_cfg, ["Mixtral-8x7B", "GPT-4-Turbo"], ALPHAS)
    assert summary["reward_by_alpha"]["0.6"] == pytest.approx(sum(rescore(rollouts, reward_cfg, 0.6)) / len(rollouts))
    assert len({round(v, 9) for v in summary["reward_by_alpha"].values()}) == 3


def test_cli_writes_exactly_the_report_and_the_plot(exports, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cli_main(["eval-router-r1", "--export", exports[0.0], "--export", exports[0.5], "--alphas", "0,0.5",
                   "--max-tasks", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted([REPORT_FILE, PLOT_FILE])
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / REPORT_FILE).read_text())
    points = data["cost_quality_points"]
    assert [p["training_alpha"] for p in points] == [0.0, 0.5]
    assert [p["export"] for p in points] == [exports[0.0], exports[0.5]]
    assert "alpha=0.5" in points[1]["label"]
    for point, exported in zip(points, data["exports"], strict=True):
        assert (point["cost_usd_per_query"], point["exact_match"]) == \
            (exported["cost_usd_per_query"], exported["exact_match"])
        assert list(exported["reward_by_alpha"]) == ["0", "0.5"] and exported["n_tasks"] == 2


def test_cli_refuses_a_wrong_directory_in_one_line(exports, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cli_main(["eval-router-r1", "--export", str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "is not a directory" in err
    rc = cli_main(["eval-router-r1", "--export", exports[0.0], "--export", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "is not a Router-R1 export" in err and "policy/config.json" in err
    assert not out.exists()  # every export is checked before anything is evaluated or written
