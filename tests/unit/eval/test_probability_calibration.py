"""ECE, Brier score and reliability bins on tiny hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routerforge.errors import DataError
from routerforge.eval.probability_calibration import (
    brier_score,
    calibration_report,
    expected_calibration_error,
    reliability_bins,
)

PROBS = np.array([0.1, 0.15, 0.8, 0.9])
OUTCOMES = np.array([0.0, 1.0, 1.0, 1.0])


def test_ece_and_brier_by_hand():
    # 10 bins: .1 and .15 -> bin 1 (mean p .125, observed .5); .8 -> bin 8; .9 -> bin 9.
    # ECE = 2/4*|.5-.125| + 1/4*|1-.8| + 1/4*|1-.9| = .1875 + .05 + .025 = 0.2625
    assert expected_calibration_error(PROBS, OUTCOMES) == pytest.approx(0.2625)
    # Brier = (.1^2 + .85^2 + .2^2 + .1^2)/4 = (.01 + .7225 + .04 + .01)/4 = 0.195625
    assert brier_score(PROBS, OUTCOMES) == pytest.approx(0.195625)
    # 1 bin: |mean y - mean p| = |.75 - .4875| = 0.2625 as well; 4 bins: .1,.15 -> 0; .8,.9 -> 3:
    # 2/4*.375 + 2/4*|1-.85| = .1875 + .075 = 0.2625 (this data happens to agree at every M).
    assert expected_calibration_error(PROBS, OUTCOMES, n_bins=1) == pytest.approx(0.2625)
    assert expected_calibration_error(PROBS, OUTCOMES, n_bins=4) == pytest.approx(0.2625)


def test_bin_count_changes_ece_when_bins_mix_errors():
    probs = np.array([0.2, 0.4])
    outcomes = np.array([0.4, 0.2])
    # 10 bins: each alone: (|.4-.2| + |.2-.4|)/2 = 0.2; one bin: |.3 - .3| = 0
    assert expected_calibration_error(probs, outcomes, 10) == pytest.approx(0.2)
    assert expected_calibration_error(probs, outcomes, 1) == pytest.approx(0.0)


def test_perfectly_calibrated_constant():
    probs = np.full(10, 0.3)
    outcomes = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    assert expected_calibration_error(probs, outcomes) == pytest.approx(0.0)
    # Brier = .3 * .7^2 + .7 * .3^2 = .147 + .063 = 0.21
    assert brier_score(probs, outcomes) == pytest.approx(0.21)


def test_reliability_bins_edges_counts_and_empty_bins():
    bins = reliability_bins(np.array([0.0, 0.3, 0.35, 0.99, 1.0]), np.array([0.0, 1.0, 0.0, 1.0, 1.0]), n_bins=5)
    np.testing.assert_allclose(bins.lower, [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(bins.upper, [0.2, 0.4, 0.6, 0.8, 1.0])
    # 0.0 -> bin 0; .3, .35 -> bin 1; .99 and 1.0 (closed right end) -> bin 4
    np.testing.assert_array_equal(bins.count, [1, 2, 0, 0, 2])
    np.testing.assert_allclose(bins.mean_predicted[[0, 1, 4]], [0.0, 0.325, 0.995])
    np.testing.assert_allclose(bins.observed_frequency[[0, 1, 4]], [0.0, 0.5, 1.0])
    assert np.isnan(bins.mean_predicted[2]) and np.isnan(bins.observed_frequency[3])
    d = json.loads(json.dumps(bins.to_dict()))
    assert d["mean_predicted"][2] is None


def test_report_with_bootstrap_and_soft_labels():
    rng = np.random.default_rng(0)
    probs = rng.random(400)
    outcomes = (rng.random(400) < probs).astype(float)  # calibrated by construction
    outcomes[:10] = 0.5  # ties as soft labels are allowed
    rep = calibration_report(probs, outcomes, n_bootstrap=200, seed=3)
    assert rep.ece < 0.1
    assert rep.intervals["brier"].lo <= rep.brier <= rep.intervals["brier"].hi
    # The documented upward bias of ECE: on calibrated data the resampled ECEs sit above the estimate.
    assert rep.intervals["ece"].hi > rep.ece
    assert json.loads(json.dumps(rep.to_dict()))["n_bins"] == 10
    # A miscalibrated router (overconfident by .2 everywhere) has a large ECE, and there the bias is
    # small relative to the error, so the interval brackets the estimate.
    over = calibration_report(np.clip(probs + 0.2, 0, 1), outcomes, n_bootstrap=200, seed=3)
    assert over.ece > 0.12
    assert over.intervals["ece"].lo <= over.ece <= over.intervals["ece"].hi


@pytest.mark.parametrize(
    "probs, outcomes, match",
    [
        ([0.5, 1.2], [0, 1], r"probs\[1\] = 1.2 is not a probability"),
        ([0.5, 0.5], [0, 2], r"outcomes\[1\] = 2.0"),
        ([0.5], [0, 1], "aligned"),
        ([], [], "empty"),
        ([np.nan], [0], "probs"),
    ],
)
def test_bad_inputs(probs, outcomes, match):
    with pytest.raises(DataError, match=match):
        calibration_report(np.array(probs, dtype=float), np.array(outcomes, dtype=float), n_bootstrap=0)


def test_bad_bin_count():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(PROBS, OUTCOMES, n_bins=0)
