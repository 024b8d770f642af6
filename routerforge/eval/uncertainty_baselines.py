"""P(correct) estimators of one LLM, compared on one report: AUROC, ECE, Brier and the routing curve.

An estimator gives each prompt a confidence c_i in [0, 1] that the (weak) model answers it correctly;
the outcome y_i is 1 when it did (score >= `correct_threshold`). Compared here:

* **probe**: a trained probe on the model's hidden states (training/train_probe.py);
* **mean token log-prob** (perplexity baseline): c = exp(mean log p(token)) = 1 / perplexity, over the
  prompt's tokens, or over the response's when one was scored (Kadavath et al., "Language Models (Mostly)
  Know What They Know", arXiv 2207.05221, use answer log-probs the same way);
* **maximum softmax probability** over the multiple-choice options (Hendrycks & Gimpel, arXiv 1610.02136):
  c = max_j softmax(option logits)_j;
* **verbalized confidence**: the model's own stated confidence (0-100, parsed from its generation; Tian
  et al., "Just Ask for Calibration", arXiv 2305.14975; Xiong et al., arXiv 2306.13063), when the LM can
  generate (parsed by `routerforge.data.hidden_states.parse_verbalized_confidence` when the features are
  extracted); unparsable answers count as 0.5 and the parse rate is reported;
* **random**: c ~ U(0, 1), seeded (AUROC 0.5 in expectation).

Metrics. AUROC of c against y (sklearn's `roc_auc_score`, ties = half credit) measures ranking; ECE and
Brier (`routerforge.eval.probability_calibration`) measure the probabilities. A raw self-reported confidence is often
badly calibrated while ranking well, so every estimator is also reported after **Platt scaling** fitted
on the selection split (a 1-D logistic regression on logit(c); Platt 1999): its AUROC is unchanged (a
monotone map) and its ECE/Brier say how good the signal is once calibrated. The probe is temperature-
scaled (Guo et al. 2017) on the same split by the recipe.

Routing curve. Escalating the prompts with the LOWEST confidence first gives accuracy vs. share escalated;
it is RouteLLM's quality vs. strong-call share (`routerforge.eval.binary`) with router score = -c, so
APGR/AUC are comparable with every other router family. Without the strong model's outcomes the strong
model is taken to be always right (stated in the report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from routerforge.errors import DataError
from routerforge.eval.binary import binary_report, quality_at_share
from routerforge.eval.bootstrap import bootstrap_metrics
from routerforge.eval.probability_calibration import DEFAULT_N_BINS, brier_score, expected_calibration_error

CURVE_SHARES = np.round(np.linspace(0.0, 1.0, 21), 2)
"""Escalation shares (0, 0.05, ..., 1) at which reports list routed accuracy."""

_CLIP = 1e-6


def auroc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the ROC curve of `confidence` for the event `correct` (NaN if only one class occurs)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(correct, dtype=np.float64)
    c = np.asarray(confidence, dtype=np.float64)
    if c.shape != y.shape or c.ndim != 1:
        raise DataError(f"confidence and correct must be aligned 1-D arrays; got {c.shape} and {y.shape}.")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise DataError("correct must be 0/1 (binarise scores with a threshold first).")
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, c))


def binarize_scores(scores: np.ndarray, correct_threshold: float = 0.5) -> np.ndarray:
    """1.0 where the outcome score (0..1) is >= `correct_threshold`, else 0.0."""
    s = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise DataError("outcome scores must be finite.")
    return (s >= correct_threshold).astype(np.float64)


def mean_logprob_confidence(logprob_sum: np.ndarray, token_count: np.ndarray) -> np.ndarray:
    """exp(mean token log-prob) = 1 / perplexity, in (0, 1]; NaN where no token was scored."""
    total = np.asarray(logprob_sum, dtype=np.float64)
    count = np.asarray(token_count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.exp(total / np.maximum(count, 1)), np.nan)


def max_softmax_confidence(option_logits: np.ndarray) -> np.ndarray:
    """max_j softmax(option logits)_j per question."""
    from routerforge.eval.conformal import option_softmax

    return option_softmax(option_logits).max(axis=1)


def random_confidence(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


@dataclass(frozen=True)
class PlattScaler:
    """c -> sigmoid(a * logit(c) + b), fitted by maximum likelihood on (c, y)."""

    a: float
    b: float

    def __call__(self, confidence: np.ndarray) -> np.ndarray:
        c = np.clip(np.asarray(confidence, dtype=np.float64), _CLIP, 1 - _CLIP)
        z = self.a * np.log(c / (1 - c)) + self.b
        return 1.0 / (1.0 + np.exp(-z))


def fit_platt(confidence: np.ndarray, correct: np.ndarray) -> PlattScaler:
    """Platt scaling of a confidence on one split (a 1-D logistic regression on logit(c), lightly regularised)."""
    from sklearn.linear_model import LogisticRegression

    c = np.clip(np.asarray(confidence, dtype=np.float64), _CLIP, 1 - _CLIP)
    y = np.asarray(correct, dtype=np.float64)
    if len(np.unique(y)) < 2:  # one class only: the constant base rate is the MLE
        p = float(np.clip(y.mean() if len(y) else 0.5, _CLIP, 1 - _CLIP))
        return PlattScaler(a=0.0, b=math.log(p / (1 - p)))
    model = LogisticRegression(C=100.0).fit(np.log(c / (1 - c))[:, None], y.astype(int))
    return PlattScaler(a=float(model.coef_[0, 0]), b=float(model.intercept_[0]))


def _point_metrics(c: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, float]:
    return {"auroc": auroc(c, y), "ece": expected_calibration_error(c, y, n_bins), "brier": brier_score(c, y)}


def estimator_report(confidence: np.ndarray, correct: np.ndarray, weak_scores: np.ndarray,
                     strong_scores: np.ndarray | None, *, calibrator: PlattScaler | None = None,
                     n_bins: int = DEFAULT_N_BINS, n_bootstrap: int = 200, seed: int = 0,
                     missing: np.ndarray | None = None) -> dict:
    """AUROC / ECE / Brier (raw and Platt-calibrated), bootstrap intervals, and the routing curve."""
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if c.shape != y.shape:
        raise DataError(f"confidence has {len(c)} prompts but correct has {len(y)}.")
    if len(c) == 0:
        raise DataError("no prompts to report on.")
    if not np.all(np.isfinite(c)) or (c < 0).any() or (c > 1).any():
        raise DataError("confidences must be probabilities in [0, 1] (fill unparsable ones first).")
    out: dict = {"n_prompts": int(len(c)), "accuracy": float(y.mean()), "raw": _point_metrics(c, y, n_bins)}
    if n_bootstrap > 0:
        intervals = bootstrap_metrics(lambda cc, yy: _point_metrics(cc, yy, n_bins), (c, y),
                                      n_resamples=n_bootstrap, seed=seed)
        out["raw_intervals"] = {k: v.to_dict() for k, v in intervals.items()}
    if calibrator is not None:
        calibrated = calibrator(c)
        out["platt"] = {**_point_metrics(calibrated, y, n_bins), "a": calibrator.a, "b": calibrator.b}
    if missing is not None:
        out["parse_rate"] = float(1.0 - np.asarray(missing, dtype=bool).mean())
    strong = np.ones_like(y) if strong_scores is None else np.asarray(strong_scores, dtype=np.float64)
    routing = binary_report(-c, np.asarray(weak_scores, dtype=np.float64), strong, n_bootstrap=0)
    out["routing"] = {
        "strong_assumed_always_correct": strong_scores is None,
        "apgr": routing.router.apgr, "auc": routing.router.auc,
        "cpt50_share": routing.router.cpt50_share, "cpt80_share": routing.router.cpt80_share,
        "always_weak_quality": routing.weak_mean, "always_strong_quality": routing.strong_mean,
        "oracle_apgr": routing.oracle.apgr,
        "curve": {"escalation_share": CURVE_SHARES.tolist(),
                  "accuracy": quality_at_share(routing.router_curve, CURVE_SHARES).tolist()},
    }
    return out
