"""Multi-model metrics: the cost-weight rule, the non-decreasing convex hull, AIQ and budgets, by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routerforge.errors import DataError
from routerforge.eval.multi import (
    QualityCostHull,
    aiq,
    default_cost_weights,
    hull_quality_at,
    multi_report,
    non_decreasing_convex_hull,
    route_by_cost_weight,
)

# Points (cost, quality): a concave chain (0,.2) (1,.6) (2,.7), a decreasing tail (3,.5),
# and two points under the chain: (0.5,.35) is below the chord (0,.2)-(1,.6) (0.4 there),
# (1.5,.3) is below everything.
COSTS = np.array([0.0, 1.0, 2.0, 3.0, 1.5, 0.5])
QUALITIES = np.array([0.2, 0.6, 0.7, 0.5, 0.3, 0.35])


def test_ndch_of_known_points():
    hull = non_decreasing_convex_hull(COSTS, QUALITIES)
    # Upper hull (0,.2) (1,.6) (2,.7) (3,.5), cut after the maximum (2,.7).
    np.testing.assert_allclose(hull.cost, [0, 1, 2])
    np.testing.assert_allclose(hull.quality, [0.2, 0.6, 0.7])


def test_ndch_drops_collinear_and_same_cost_points():
    hull = non_decreasing_convex_hull([0, 1, 2, 2, 1], [0.0, 0.5, 1.0, 0.2, 0.1])
    # (1, .5) is on the chord (0,0)-(2,1); (2,.2) and (1,.1) lose to better points at the same cost.
    np.testing.assert_allclose(hull.cost, [0, 2])
    np.testing.assert_allclose(hull.quality, [0.0, 1.0])
    # If the cheapest point is also the best, the hull is that single point (flat from there).
    single = non_decreasing_convex_hull([1, 2, 3], [0.9, 0.8, 0.5])
    np.testing.assert_allclose(single.cost, [1])
    assert aiq(single, (1, 3)) == pytest.approx(0.9)


def test_aiq_of_a_known_piecewise_curve():
    hull = non_decreasing_convex_hull(COSTS, QUALITIES)
    # Over [0, 3]: trapezoids (.2+.6)/2*1 = .4, (.6+.7)/2*1 = .65, flat .7*1 = .7 -> 1.75 / 3
    assert aiq(hull, (0, 3)) == pytest.approx(1.75 / 3)
    # Over [.5, 3]: R~(.5) = .4; (.4+.6)/2*.5 = .25, + .65 + .7 = 1.6 -> 1.6 / 2.5 = 0.64
    assert aiq(hull, (0.5, 3)) == pytest.approx(0.64)
    # Over [-1, 3]: [-1, 0) is unreachable and counts 0 -> 1.75 / 4
    assert aiq(hull, (-1, 3)) == pytest.approx(0.4375)
    # Degenerate range: the value at that cost
    assert aiq(hull, (1.5, 1.5)) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="c_min <= c_max"):
        aiq(hull, (3, 0))


def test_quality_at_budgets_interpolates_the_hull():
    hull = QualityCostHull(cost=np.array([0.0, 1.0, 2.0]), quality=np.array([0.2, 0.6, 0.7]))
    got = hull_quality_at(hull, np.array([-0.1, 0.0, 0.5, 1.5, 2.0, 10.0]))
    assert np.isnan(got[0])  # cheaper than any configuration: unreachable
    np.testing.assert_allclose(got[1:], [0.2, 0.4, 0.65, 0.7, 0.7])


def test_route_by_cost_weight_by_hand():
    pred = np.array([[0.2, 0.6, 0.9], [0.5, 0.5, 1.0]])
    price = np.array([1.0, 2.0, 10.0])
    choices = route_by_cost_weight(pred, price, [0.0, 0.04, 0.1, np.inf])
    # lambda 0: best predicted -> model 2 for both.
    # lambda .04: p0 utilities .16, .52, .50 -> 1; p1 .46, .42, .60 -> 2.
    # lambda .1:  p0 .1, .4, -.1 -> 1; p1 .4, .3, 0 -> 0.   lambda inf: cheapest -> 0.
    np.testing.assert_array_equal(choices, [[2, 2], [1, 2], [1, 0], [0, 0]])


def test_route_ties_go_to_the_cheaper_model():
    pred = np.array([[0.7, 0.7, 0.7]])
    np.testing.assert_array_equal(route_by_cost_weight(pred, np.array([3.0, 1.0, 2.0]), [0.0]), [[1]])
    # lambda = inf with equal prices: the higher predicted quality wins
    np.testing.assert_array_equal(
        route_by_cost_weight(np.array([[0.1, 0.9]]), np.array([1.0, 1.0]), [np.inf]), [[1]])
    with pytest.raises(ValueError, match=">= 0"):
        route_by_cost_weight(pred, np.array([3.0, 1.0, 2.0]), [-1.0])


def test_multi_report_by_hand_with_perfect_predictions():
    true = np.array([[0.2, 0.6, 0.9], [0.5, 0.5, 1.0]])
    price = np.array([1.0, 2.0, 10.0])
    rep = multi_report(true, true, price, models=["s", "m", "l"], cost_weights=[0.0, 0.04, 0.1, np.inf],
                       n_bootstrap=0)
    # Sweep points (mean cost, mean quality): lambda 0 -> (10, .95); .04 -> ((2+10)/2, (.6+1)/2) = (6, .8);
    # .1 -> ((2+1)/2, (.6+.5)/2) = (1.5, .55); inf -> (1, .35).
    np.testing.assert_allclose(rep.sweep_cost, [10, 6, 1.5, 1])
    np.testing.assert_allclose(rep.sweep_quality, [0.95, 0.8, 0.55, 0.35])
    # Models: s (1, .35), m (2, .55), l (10, .95). Cost range [1, 10].
    assert rep.cost_range == (1.0, 10.0)
    # Router hull: (1,.35) (1.5,.55) (6,.8) (10,.95); slopes .4, .0556, .0375: all vertices.
    np.testing.assert_allclose(rep.hull.cost, [1, 1.5, 6, 10])
    # AIQ = [(.35+.55)/2*.5 + (.55+.8)/2*4.5 + (.8+.95)/2*4] / 9 = (.225 + 3.0375 + 3.5) / 9
    assert rep.aiq == pytest.approx((0.225 + 3.0375 + 3.5) / 9)
    # Zero router: hull of (1,.35) (2,.55) (10,.95): slopes .2, .05 -> AIQ = [(.35+.55)/2 + (.55+.95)/2*8]/9
    assert rep.zero_router_aiq == pytest.approx((0.45 + 6.0) / 9)
    assert rep.aiq > rep.zero_router_aiq
    # Predictions equal the truth, so the router is the oracle up to the lambda grid: oracle >= router.
    assert rep.oracle_aiq >= rep.aiq - 1e-12
    # Budget "cost of m" = 2: on segment (1.5,.55)-(6,.8): .55 + (.5/4.5)*.25
    assert rep.quality_at_budget["cost_of:m"] == pytest.approx(0.55 + 0.25 / 9)
    assert rep.quality_at_budget["cost_of:s"] == pytest.approx(0.35)
    assert rep.quality_at_budget["cost_of:l"] == pytest.approx(0.95)


def test_oracle_dominates_noisy_routers_and_intervals_contain_points():
    rng = np.random.default_rng(0)
    n, m = 300, 4
    true = (rng.random((n, m)) < np.array([0.4, 0.55, 0.7, 0.85])).astype(float)
    price = np.array([0.0002, 0.001, 0.004, 0.02])
    good = true + rng.normal(0, 0.4, (n, m))
    bad = rng.random((n, m))
    rep_good = multi_report(good, true, price, n_bootstrap=100, seed=1)
    rep_bad = multi_report(bad, true, price, n_bootstrap=0)
    assert rep_good.oracle_aiq >= rep_good.aiq > rep_bad.aiq
    for key, iv in rep_good.intervals.items():
        assert iv.lo <= iv.point <= iv.hi, key
    d = json.loads(json.dumps(rep_good.to_dict()))
    assert d["sweep"]["cost_weight"][-1] == "inf"
    assert set(d["models"]) == {"model_0", "model_1", "model_2", "model_3"}
    # Per-prompt costs (n, m) work as well as per-model prices.
    per_prompt = np.broadcast_to(price, (n, m)) * rng.uniform(0.5, 1.5, (n, m))
    rep_pp = multi_report(good, true, per_prompt, n_bootstrap=0)
    assert 0 < rep_pp.aiq <= rep_pp.oracle_aiq + 1e-12


def test_default_cost_weights_span_both_ends():
    pred = np.array([[0.1, 0.9], [0.3, 0.5]])
    weights = default_cost_weights(pred, np.array([1.0, 3.0]))
    assert weights[0] == 0 and np.isinf(weights[-1]) and np.all(np.diff(weights) > 0)
    # lambda_0 = median quality spread (.8, .2 -> .5) / cost spread 2 = .25; grid spans 1e-3..1e3 of it
    assert weights[1] == pytest.approx(0.25e-3) and weights[-2] == pytest.approx(0.25e3)
    # Equal prices: cost cannot change a choice
    np.testing.assert_array_equal(default_cost_weights(pred, np.array([2.0, 2.0])), [0.0, np.inf])


@pytest.mark.parametrize(
    "pred, true, costs, match",
    [
        (np.zeros((2, 2)), np.zeros((2, 3)), np.ones(2), "same shape"),
        (np.zeros((2, 2)), np.array([[0.0, np.nan], [0, 0]]), np.ones(2), r"true_quality\[0, 1\] is nan"),
        (np.zeros((2, 2)), np.zeros((2, 2)), np.array([1.0, -1.0]), ">= 0"),
        (np.zeros((2, 2)), np.zeros((2, 2)), np.ones(3), "shape"),
    ],
)
def test_bad_inputs_raise_data_error(pred, true, costs, match):
    with pytest.raises(DataError, match=match):
        multi_report(pred, true, costs, n_bootstrap=0)
