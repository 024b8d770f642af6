"""CP-Router (routerforge.eval.conformal): hand-computed cases and a coverage check by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routerforge.errors import DataError
from routerforge.eval.conformal import (
    binary_entropy,
    conformal_quantile,
    conformal_rank,
    coverage,
    cp_router_report,
    fbe,
    full_entropy,
    nonconformity_scores,
    option_softmax,
    prediction_sets,
    select_alpha_fbe,
)

# Four calibration questions, four options; the correct options are 0, 1, 2, 3.
CAL_PROBS = np.array([[0.70, 0.10, 0.10, 0.10],
                      [0.40, 0.40, 0.10, 0.10],
                      [0.20, 0.50, 0.20, 0.10],
                      [0.25, 0.25, 0.25, 0.25]])
CAL_LABELS = np.array([0, 1, 2, 3])
# scores 1 - p[y]: 0.30, 0.60, 0.80, 0.75
ROUTE_PROBS = np.array([[0.90, 0.05, 0.03, 0.02],
                        [0.45, 0.35, 0.10, 0.10],
                        [0.30, 0.30, 0.20, 0.20],
                        [0.19, 0.27, 0.27, 0.27]])
ROUTE_LABELS = np.array([0, 1, 3, 0])


def test_scores_rank_and_quantile_by_hand():
    assert nonconformity_scores(CAL_PROBS, CAL_LABELS) == pytest.approx([0.30, 0.60, 0.80, 0.75])
    scores = nonconformity_scores(CAL_PROBS, CAL_LABELS)
    # k = ceil((n+1)(1-alpha)) with n = 4
    assert [conformal_rank(4, a) for a in (0.2, 0.4, 0.6)] == [4, 3, 2]
    assert conformal_quantile(scores, 0.2) == pytest.approx(0.80)  # 4th smallest
    assert conformal_quantile(scores, 0.4) == pytest.approx(0.75)  # 3rd smallest
    assert conformal_quantile(scores, 0.6) == pytest.approx(0.60)  # 2nd smallest
    # alpha < 1/(n+1): k = 5 > n, q_hat = inf (every set full)
    assert conformal_quantile(scores, 0.19) == math.inf


def test_rank_is_exact_where_floating_point_would_round_up():
    # (9 + 1) * (1 - 0.1) = 9.000000000000002 in floating point; the rank is 9, not 10.
    assert conformal_rank(9, 0.1) == 9
    assert conformal_quantile(np.arange(1, 10) / 10, 0.1) == pytest.approx(0.9)
    assert conformal_rank(19, 0.05) == 19
    assert conformal_rank(9, 0.3) == 7
    assert conformal_quantile(np.array([0.5, 0.9, 0.1, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]), 0.3) == pytest.approx(0.7)


def test_prediction_sets_by_hand_including_empty_sets():
    sets_04 = prediction_sets(ROUTE_PROBS, 0.75)  # keep options with p >= 0.25
    assert sets_04.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1]]
    sets_06 = prediction_sets(ROUTE_PROBS, 0.60)  # p >= 0.4: questions 3 and 4 get EMPTY sets
    assert sets_06.sum(axis=1).tolist() == [1, 1, 0, 0]
    assert coverage(sets_04, ROUTE_LABELS) == 0.5


def test_fbe_by_hand():
    log2 = math.log(2)
    sizes = np.array([1, 1, 0, 0])
    assert full_entropy(sizes, 4) == pytest.approx(log2)
    assert binary_entropy(sizes) == pytest.approx(log2)
    assert fbe(sizes, 4, beta=3.0) == pytest.approx(4 * log2)
    sizes = np.array([1, 2, 2, 3])
    assert full_entropy(sizes, 4) == pytest.approx(1.5 * log2)
    assert binary_entropy(sizes) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # all sets singletons: nothing to separate, FBE = 0
    assert fbe(np.ones(5, dtype=int), 4) == 0.0


def test_fbe_picks_the_alpha_whose_set_sizes_spread_most():
    scores = nonconformity_scores(CAL_PROBS, CAL_LABELS)
    selection = select_alpha_fbe(scores, ROUTE_PROBS, alphas=(0.6, 0.2, 0.4), beta=3.0)
    # alpha=0.2 (p >= 0.2): sizes [1, 2, 4, 3], H_full = ln 4 -> FBE 4.72; alpha=0.4: 3.68; alpha=0.6: 2.77
    assert selection.alphas.tolist() == [0.2, 0.4, 0.6]
    assert selection.fbe_values == pytest.approx([3 * math.log(4) + 0.5623351446, 3 * 1.5 * math.log(2) + 0.5623351446,
                                                  4 * math.log(2)])
    assert selection.alpha == 0.2
    # ties go to the smallest alpha (the most conservative sets)
    tie = select_alpha_fbe(scores, ROUTE_PROBS[:2], alphas=(0.4, 0.2), beta=3.0)
    assert tie.fbe_values[0] == tie.fbe_values[1] and tie.alpha == 0.2


def test_cp_router_report_by_hand():
    report = cp_router_report(CAL_PROBS, CAL_LABELS, ROUTE_PROBS, alpha=0.4, route_labels=ROUTE_LABELS,
                              lrm_correct=np.array([0, 1, 1, 0]), llm_tokens=10,
                              lrm_tokens=np.array([100, 200, 300, 400]))
    assert report.qhat == pytest.approx(0.75)
    assert report.escalated.tolist() == [False, True, True, True]  # only question 1 has a singleton set
    assert report.coverage == 0.5
    assert report.llm_accuracy == 0.25  # argmax right on question 1 only
    assert report.routed_accuracy == 0.75  # LLM on q1 (right), LRM on q2-4 (right, right, wrong)
    assert report.token_reduction_ratio == pytest.approx(1 - (10 + 200 + 300 + 400) / 1000)
    d = report.to_dict()
    assert d["set_size_distribution"] == {"0": 0.0, "1": 0.25, "2": 0.5, "3": 0.25, "4": 0.0}
    assert d["mean_set_size"] == pytest.approx(2.0) and d["escalation_share"] == 0.75
    assert d["alpha_chosen_by"] == "fixed"


def test_empty_sets_escalate():
    report = cp_router_report(CAL_PROBS, CAL_LABELS, ROUTE_PROBS, alpha=0.6)
    assert report.escalated.tolist() == [False, False, True, True]
    assert report.set_size_distribution.tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]


def test_report_with_fbe_alpha_and_option_softmax():
    logits = np.log(ROUTE_PROBS) + 3.0  # softmax is shift-invariant
    assert option_softmax(logits) == pytest.approx(ROUTE_PROBS)
    report = cp_router_report(CAL_PROBS, CAL_LABELS, option_softmax(logits), alphas=(0.2, 0.4, 0.6))
    assert report.alpha == 0.2 and report.fbe is not None and report.to_dict()["alpha_chosen_by"] == "fbe"


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match=r"labels\[1\] = 4 is not an option index in 0..3"):
        nonconformity_scores(CAL_PROBS[:2], np.array([0, 4]))
    with pytest.raises(DataError, match="not a probability vector"):
        prediction_sets(np.array([[0.5, 1.5]]), 0.5)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        conformal_quantile(np.array([0.1, 0.2]), 1.0)
    with pytest.raises(DataError, match="at least one labelled"):
        conformal_quantile(np.array([]), 0.1)
    with pytest.raises(DataError, match="not finite"):
        option_softmax(np.array([[0.0, np.nan]]))


# --------------------------------------------------------------------------------------------------
# Coverage by simulation. Exchangeable (calibration, test) questions: option logits z ~ N(0, 2^2); the LLM's
# softmax is softmax(z) but the TRUE label is drawn from softmax(z / 2), so the LLM is overconfident. Split
# conformal coverage holds anyway: E[coverage] = k / (n + 1) >= 1 - alpha for continuous scores
# (Angelopoulos & Bates, arXiv 2107.07511, Thm. D.1).


def _simulate(rng: np.random.Generator, n: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(0.0, 2.0, size=(n, k))
    true_probs = option_softmax(logits / 2.0)
    labels = (rng.random((n, 1)) > true_probs.cumsum(axis=1)).sum(axis=1)
    return option_softmax(logits), labels


def _mean_coverage(alpha: float, n_cal: int, seeds: int, quantile) -> tuple[float, float]:
    covs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        cal_p, cal_y = _simulate(rng, n_cal)
        test_p, test_y = _simulate(rng, 2000)
        qhat = quantile(nonconformity_scores(cal_p, cal_y), alpha)
        covs.append(coverage(prediction_sets(test_p, qhat), test_y))
    covs = np.array(covs)
    return float(covs.mean()), float(covs.std(ddof=1) / math.sqrt(seeds))


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_held_out_coverage_is_at_least_one_minus_alpha(alpha):
    n_cal = 50
    mean, se = _mean_coverage(alpha, n_cal, seeds=300, quantile=conformal_quantile)
    expected = conformal_rank(n_cal, alpha) / (n_cal + 1)  # 46/51 = 0.902 for alpha 0.1; 41/51 = 0.804 for 0.2
    assert expected >= 1 - alpha
    assert mean >= 1 - alpha - 3 * se, (mean, se)
    assert abs(mean - expected) <= 4 * se, (mean, expected, se)


def test_the_simulation_catches_a_quantile_without_the_finite_sample_correction():
    # np.quantile at level 1 - alpha (no (n+1) correction) undercovers at n = 50: E[cov] ~ 45.1/51 = 0.884.
    mean, se = _mean_coverage(0.1, 50, seeds=300, quantile=lambda s, a: float(np.quantile(s, 1 - a)))
    assert mean < 0.9 - 3 * se, (mean, se)
