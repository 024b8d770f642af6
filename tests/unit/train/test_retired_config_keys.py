"""Configs written when training/train_router_r1.py ran both PPO and GRPO: what each recipe does with them now."""

from __future__ import annotations

import pytest

from routerforge.errors import ConfigError
from routerforge.recipes import train_main
from routerforge.train.run_config import parse_recipe_args
from tests.fixtures.recipe_runner import REPO_ROOT, load_recipe_module

OLD_GRPO_CONFIG = """\
algorithm: grpo
run: {name: old-grpo, max_optimizer_steps: 2, micro_batch_size: 2}
grpo: {num_generations: 2, rollout_batch_size: 4, mini_batch_size: 4}
"""


@pytest.fixture(scope="module")
def recipes():
    return load_recipe_module("train_router_r1"), load_recipe_module("train_router_r1_grpo")


def test_a_combined_grpo_config_is_refused_by_ppo_naming_the_grpo_recipe_and_loads_in_it(recipes, tmp_path):
    ppo, grpo = recipes
    old = tmp_path / "old_grpo.yaml"
    old.write_text(OLD_GRPO_CONFIG, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'grpo' is not a key of this recipe: .*train_router_r1_grpo\.py"):
        parse_recipe_args(ppo.RouterR1Config, ["--config", str(old)])
    with pytest.raises(ConfigError, match=r"algorithm must be ppo.*train_router_r1_grpo\.py"):
        parse_recipe_args(ppo.RouterR1Config, ["--config", str(REPO_ROOT / "configs/router_r1/tiny.yaml"),
                                               "algorithm=grpo"])
    cfg = parse_recipe_args(grpo.RouterR1GRPOConfig, ["--config", str(old)])
    assert (cfg.algorithm, cfg.grpo.num_generations, cfg.run.name) == ("grpo", 2, "old-grpo")


def test_a_ppo_config_is_refused_by_grpo_for_its_rl_block_and_every_shipped_config_loads(recipes):
    ppo, grpo = recipes
    with pytest.raises(ConfigError, match=r"'rl' is not a key of this recipe: the rl block holds PPO's settings"):
        parse_recipe_args(grpo.RouterR1GRPOConfig, ["--config", str(REPO_ROOT / "configs/router_r1/tiny.yaml")])
    for path in sorted((REPO_ROOT / "configs/router_r1").glob("*.yaml")):
        parse_recipe_args(ppo.RouterR1Config, ["--config", str(path)])
    for path in sorted((REPO_ROOT / "configs/router_r1_grpo").glob("*.yaml")):
        parse_recipe_args(grpo.RouterR1GRPOConfig, ["--config", str(path)])


def test_the_cli_lists_both_router_r1_recipes(capsys):
    assert train_main(["--help"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert {"router-r1", "router-r1-grpo"} <= set(listed)
