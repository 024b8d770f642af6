"""Calibration of a router's probability outputs: ECE, Brier score and reliability-diagram data.

A router that outputs a probability p_i (e.g. RouteLLM's P(strong model wins | prompt), or the
probability that the weak model's answer is acceptable) is calibrated when, among prompts with
p_i ~ p, the event happens a fraction p of the time. `outcomes` y_i are the observed events in [0, 1]
(1 = happened; fractional values such as 0.5 for a tie are allowed and used as soft labels).

Definitions:

* Brier score (Brier, "Verification of forecasts expressed in terms of probability", Monthly Weather
  Review 1950): mean over prompts of (p_i - y_i)^2. Lower is better; 0.25 is what the constant p = 0.5
  scores on any binary outcome.
* Expected calibration error (Naeini, Cooper & Hauskrecht, AAAI 2015; Guo et al., "On Calibration of
  Modern Neural Networks", ICML 2017, Eq. 3): split [0, 1] into M equal-width bins B_1..B_M and take
  ECE = sum_b (|B_b| / n) * |mean(y in B_b) - mean(p in B_b)|. Empty bins contribute 0.
* Reliability diagram (DeGroot & Fienberg 1983; Guo et al. 2017 Fig. 1): per bin, the mean predicted
  probability vs. the observed frequency, with the bin's count.

Conventions chosen here, and why:

* **This is the binary ECE on p itself**, not the "top-label confidence" ECE of multi-class papers:
  a router's output is one probability of one event, so we calibrate that probability directly
  (for p < 0.5 the top-label form would silently flip the event).
* **M = 10 bins by default.** Guo et al. use 15; with the few thousand prompts of a typical routing
  eval set, 10 bins keep every populated bin at a few hundred prompts on average, so the per-bin
  frequency is not dominated by noise. Pass `n_bins` to change it; compare ECEs only at equal M.
* **Bin edges.** Bin b (0-based) is [b/M, (b+1)/M); p = 1 falls in the last bin. The index is
  floor(p * M), clipped to M - 1.
* **ECE intervals are biased upward near 0.** The binned ECE overestimates the true calibration error
  (an absolute value of noisy per-bin gaps; Kumar, Liang & Ma, NeurIPS 2019; Roelofs et al., AISTATS
  2022), and a bootstrap resample, with its duplicated prompts, overestimates it a little more. For a
  well-calibrated router the percentile interval can therefore lie entirely above the point estimate.
  Read it as "how much the estimate moves between samples", not as a bias-corrected interval; the
  Brier score, a plain mean, has no such bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from routerforge.errors import DataError
from routerforge.eval.bootstrap import BootstrapInterval, bootstrap_metrics

DEFAULT_N_BINS = 10
"""Equal-width bins of the ECE and the reliability diagram (see the module docstring for why 10)."""


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Reliability-diagram data, one entry per equal-width bin (NaN means for empty bins)."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray
    observed_frequency: np.ndarray

    def to_dict(self) -> dict:
        return {
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "count": self.count.tolist(),
            "mean_predicted": [None if np.isnan(x) else float(x) for x in self.mean_predicted],
            "observed_frequency": [None if np.isnan(x) else float(x) for x in self.observed_frequency],
        }


@dataclass(frozen=True, eq=False)
class CalibrationReport:
    """ECE, Brier score, reliability bins, and bootstrap intervals for "ece" and "brier"."""

    n_prompts: int
    n_bins: int
    ece: float
    brier: float
    bins: ReliabilityBins
    intervals: dict[str, BootstrapInterval] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "n_prompts": self.n_prompts,
            "n_bins": self.n_bins,
            "ece": self.ece,
            "brier": self.brier,
            "reliability": self.bins.to_dict(),
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
        }


def validate_probabilities(probs: np.ndarray, outcomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 copies; DataError if misaligned, empty, not finite, or outside [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(outcomes, dtype=np.float64)
    if p.ndim != 1 or p.shape != y.shape:
        raise DataError(f"probs and outcomes must be 1-D and aligned with the prompts; got {p.shape} and {y.shape}.")
    if len(p) == 0:
        raise DataError("no prompts to calibrate: probs is empty.")
    for name, arr in (("probs", p), ("outcomes", y)):
        bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name}[{i}] = {arr[i]} is not a probability in [0, 1].")
    return p, y


def _check_n_bins(n_bins: int) -> None:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")


def brier_score(probs: np.ndarray, outcomes: np.ndarray) -> float:
    """Mean squared difference between predicted probability and outcome (Brier 1950)."""
    p, y = validate_probabilities(probs, outcomes)
    return float(np.mean((p - y) ** 2))


def reliability_bins(probs: np.ndarray, outcomes: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> ReliabilityBins:
    """Per equal-width bin: edges, count, mean predicted probability and observed frequency."""
    _check_n_bins(n_bins)
    p, y = validate_probabilities(probs, outcomes)
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        mean_y = np.where(count > 0, sum_y / count, np.nan)
    edges = np.arange(n_bins + 1) / n_bins
    return ReliabilityBins(lower=edges[:-1], upper=edges[1:], count=count, mean_predicted=mean_p,
                           observed_frequency=mean_y)


def expected_calibration_error(probs: np.ndarray, outcomes: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """ECE with `n_bins` equal-width bins: sum_b (|B_b|/n) |observed_b - predicted_b|."""
    bins = reliability_bins(probs, outcomes, n_bins)
    filled = bins.count > 0
    weights = bins.count[filled] / bins.count.sum()
    return float(np.sum(weights * np.abs(bins.observed_frequency[filled] - bins.mean_predicted[filled])))


def calibration_report(probs: np.ndarray, outcomes: np.ndarray, *, n_bins: int = DEFAULT_N_BINS,
                       n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> CalibrationReport:
    """ECE, Brier and reliability bins, with seeded percentile-bootstrap intervals over prompts."""
    _check_n_bins(n_bins)
    p, y = validate_probabilities(probs, outcomes)

    def headline(pp: np.ndarray, yy: np.ndarray) -> dict[str, float]:
        return {"ece": expected_calibration_error(pp, yy, n_bins), "brier": brier_score(pp, yy)}

    point = headline(p, y)
    intervals = {} if n_bootstrap <= 0 else bootstrap_metrics(
        headline, (p, y), n_resamples=n_bootstrap, confidence=confidence, seed=seed)
    return CalibrationReport(n_prompts=len(p), n_bins=int(n_bins), ece=point["ece"], brier=point["brier"],
                             bins=reliability_bins(p, y, n_bins), intervals=intervals)
