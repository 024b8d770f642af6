"""Binary routing metrics against hand-computed cases, RouteLLM's threshold rule, and real GSM8K outcomes."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest

from routerforge.errors import DataError
from routerforge.eval.binary import (
    SHARE_GRID,
    apgr,
    auc,
    binary_report,
    cpt,
    oracle_curve,
    quality_at_share,
    strong_share_curve,
)

# Four prompts. gains = strong - weak = [1, 0, 1, 0]; weak mean 0.25, strong mean 0.75, gap 0.5.
WEAK = np.array([0.0, 1.0, 0.0, 0.0])
STRONG = np.array([1.0, 1.0, 1.0, 0.0])
ROUTER = np.array([0.9, 0.8, 0.3, 0.1])  # distinct scores: routing order p0, p1, p2, p3


def test_hand_computed_four_prompts():
    rep = binary_report(ROUTER, WEAK, STRONG, n_bootstrap=0)
    # Top-k strong calls: cumulative gains 0, 1, 1, 2, 2 -> quality 0.25 + cum/4 at shares 0, .25, .5, .75, 1
    np.testing.assert_allclose(rep.router_curve.shares, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(rep.router_curve.quality, [0.25, 0.5, 0.5, 0.75, 0.75])
    # AUC = 0.25 * [(.25+.5)/2 + (.5+.5)/2 + (.5+.75)/2 + (.75+.75)/2] = 0.25 * 2.25 = 0.5625
    assert rep.router.auc == pytest.approx(0.5625)
    # APGR = (0.5625 - 0.25) / 0.5 = 0.625
    assert rep.router.apgr == pytest.approx(0.625)
    # PGR at the vertices: 0, .5, .5, 1, 1. CPT(50%) is reached at the 2nd vertex: share 0.25.
    assert rep.router.cpt50_share == pytest.approx(0.25)
    # CPT(80%): between share .5 (PGR .5) and .75 (PGR 1): .5 + (.8-.5)/(1-.5) * .25 = 0.65
    assert rep.router.cpt80_share == pytest.approx(0.65)
    # Oracle: positive gains first [1, 1, 0, 0] -> quality .25, .75 at share .5, flat to 1.
    # AUC = .5*(.25+.75)/2 + .5*.75 = 0.625; APGR = (.625-.25)/.5 = 0.75; CPT50 = .25; CPT80 = .4
    assert (rep.oracle.auc, rep.oracle.apgr) == pytest.approx((0.625, 0.75))
    assert (rep.oracle.cpt50_share, rep.oracle.cpt80_share) == pytest.approx((0.25, 0.4))
    # Random reference, analytic: APGR .5, AUC (w + s)/2 = .5, CPT(x) = x
    assert (rep.random.apgr, rep.random.auc, rep.random.cpt50_share, rep.random.cpt80_share) == (0.5, 0.5, 0.5, 0.8)
    assert (rep.weak_mean, rep.strong_mean) == (0.25, 0.75)


def test_reversed_router_is_worse_than_random():
    # Sending the zero-gain prompts first: cum gains 0, 0, 1, 1, 2 (order p3, p2, p1, p0 -> gains 0, 1, 0, 1)
    rep = binary_report(-ROUTER, WEAK, STRONG, n_bootstrap=0)
    np.testing.assert_allclose(rep.router_curve.quality, [0.25, 0.25, 0.5, 0.5, 0.75])
    # AUC = .25 * [.25 + .375 + .5 + .625] = 0.4375; APGR = (.4375 - .25)/.5 = 0.375 < 0.5
    assert rep.router.apgr == pytest.approx(0.375)


def test_ties_are_one_step_with_linear_interpolation():
    # One tie group {p0, p1} then {p2, p3}: the threshold router sends both or neither.
    scores = np.array([0.9, 0.9, 0.1, 0.1])
    curve = strong_share_curve(scores, WEAK, STRONG)
    np.testing.assert_allclose(curve.shares, [0, 0.5, 1])
    # share .5: p0, p1 strong -> mean([1, 1, 0, 0]) = 0.5; share 1: strong mean 0.75
    np.testing.assert_allclose(curve.quality, [0.25, 0.5, 0.75])
    # A constant router is one tie group: exactly the random line, APGR 0.5.
    const = strong_share_curve(np.zeros(4), WEAK, STRONG)
    assert apgr(const, 0.25, 0.75) == pytest.approx(0.5)


def test_tie_interpolation_equals_expected_random_tie_break():
    # Inside a tie group, the curve must equal the mean over every tie-consistent order of top-k quality.
    rng = np.random.default_rng(3)
    weak, strong = rng.random(6), rng.random(6)
    scores = np.array([2.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    curve = strong_share_curve(scores, weak, strong)
    gains = strong - weak
    for k in range(7):
        per_order = []
        for mid in itertools.permutations([1, 2, 3]):
            for tail in itertools.permutations([4, 5]):
                order = [0, *mid, *tail]
                per_order.append(weak.mean() + gains[order[:k]].sum() / 6)
        assert quality_at_share(curve, k / 6) == pytest.approx(np.mean(per_order))


def test_curve_matches_routellm_threshold_rule_at_every_threshold():
    # RouteLLM routes strong iff win-rate >= threshold; at every distinct threshold the realised
    # (share, accuracy) point must lie on our curve, with integer-valued scores to force ties.
    rng = np.random.default_rng(0)
    n = 200
    scores = rng.integers(0, 12, size=n).astype(float)
    weak = (rng.random(n) < 0.5).astype(float)
    strong = (rng.random(n) < 0.7).astype(float)
    curve = strong_share_curve(scores, weak, strong)
    for t in np.unique(scores):
        strong_mask = scores >= t
        accuracy = np.where(strong_mask, strong, weak).mean()
        assert quality_at_share(curve, strong_mask.mean()) == pytest.approx(accuracy)


def test_oracle_apgr_dominates_any_router():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        weak, strong = rng.random(n), rng.random(n)
        if weak.mean() >= strong.mean():
            weak, strong = strong, weak
        oracle = oracle_curve(weak, strong)
        for scores in (rng.random(n), strong - weak, weak - strong, rng.integers(0, 3, n).astype(float)):
            router = strong_share_curve(scores, weak, strong)
            assert apgr(oracle, weak.mean(), strong.mean()) >= apgr(router, weak.mean(), strong.mean()) - 1e-12
            # and pointwise: the oracle curve is above the router's at every share
            assert np.all(quality_at_share(oracle, SHARE_GRID) >= quality_at_share(router, SHARE_GRID) - 1e-12)


def test_cpt_is_first_crossing_on_a_non_monotone_curve():
    # Per-prompt gains 1, -1, 1, 1 in routing order: the curve rises, dips, and rises again.
    weak = np.array([0.0, 1.0, 0.0, 0.0])
    strong = np.array([1.0, 0.0, 1.0, 1.0])
    # weak mean .25, strong mean .75; ordered gains 1, -1, 1, 1 -> quality .25, .5, .25, .5, .75
    curve = strong_share_curve(np.array([4.0, 3.0, 2.0, 1.0]), weak, strong)
    np.testing.assert_allclose(curve.quality, [0.25, 0.5, 0.25, 0.5, 0.75])
    # PGR .5 is first reached at share .25 (later dips do not matter)
    assert cpt(curve, 0.25, 0.75, 0.5) == pytest.approx(0.25)
    # PGR .8: only on the last segment, share .75 + (.8-.5)/(1-.5) * .25 = 0.9
    assert cpt(curve, 0.25, 0.75, 0.8) == pytest.approx(0.9)
    assert np.isnan(cpt(curve, 0.25, 0.75, 1.5))


def test_zero_gap_makes_pgr_metrics_nan_but_keeps_auc():
    weak = np.array([0.5, 0.5])
    rep = binary_report(np.array([1.0, 0.0]), weak, weak.copy(), n_bootstrap=0)
    assert np.isnan(rep.router.apgr) and np.isnan(rep.router.cpt50_share) and np.isnan(rep.random.apgr)
    assert rep.router.auc == pytest.approx(0.5)


def test_random_router_empirical_apgr_converges_to_analytic_half(data_dir):
    # Real outcomes: RouteLLM's GSM8K responses (Mixtral-8x7B weak, GPT-4 strong, per-prompt correctness).
    path = data_dir / "routellm" / "gsm8k" / "gsm8k_responses.csv"
    csv.field_size_limit(2**31 - 1)
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    weak = np.array([r["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "True" for r in rows], dtype=float)
    strong = np.array([r["gpt-4-1106-preview"] == "True" for r in rows], dtype=float)
    rng = np.random.default_rng(0)
    draws = np.array([apgr(strong_share_curve(rng.random(len(weak)), weak, strong), weak.mean(), strong.mean())
                      for _ in range(300)])
    standard_error = draws.std(ddof=1) / np.sqrt(len(draws))
    assert standard_error < 0.005
    assert abs(draws.mean() - 0.5) < 4 * standard_error
    # RouteLLM's get_optimal_accuracy on the same data: (weak correct + min(calls, #weak wrong & strong right)) / n
    n = len(weak)
    only_strong = int(((weak == 0) & (strong == 1)).sum())
    oracle = oracle_curve(weak, strong)
    for share in (0.0, 0.05, 0.1, 0.3, 1.0):
        expected = (weak.sum() + min(share * n, only_strong)) / n
        assert quality_at_share(oracle, share) == pytest.approx(expected)


def test_report_to_dict_is_json_with_intervals_and_grid_curves():
    rng = np.random.default_rng(2)
    n = 120
    weak = (rng.random(n) < 0.4).astype(float)
    strong = (rng.random(n) < 0.8).astype(float)
    scores = (strong - weak) + rng.normal(0, 0.8, n)
    rep = binary_report(scores, weak, strong, n_bootstrap=200, seed=7)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["router"]["apgr"] == pytest.approx(rep.router.apgr)
    assert len(d["curve"]["strong_share"]) == len(d["curve"]["router_quality"]) == 101
    assert d["curve"]["router_quality"][0] == pytest.approx(weak.mean())
    assert d["curve"]["router_quality"][-1] == pytest.approx(strong.mean())
    for key in ("apgr", "auc", "cpt50_share", "cpt80_share", "oracle_apgr", "always_strong_quality"):
        iv = d["intervals"][key]
        assert iv["lo"] <= iv["point"] <= iv["hi"], key
        assert iv["n_resamples"] == 200 and iv["seed"] == 7
    assert rep.router.apgr > 0.5  # the scores carry signal
    assert auc(rep.router_curve) == pytest.approx(d["router"]["auc"])


@pytest.mark.parametrize(
    "router, weak, strong, match",
    [
        ([0.1, 0.2], [0.0], [1.0, 1.0], "one entry per prompt"),
        ([0.1, float("nan")], [0.0, 1.0], [1.0, 1.0], r"router_scores\[1\] is nan"),
        ([], [], [], "no prompts"),
        ([[0.1]], [0.0], [1.0], "1-D"),
    ],
)
def test_bad_inputs_raise_data_error(router, weak, strong, match):
    with pytest.raises(DataError, match=match):
        binary_report(np.array(router), np.array(weak), np.array(strong), n_bootstrap=0)
