"""Seeded percentile bootstrap over prompts for any metric function.

Method: Efron & Tibshirani, "An Introduction to the Bootstrap" (1993), Ch. 13 (percentile interval).
The prompts are the sampling unit: each resample draws n prompt indices with replacement (the same
indices for every input array, so a prompt's router score, weak score and strong score stay
together), the metric is recomputed, and the interval is the (1 - confidence)/2 and
1 - (1 - confidence)/2 quantiles of the resampled values (numpy's default linear quantile).

Conventions:

* Deterministic: indices come from ``numpy.random.default_rng(seed)`` one resample at a time, so the
  same seed, inputs and `n_resamples` give the same interval on every machine and numpy 2.x release
  that keeps PCG64's stream (numpy guarantees that stream).
* A resample whose metric is NaN (e.g. a zero strong-weak gap makes APGR undefined on a tiny resample)
  is dropped and counted in `n_failed`; the quantiles use the rest. If every resample fails, or the
  point estimate itself is NaN, the interval is NaN.
* The point estimate is the metric on the original sample, not the bootstrap mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from routerforge.errors import DataError


@dataclass(frozen=True)
class BootstrapInterval:
    """A metric's point estimate and its percentile-bootstrap interval [lo, hi]."""

    point: float
    lo: float
    hi: float
    confidence: float
    n_resamples: int
    n_failed: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _check_arrays(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    if not arrays:
        raise ValueError("bootstrap needs at least one array aligned with the prompts")
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if n == 0:
        raise DataError("cannot bootstrap over zero prompts: the input arrays are empty.")
    if any(len(a) != n for a in arrs):
        raise DataError(f"bootstrap arrays must share their first axis (prompts); got lengths "
                        f"{[len(a) for a in arrs]}.")
    return arrs


def bootstrap_metrics(metric_fn: Callable[..., Mapping[str, float]], arrays: Sequence[np.ndarray], *,
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
                      ) -> dict[str, BootstrapInterval]:
    """Percentile-bootstrap intervals for every number `metric_fn(*arrays)` returns.

    `arrays` share their first axis (one row per prompt); `metric_fn` gets the resampled arrays in
    the same order and returns a dict of floats (the same keys every call). One resampling loop serves
    all keys, so all intervals come from the same resamples.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arrs = _check_arrays(arrays)
    n = len(arrs[0])
    point = {k: float(v) for k, v in metric_fn(*arrs).items()}
    samples = {k: np.empty(n_resamples) for k in point}
    rng = np.random.default_rng(seed)
    for b in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        values = metric_fn(*(a[idx] for a in arrs))
        for k in point:
            samples[k][b] = float(values[k])
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, BootstrapInterval] = {}
    for k, p in point.items():
        finite = samples[k][~np.isnan(samples[k])]
        n_failed = n_resamples - len(finite)
        if np.isnan(p) or len(finite) == 0:
            lo = hi = float("nan")
        else:
            lo, hi = (float(x) for x in np.quantile(finite, [alpha, 1.0 - alpha]))
        out[k] = BootstrapInterval(point=p, lo=lo, hi=hi, confidence=confidence, n_resamples=n_resamples,
                                   n_failed=n_failed, seed=seed)
    return out


def bootstrap_metric(metric_fn: Callable[..., float], arrays: Sequence[np.ndarray], *,
                     n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> BootstrapInterval:
    """Percentile-bootstrap interval for one scalar metric `metric_fn(*arrays)` (see `bootstrap_metrics`)."""
    result = bootstrap_metrics(lambda *a: {"value": metric_fn(*a)}, arrays, n_resamples=n_resamples,
                               confidence=confidence, seed=seed)
    return result["value"]
