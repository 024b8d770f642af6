"""P(correct) baselines and their report (routerforge/eval/uncertainty_baselines.py), by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routerforge.data.hidden_states import parse_verbalized_confidence
from routerforge.errors import DataError
from routerforge.eval.uncertainty_baselines import (
    PlattScaler,
    auroc,
    binarize_scores,
    estimator_report,
    fit_platt,
    max_softmax_confidence,
    mean_logprob_confidence,
    random_confidence,
)


def test_auroc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert auroc(np.array([0.9, 0.4, 0.5, 0.1]), np.array([1, 1, 0, 0])) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5  # a tie is half a pair
    assert math.isnan(auroc(np.array([0.2, 0.3]), np.array([1, 1])))
    with pytest.raises(DataError, match="0/1"):
        auroc(np.array([0.2, 0.3]), np.array([0.5, 1]))


def test_confidence_transforms_by_hand():
    assert mean_logprob_confidence(np.array([-2.0, 0.0]), np.array([4, 0]))[0] == pytest.approx(math.exp(-0.5))
    assert math.isnan(mean_logprob_confidence(np.array([-2.0, 0.0]), np.array([4, 0]))[1])
    logits = np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    assert max_softmax_confidence(logits) == pytest.approx([0.7, 0.25])
    assert binarize_scores(np.array([0.0, 0.5, 1.0])).tolist() == [0.0, 1.0, 1.0]
    r = random_confidence(1000, seed=3)
    assert (r == random_confidence(1000, seed=3)).all() and 0.45 < r.mean() < 0.55


@pytest.mark.parametrize("text,expected", [("85", 0.85), (" 85%.", 0.85), ("0.3", 0.3), ("Confidence: 100", 1.0),
                                           ("I'd say 7 out of 10", 0.07), ("", None), ("sure!", None), ("250", None)])
def test_parse_verbalized_confidence(text, expected):
    value = parse_verbalized_confidence(text)
    if expected is None:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected)


def test_platt_scaling_recovers_a_known_distortion():
    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.02, 0.98, 20000)
    y = (rng.random(20000) < true_p).astype(float)
    distorted = 1 / (1 + np.exp(-2.0 * np.log(true_p / (1 - true_p)) - 1.0))  # a = 2, b = 1 applied to logit(p)
    scaler = fit_platt(distorted, y)
    assert scaler.a == pytest.approx(0.5, abs=0.05) and scaler.b == pytest.approx(-0.5, abs=0.07)
    assert np.abs(scaler(distorted) - true_p).max() < 0.05
    constant = fit_platt(np.full(4, 0.9), np.array([1.0, 1.0, 1.0, 1.0]))
    assert isinstance(constant, PlattScaler) and constant(np.array([0.2]))[0] > 0.99


def test_estimator_report_routing_curve_by_hand():
    confidence = np.array([0.9, 0.8, 0.3, 0.1])
    weak = np.array([1.0, 1.0, 0.0, 0.0])
    strong = np.array([1.0, 0.0, 1.0, 1.0])
    report = estimator_report(confidence, weak, weak, strong, n_bootstrap=0, n_bins=2)
    assert report["raw"]["auroc"] == 1.0
    # bins [0, .5): p .3, .1 (y 0, 0) -> gap .2; [.5, 1]: p .9, .8 (y 1, 1) -> gap .15; ECE = (.2 + .15) / 2
    assert report["raw"]["ece"] == pytest.approx(0.175)
    assert report["raw"]["brier"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.01) / 4)
    curve = dict(zip(report["routing"]["curve"]["escalation_share"], report["routing"]["curve"]["accuracy"],
                     strict=True))
    # escalate the least confident first: 0.1 then 0.3 (both strong-right) -> accuracy 0.5, 0.75, 1.0
    assert curve[0.0] == 0.5 and curve[0.25] == 0.75 and curve[0.5] == 1.0 and curve[1.0] == 0.75
    assert report["routing"]["strong_assumed_always_correct"] is False
    assumed = estimator_report(confidence, weak, weak, None, n_bootstrap=0)
    assert (assumed["routing"]["strong_assumed_always_correct"] is True
            and assumed["routing"]["curve"]["accuracy"][-1] == 1.0)
    with pytest.raises(DataError, match="probabilities"):
        estimator_report(np.array([np.nan, 0.5]), np.array([1.0, 0.0]), np.array([1.0, 0.0]), None)
