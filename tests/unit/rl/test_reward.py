"""Router-R1 reward: SQuAD normalisation, EM/F1, the rolling-window cost reward, the hierarchical total."""

from __future__ import annotations

import json

import pytest

from routerforge.config import load_config
from routerforge.errors import ConfigError
from routerforge.rl.reward import (
    CostNormalizer,
    RewardConfig,
    combine_reward,
    exact_match,
    f1_score,
    normalize_answer,
    parse_number,
    score_trajectory,
)


def test_normalize_answer_is_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a pear.") == "apple pear"
    assert normalize_answer("$1,000") == "1000"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match_over_several_golds():
    assert exact_match("the Beatles", ["Rolling Stones", "Beatles"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert exact_match("Paris.", "paris") == 1.0


def test_f1_by_hand():
    # pred tokens [big, red, dog], gold [red, dog]: P = 2/3, R = 1, F1 = 2*(2/3)/(5/3) = 0.8
    assert f1_score("the big red dog", "a red dog") == pytest.approx(0.8)
    # best over golds
    assert f1_score("red dog", ["cat", "red dog"]) == 1.0
    assert f1_score("blue cat", ["red dog"]) == 0.0
    # HotpotQA rule: yes/no only score when equal
    assert f1_score("yes it is", "yes") == 0.0
    assert f1_score("no", "no") == 1.0


def test_numbers_compare_by_value_only_when_asked():
    assert parse_number("$1,000") == 1000.0
    assert parse_number("18.00") == 18.0
    assert parse_number("-2.5") == -2.5
    assert parse_number("18 eggs") is None
    assert parse_number("1,00") is None
    # SQuAD normalisation alone turns 18.0 into "180": wrong without number matching
    assert exact_match("18.0", "18") == 0.0
    assert exact_match("18.0", "18", match_numbers=True) == 1.0
    assert exact_match("$18", ["17", "18"], match_numbers=True) == 1.0
    assert exact_match("19", "18", match_numbers=True) == 0.0
    assert f1_score("1,000", "1000.0", match_numbers=True) == 1.0
    assert exact_match("eighteen", "18", match_numbers=True) == 0.0


def test_cost_normalizer_by_hand():
    # sqrt costs 0.2, 0.1, 0.3, 0.15 through a window of 3 with numpy's linear percentiles 5 / 95
    normalizer = CostNormalizer(window=3)
    assert normalizer.normalize(0.04) == 0.5  # one value: no spread yet
    # window [0.2, 0.1]: p5 = 0.105, p95 = 0.195; 0.1 is below p5 -> scaled 0 -> reward 1
    assert normalizer.normalize(0.01) == pytest.approx(1.0)
    # window [0.1, 0.2, 0.3]: p5 = 0.11, p95 = 0.29; 0.3 is above p95 -> reward 0
    assert normalizer.normalize(0.09) == pytest.approx(0.0)
    # window [0.1, 0.3, 0.15] (0.2 left it): p5 = 0.105, p95 = 0.285; (0.15-0.105)/0.18 = 0.25 -> 0.75
    assert normalizer.normalize(0.0225) == pytest.approx(0.75)
    assert len(normalizer) == 3


def test_cost_normalizer_state_round_trips_through_json():
    first = CostNormalizer(window=5)
    for cost in (0.01, 0.5, 0.02, 0.3):
        first.normalize(cost)
    restored = CostNormalizer(window=5)
    restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert restored.normalize(0.1) == first.normalize(0.1)
    with pytest.raises(ValueError, match="window"):
        CostNormalizer(window=7).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="USD"):
        first.normalize(-1.0)


def test_two_normalizers_do_not_share_state():
    a, b = CostNormalizer(window=10), CostNormalizer(window=10)
    a.normalize(1.0)
    a.normalize(0.0)
    assert len(b) == 0 and b.normalize(0.0) == 0.5


def test_combine_reward_is_hierarchical():
    paper = RewardConfig(cost_weight=0.3)
    assert combine_reward(False, 1.0, 1.0, paper) == -1.0  # a format violation overrides everything
    assert combine_reward(True, 1.0, 0.5, paper) == pytest.approx(0.7 + 0.15)
    assert combine_reward(True, 0.0, 0.5, paper) == pytest.approx(0.15)  # the paper's formula pays for cheapness
    gated = RewardConfig(cost_weight=0.3, cost_gate="outcome")
    assert combine_reward(True, 0.0, 0.5, gated) == 0.0
    assert combine_reward(True, 1.0, 0.5, gated) == pytest.approx(0.85)
    assert combine_reward(True, 1.0, 0.0, RewardConfig()) == 1.0  # alpha defaults to 0: cost ignored


def test_score_trajectory_updates_the_window_even_for_broken_format():
    normalizer = CostNormalizer(window=10)
    cfg = RewardConfig(outcome_metric="f1")
    broken = score_trajectory(format_ok=False, answer="red dog", golds=["red dog"], cost_usd=0.2, cfg=cfg,
                              normalizer=normalizer)
    assert (broken.reward, broken.outcome, broken.format_ok) == (-1.0, 0.0, False)
    good = score_trajectory(format_ok=True, answer="the big red dog", golds=["red dog"], cost_usd=0.0, cfg=cfg,
                            normalizer=normalizer)
    assert good.reward == pytest.approx(0.8) and good.cost_reward == pytest.approx(1.0)
    assert len(normalizer) == 2
    none = score_trajectory(format_ok=True, answer=None, golds=["x"], cost_usd=0.0, cfg=cfg, normalizer=normalizer)
    assert none.reward == 0.0


def test_reward_config_is_validated_with_the_key_named(tmp_path):
    with pytest.raises(ConfigError, match="cost_weight"):
        load_config(RewardConfig, overrides=["cost_weight=1.5"])
    with pytest.raises(ConfigError, match="outcome_metric"):
        load_config(RewardConfig, overrides=["outcome_metric=accuracy"])
    with pytest.raises(ConfigError, match="Did you mean 'cost_gate'"):
        load_config(RewardConfig, overrides=["cost_gte=format"])
    cfg = load_config(RewardConfig, overrides=["cost_weight=0.2", "match_numbers=true"])
    assert cfg.cost_weight == 0.2 and cfg.match_numbers
