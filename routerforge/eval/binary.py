"""Binary strong/weak routing: quality vs. share of strong calls, PGR, APGR, CPT, AUC and references.

Source: Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data" (arXiv 2406.18665,
Sec. 4.1 "Metrics"), and its evaluation code, lm-sys/RouteLLM ``routellm/evals/evaluate.py`` and
``routellm/evals/benchmarks.py``.

Setting. Each prompt i has a weak-model score w_i and a strong-model score s_i (quality in [0, 1] in
our outcome tables, any real scale works), and a router score r_i: higher means "more in need of the
strong model" (RouteLLM's P(win_strong | q); any router family's number works, only its order is
used). A threshold router sends prompt i to the strong model iff r_i >= alpha. Its quality is the mean
routed score and its cost is the share of prompts sent to the strong model, c in [0, 1].

Definitions (RouteLLM, Sec. 4.1):

* PGR(R) = (q(R) - q(weak)) / (q(strong) - q(weak)), the performance gap recovered;
  q(weak) = mean(w), q(strong) = mean(s) are the always-weak and always-strong references.
* APGR = integral_0^1 PGR(R_c) dc, PGR averaged over the strong-call share. The paper approximates it
  with 10 equally spaced shares; RouteLLM's code takes ``np.trapz`` of accuracy over the strong
  percentages realised by 10 quantile thresholds (``pd.qcut``) and returns
  (AUC - weak_AUC) / (strong_AUC - weak_AUC). With shares spanning [0, 1] this equals
  (AUC - q(weak)) / (q(strong) - q(weak)), which is what we compute, exactly.
* CPT(x%) = the minimum share of strong calls needed to reach PGR = x% (the paper's wording).
* AUC = integral_0^1 q(R_c) dc, quality averaged over the share (``auc_metric`` in evaluate.py).

Conventions chosen here, and why:

* **The exact curve instead of 10 quantile thresholds.** Sorting prompts by router score (descending)
  and sending the top k to the strong model gives quality q(k) = q(weak) + (1/n) * sum of the top-k
  gains (s_i - w_i). We keep every threshold, so APGR/AUC/CPT carry no 10-point discretisation error
  and do not depend on a grid choice; RouteLLM's trapezoid over its 11 realised points is a coarser
  estimate of the same integral (it matches ours exactly when the curve is linear between its points).
* **Ties in router scores.** A threshold router cannot split a group of prompts with equal router
  scores: it sends all or none of them. So the curve's vertices sit at tie-group boundaries and the
  curve is linear in between. The linear segment is exactly the expected quality when the tie group is
  split uniformly at random, the same convention as ROC curves with tied scores (a diagonal segment),
  and the same interpolation RouteLLM's trapezoid applies between realised points. A router that
  outputs one constant therefore gets the random reference's straight line, APGR = 0.5.
* **Interpolation.** Quality at shares between vertices is linear interpolation (``np.interp``); all
  integrals are trapezoids over the vertices, which is exact for a piecewise-linear curve.
* **No share grid in the metrics.** Metrics use every vertex. Only `BinaryReport.to_dict` samples the
  curves, at the 101 shares 0, 0.01, ..., 1 (`SHARE_GRID`), to keep stored JSON small; plots draw
  the vertices.
* **CPT is the first crossing.** RouteLLM's code inverts the curve with ``np.interp(target, accuracy,
  strong_pct)``, which assumes accuracy increases with the share; a real router's curve can dip. We
  return the smallest share at which the piecewise-linear PGR curve reaches x (the paper's
  "minimum percentage of calls"), so CPT is well defined for any curve. Since PGR(1) = 1, CPT(x) <= 1
  for every x <= 1. Shares are fractions in [0, 1] (0.37 means 37% of prompts go to the strong model).
* **References on the same axes.** Random: a router that sends a uniformly random share c of prompts
  to the strong model has expected quality q(weak) + c * (q(strong) - q(weak)), so PGR(c) = c,
  APGR = 0.5, CPT(x) = x (computed analytically, no sampling). Oracle: the best quality reachable with
  *at most* a share c of strong calls: strong calls go to the prompts with the largest positive gains
  first, and never to a prompt where the strong model scores lower (RouteLLM's
  ``get_optimal_accuracy``). Its curve dominates every router's, so oracle APGR >= any router's APGR;
  it can exceed 1, because the oracle keeps the weak answer where the weak model is the better one.
  Always-weak and always-strong are the points (0, q(weak)) and (1, q(strong)), drawn as horizontal
  lines as in RouteLLM's plots.
* **Degenerate gap.** When q(strong) == q(weak), PGR is undefined: APGR and CPT are NaN (AUC is
  still defined). A negative gap (the "strong" model scores lower) is computed by the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from routerforge.errors import DataError
from routerforge.eval.bootstrap import BootstrapInterval, bootstrap_metrics

SHARE_GRID = np.linspace(0.0, 1.0, 101)
"""Strong-call shares (0, 0.01, ..., 1) at which `BinaryReport.to_dict` samples the curves."""


@dataclass(frozen=True, eq=False)
class StrongShareCurve:
    """A piecewise-linear curve: mean quality (score units) vs. share of strong calls in [0, 1].

    `shares` increases from 0 to 1; `quality[j]` is the mean routed score at `shares[j]`.
    """

    shares: np.ndarray
    quality: np.ndarray


@dataclass(frozen=True)
class CurveMetrics:
    """RouteLLM's summary numbers of one strong-share curve (shares are fractions in [0, 1])."""

    apgr: float
    auc: float
    cpt50_share: float
    cpt80_share: float


@dataclass(frozen=True, eq=False)
class BinaryReport:
    """Binary routing metrics of one router with its references, and bootstrap intervals.

    `intervals` maps every key of `binary_headline_metrics` to its percentile-bootstrap interval over
    prompts (empty when the report was built with ``n_bootstrap=0``).
    """

    n_prompts: int
    weak_mean: float
    strong_mean: float
    router: CurveMetrics
    oracle: CurveMetrics
    random: CurveMetrics
    router_curve: StrongShareCurve
    oracle_curve: StrongShareCurve
    intervals: dict[str, BootstrapInterval] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict: headline numbers, references, intervals and curves on `SHARE_GRID`."""
        return {
            "n_prompts": self.n_prompts,
            "always_weak_quality": self.weak_mean,
            "always_strong_quality": self.strong_mean,
            "router": _metrics_dict(self.router),
            "oracle": _metrics_dict(self.oracle),
            "random": _metrics_dict(self.random),
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            "curve": {
                "strong_share": SHARE_GRID.tolist(),
                "router_quality": quality_at_share(self.router_curve, SHARE_GRID).tolist(),
                "oracle_quality": quality_at_share(self.oracle_curve, SHARE_GRID).tolist(),
                "random_quality": (self.weak_mean + SHARE_GRID * (self.strong_mean - self.weak_mean)).tolist(),
            },
        }


def _metrics_dict(m: CurveMetrics) -> dict:
    return {"apgr": m.apgr, "auc": m.auc, "cpt50_share": m.cpt50_share, "cpt80_share": m.cpt80_share}


def _as_float_vector(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array aligned with the prompts, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise DataError(f"{name}[{bad}] is {arr[bad]}; every value must be finite (drop or fix that prompt).")
    return arr


def validate_binary_inputs(router_scores: np.ndarray, weak_scores: np.ndarray, strong_scores: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 copies of the three per-prompt arrays; DataError if they are empty, misaligned or not finite."""
    r = _as_float_vector(router_scores, "router_scores")
    w = _as_float_vector(weak_scores, "weak_scores")
    s = _as_float_vector(strong_scores, "strong_scores")
    if not (len(r) == len(w) == len(s)):
        raise DataError(f"router_scores, weak_scores and strong_scores must have one entry per prompt; "
                        f"got lengths {len(r)}, {len(w)}, {len(s)}.")
    if len(r) == 0:
        raise DataError("no prompts to evaluate: the score arrays are empty.")
    return r, w, s


def _curve_from_sorted_gains(sorted_keys: np.ndarray, sorted_gains: np.ndarray, weak_mean: float,
                             strong_end: float) -> StrongShareCurve:
    """Vertices at the boundaries of runs of equal `sorted_keys`; `strong_end` is the exact value at share 1."""
    n = len(sorted_gains)
    cum = np.concatenate([[0.0], np.cumsum(sorted_gains)])
    boundaries = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    ks = np.concatenate([[0], boundaries, [n]])
    quality = weak_mean + cum[ks] / n
    # Pin the end points to the exact means so PGR(0) = 0 and PGR(1) = 1 hold without rounding drift.
    quality[0] = weak_mean
    quality[-1] = strong_end
    return StrongShareCurve(shares=ks / n, quality=quality)


def strong_share_curve(router_scores: np.ndarray, weak_scores: np.ndarray, strong_scores: np.ndarray
                       ) -> StrongShareCurve:
    """Quality vs. strong-call share of the threshold router "strong iff router score >= alpha".

    Vertices are at tie-group boundaries of the router scores (see the module docstring).
    """
    r, w, s = validate_binary_inputs(router_scores, weak_scores, strong_scores)
    order = np.argsort(-r, kind="stable")
    return _curve_from_sorted_gains(r[order], (s - w)[order], float(w.mean()), float(s.mean()))


def oracle_curve(weak_scores: np.ndarray, strong_scores: np.ndarray) -> StrongShareCurve:
    """Best quality with at most a share c of strong calls (RouteLLM's ``get_optimal_accuracy``).

    Strong calls go to the largest positive gains first; a prompt whose strong score is not higher
    keeps the weak answer, so the curve is flat once the positive gains are used up.
    """
    w = _as_float_vector(weak_scores, "weak_scores")
    s = _as_float_vector(strong_scores, "strong_scores")
    if len(w) != len(s) or len(w) == 0:
        raise DataError(f"weak_scores and strong_scores must be non-empty and aligned; got {len(w)} and {len(s)}.")
    gains = np.sort(np.clip(s - w, 0.0, None))[::-1]
    w_mean = float(w.mean())
    return _curve_from_sorted_gains(gains, gains, w_mean, w_mean + float(gains.sum()) / len(gains))


def quality_at_share(curve: StrongShareCurve, shares: np.ndarray | float) -> np.ndarray:
    """Curve quality at the given strong-call shares (linear between vertices; shares clipped to [0, 1])."""
    return np.interp(np.clip(np.asarray(shares, dtype=np.float64), 0.0, 1.0), curve.shares, curve.quality)


def pgr(quality: np.ndarray | float, weak_mean: float, strong_mean: float) -> np.ndarray | float:
    """Performance gap recovered, (q - q_weak) / (q_strong - q_weak); NaN when the gap is zero."""
    gap = strong_mean - weak_mean
    if gap == 0:
        return np.full_like(np.asarray(quality, dtype=np.float64), np.nan)
    return (np.asarray(quality, dtype=np.float64) - weak_mean) / gap


def auc(curve: StrongShareCurve) -> float:
    """Area under quality vs. share over [0, 1] (RouteLLM ``auc_metric``), exact for the piecewise-linear curve."""
    return float(np.trapezoid(curve.quality, curve.shares))


def apgr(curve: StrongShareCurve, weak_mean: float, strong_mean: float) -> float:
    """Average PGR over the share: (AUC - q_weak) / (q_strong - q_weak); NaN when the gap is zero."""
    gap = strong_mean - weak_mean
    if gap == 0:
        return float("nan")
    return (auc(curve) - weak_mean) / gap


def cpt(curve: StrongShareCurve, weak_mean: float, strong_mean: float, target_pgr: float) -> float:
    """Call-performance threshold: the smallest strong-call share at which PGR reaches `target_pgr`.

    `target_pgr` is a fraction (0.5 for CPT(50%)). First crossing of the piecewise-linear PGR curve,
    interpolated inside the crossing segment; NaN if the gap is zero or the target is never reached.
    """
    values = pgr(curve.quality, weak_mean, strong_mean)
    # Tolerance for rounding in the cumulative sums, so that PGR = 1 at share 1 always counts as reached.
    reached = np.flatnonzero(values >= target_pgr - 1e-12)
    if len(reached) == 0:
        return float("nan")
    j = int(reached[0])
    if j == 0:
        return 0.0
    p0, p1 = values[j - 1], values[j]
    s0, s1 = curve.shares[j - 1], curve.shares[j]
    frac = min(max((target_pgr - p0) / (p1 - p0), 0.0), 1.0)
    return float(s0 + frac * (s1 - s0))


def curve_metrics(curve: StrongShareCurve, weak_mean: float, strong_mean: float) -> CurveMetrics:
    """APGR, AUC, CPT(50%) and CPT(80%) of one curve."""
    return CurveMetrics(
        apgr=apgr(curve, weak_mean, strong_mean),
        auc=auc(curve),
        cpt50_share=cpt(curve, weak_mean, strong_mean, 0.5),
        cpt80_share=cpt(curve, weak_mean, strong_mean, 0.8),
    )


def random_metrics(weak_mean: float, strong_mean: float) -> CurveMetrics:
    """The random router's metrics, analytically: quality q_weak + c (q_strong - q_weak), so PGR(c) = c."""
    defined = strong_mean != weak_mean
    return CurveMetrics(
        apgr=0.5 if defined else float("nan"),
        auc=(weak_mean + strong_mean) / 2.0,
        cpt50_share=0.5 if defined else float("nan"),
        cpt80_share=0.8 if defined else float("nan"),
    )


def binary_headline_metrics(router_scores: np.ndarray, weak_scores: np.ndarray, strong_scores: np.ndarray
                            ) -> dict[str, float]:
    """Every headline number of a binary evaluation as a flat dict (what the bootstrap resamples).

    Keys: apgr, auc, cpt50_share, cpt80_share (the router), oracle_apgr, oracle_auc,
    oracle_cpt50_share, oracle_cpt80_share, random_auc, always_weak_quality, always_strong_quality.
    """
    r, w, s = validate_binary_inputs(router_scores, weak_scores, strong_scores)
    w_mean, s_mean = float(w.mean()), float(s.mean())
    router = curve_metrics(strong_share_curve(r, w, s), w_mean, s_mean)
    oracle = curve_metrics(oracle_curve(w, s), w_mean, s_mean)
    return {
        "apgr": router.apgr,
        "auc": router.auc,
        "cpt50_share": router.cpt50_share,
        "cpt80_share": router.cpt80_share,
        "oracle_apgr": oracle.apgr,
        "oracle_auc": oracle.auc,
        "oracle_cpt50_share": oracle.cpt50_share,
        "oracle_cpt80_share": oracle.cpt80_share,
        "random_auc": (w_mean + s_mean) / 2.0,
        "always_weak_quality": w_mean,
        "always_strong_quality": s_mean,
    }


def binary_report(router_scores: np.ndarray, weak_scores: np.ndarray, strong_scores: np.ndarray, *,
                  n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> BinaryReport:
    """Curves, metrics and references of a binary router, with seeded bootstrap intervals over prompts.

    `n_bootstrap` resamples (0 = no intervals); `confidence` is the interval's coverage (0.95 = 95%).
    """
    r, w, s = validate_binary_inputs(router_scores, weak_scores, strong_scores)
    w_mean, s_mean = float(w.mean()), float(s.mean())
    router_c = strong_share_curve(r, w, s)
    oracle_c = oracle_curve(w, s)
    intervals: dict[str, BootstrapInterval] = {}
    if n_bootstrap > 0:
        intervals = bootstrap_metrics(binary_headline_metrics, (r, w, s), n_resamples=n_bootstrap,
                                      confidence=confidence, seed=seed)
    return BinaryReport(
        n_prompts=len(r),
        weak_mean=w_mean,
        strong_mean=s_mean,
        router=curve_metrics(router_c, w_mean, s_mean),
        oracle=curve_metrics(oracle_c, w_mean, s_mean),
        random=random_metrics(w_mean, s_mean),
        router_curve=router_c,
        oracle_curve=oracle_c,
        intervals=intervals,
    )
