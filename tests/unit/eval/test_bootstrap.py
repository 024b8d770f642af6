"""Seeded percentile bootstrap: determinism, coverage of the point, known-width cases, NaN handling."""

from __future__ import annotations

import numpy as np
import pytest

from routerforge.errors import DataError
from routerforge.eval.binary import binary_headline_metrics
from routerforge.eval.bootstrap import bootstrap_metric, bootstrap_metrics


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x))


def test_deterministic_under_a_seed_and_seed_matters():
    x = np.random.default_rng(0).normal(size=200)
    a = bootstrap_metric(_mean, (x,), n_resamples=300, seed=5)
    b = bootstrap_metric(_mean, (x,), n_resamples=300, seed=5)
    c = bootstrap_metric(_mean, (x,), n_resamples=300, seed=6)
    assert (a.lo, a.hi) == (b.lo, b.hi)
    assert (a.lo, a.hi) != (c.lo, c.hi)
    assert a.point == pytest.approx(x.mean())
    assert a.lo <= a.point <= a.hi


def test_interval_width_matches_normal_theory_for_a_mean():
    # For the mean of n iid N(0, 1) draws the 95% interval is about +- 1.96 / sqrt(n).
    x = np.random.default_rng(1).normal(size=400)
    iv = bootstrap_metric(_mean, (x,), n_resamples=2000, seed=0)
    expected_width = 2 * 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert (iv.hi - iv.lo) == pytest.approx(expected_width, rel=0.15)
    assert iv.confidence == 0.95 and iv.n_resamples == 2000 and iv.n_failed == 0


def test_constant_data_gives_a_zero_width_interval():
    iv = bootstrap_metric(_mean, (np.full(30, 0.7),), n_resamples=50)
    assert iv.lo == pytest.approx(0.7) and iv.hi == pytest.approx(0.7)


def test_aligned_arrays_resample_prompts_together():
    # metric = mean(a - b) where a == b per prompt: any joint resample gives exactly 0.
    a = np.random.default_rng(2).random(50)
    iv = bootstrap_metric(lambda x, y: float(np.mean(x - y)), (a, a.copy()), n_resamples=100)
    assert iv.lo == iv.hi == 0.0


def test_nan_resamples_are_dropped_and_counted():
    # APGR is NaN on a resample where weak and strong means coincide; with 3 prompts that happens.
    weak = np.array([0.0, 1.0, 0.0])
    strong = np.array([1.0, 1.0, 0.0])
    router = np.array([0.9, 0.5, 0.1])
    out = bootstrap_metrics(binary_headline_metrics, (router, weak, strong), n_resamples=300, seed=0)
    assert out["apgr"].n_failed > 0
    assert out["always_weak_quality"].n_failed == 0
    assert out["apgr"].lo <= out["apgr"].point <= out["apgr"].hi


def test_all_failed_gives_nan_interval():
    iv = bootstrap_metric(lambda x: float("nan"), (np.ones(5),), n_resamples=10)
    assert np.isnan(iv.point) and np.isnan(iv.lo) and np.isnan(iv.hi) and iv.n_failed == 10


def test_bad_arguments():
    with pytest.raises(DataError, match="share their first axis"):
        bootstrap_metric(_mean, (np.ones(3), np.ones(4)))
    with pytest.raises(DataError, match="zero prompts"):
        bootstrap_metric(_mean, (np.ones(0),))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_metric(_mean, (np.ones(3),), n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_metric(_mean, (np.ones(3),), confidence=1.0)
