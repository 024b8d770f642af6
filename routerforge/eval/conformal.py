"""CP-Router: split-conformal prediction sets over multiple-choice options, used to route between a
standard LLM and a reasoning model (LRM), with the Full-and-Binary-Entropy (FBE) choice of alpha.

Source: Su et al., "CP-Router: An Uncertainty-Aware Router Between LLM and LRM" (arXiv 2505.19970),
built on split conformal prediction (Vovk et al. 2005; Angelopoulos & Bates, "A Gentle Introduction to
Conformal Prediction", arXiv 2107.07511, Sec. 1 and Thm. 1 / Appendix D).

Setting. The standard LLM reads a multiple-choice question and gives a softmax p(x) over its K option
letters (the next-token logits of " A", " B", ... after "Answer:"). On a labelled calibration set:

* nonconformity score of a calibration example: s_i = 1 - p(x_i)[y_i]  (y_i = the correct option);
* conformal quantile: q_hat = the k-th smallest of s_1..s_n with k = ceil((n + 1)(1 - alpha)), i.e. the
  empirical quantile at level ceil((n + 1)(1 - alpha)) / n. When k > n (alpha < 1/(n + 1)) q_hat = +inf;
* prediction set of a new question: C(x) = {j : 1 - p(x)[j] <= q_hat}.

If calibration and test examples are exchangeable, P(y_test in C(x_test)) >= 1 - alpha (marginally, over
the draw of both); with continuous scores the expected coverage is exactly k / (n + 1) <= 1 - alpha + 1/(n + 1)
(Angelopoulos & Bates, Thm. D.1). `tests/unit/eval/test_conformal.py` checks both bounds by simulation.

Routing (CP-Router). |C(x)| == 1: the LLM is confident enough; keep its answer. Otherwise escalate to the
LRM. **Empty sets escalate too** (our choice, stated because the paper's text we could read does not
cover it): C(x) is empty when no option reaches the calibrated confidence 1 - q_hat, the least certain
case. A public reimplementation (cynthia-shengjia/OThink-R1, baseline/cp-router) instead puts the argmax
into empty sets, which makes them singletons and KEEPS those least-confident questions on the LLM.
Coverage is always measured on the raw sets (an empty set misses), which is what the guarantee covers.

FBE (the paper's Sec. 3.2). For each candidate alpha, build the sets of the (unlabelled) questions to be
routed and score the set-size distribution:

    H_full   = - sum_s f_s log f_s            f_s = share of sets of size s, s in {0, 1, ..., K}
    H_binary = - f_1 log f_1 - (1 - f_1) log(1 - f_1)     singleton vs. not
    FBE      = beta * H_full + H_binary        (natural logs; beta = 3 by default)
    alpha*   = argmax over the candidate grid of FBE   (first maximum, i.e. the smallest such alpha)

so alpha* is the level whose sets separate the questions most evenly into "sure" and "unsure" ones. The
formula and beta = 3 follow the paper's Eq. 4-5 as written out in the public reimplementation above (we
could read the paper's abstract and setup but not its equations); beta and the grid are parameters here.
We give size 0 its own category in H_full (the reimplementation counts sizes 1..K only, having no empty
sets). Choosing alpha by looking at the test questions' sets is the paper's procedure; the coverage
guarantee is for a FIXED alpha, so for a strict guarantee pick alpha on other unlabelled questions than
the ones reported.

Report (`cp_router_report`): alpha, q_hat, coverage (when test labels are known), the set-size
distribution, the share escalated, routed accuracy (LLM answer where kept, LRM answer where escalated)
and the token-reduction ratio TRR = 1 - (tokens the routed system spends) / (tokens of the LRM alone),
where the routed system spends the LLM's tokens on kept questions and the LRM's on escalated ones.

Plain numpy: every function takes and returns arrays, no model code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from routerforge.errors import DataError

DEFAULT_FBE_BETA = 3.0
"""Weight of H_full in FBE (CP-Router Eq. 4, beta = 3 in the public reimplementation)."""

DEFAULT_ALPHA_GRID = tuple(round(a, 2) for a in np.arange(0.01, 1.0, 0.01))
"""Candidate alphas 0.01, 0.02, ..., 0.99 searched by FBE."""

_EPS_K = 1e-9  # guards ceil((n + 1)(1 - alpha)) against float error: 10 * 0.9 = 9.000000000000002


def option_softmax(option_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the options of each question: [n, K] logits -> [n, K] probabilities (float64)."""
    logits = np.asarray(option_logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise DataError(f"option logits must be a [questions, options>=2] matrix, got shape {logits.shape}.")
    if not np.all(np.isfinite(logits)):
        row = int(np.flatnonzero(~np.isfinite(logits).all(axis=1))[0])
        raise DataError(f"option logits of question {row} are not finite: {logits[row].tolist()}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise DataError(f"{name} must be a [questions, options>=2] matrix, got shape {p.shape}.")
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(f"{name}[{row}] = {p[row].tolist()} is not a probability vector.")
    return p


def _check_labels(labels: np.ndarray, n: int, k: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise DataError(f"{name} must hold one option index per question ({n}), got shape {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name} must be integer option indices (0 = first option), got dtype {y.dtype}.")
    if n and (y.min() < 0 or y.max() >= k):
        i = int(np.flatnonzero((y < 0) | (y >= k))[0])
        raise DataError(f"{name}[{i}] = {int(y[i])} is not an option index in 0..{k - 1}.")
    return y.astype(np.int64)


def _check_alpha(alpha: float) -> float:
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def nonconformity_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """s_i = 1 - p(x_i)[y_i]: how little probability the LLM gave the correct option."""
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1])
    return 1.0 - p[np.arange(len(y)), y]


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the rank (1-based) of the calibration score used as q_hat."""
    if n < 1:
        raise DataError("conformal calibration needs at least one labelled calibration question.")
    return math.ceil((n + 1) * (1.0 - _check_alpha(alpha)) - _EPS_K)


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """q_hat: the k-th smallest calibration score, k = ceil((n + 1)(1 - alpha)); +inf when k > n."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise DataError(f"calibration scores must be 1-D, got shape {s.shape}.")
    if not np.all(np.isfinite(s)):
        raise DataError("calibration scores must be finite.")
    k = conformal_rank(len(s), alpha)
    if k > len(s):
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


def prediction_sets(probs: np.ndarray, qhat: float) -> np.ndarray:
    """Boolean [n, K]: option j is in C(x_i) iff 1 - p(x_i)[j] <= q_hat (empty sets stay empty)."""
    p = _check_probs(probs)
    return (1.0 - p) <= qhat


def coverage(sets: np.ndarray, labels: np.ndarray) -> float:
    """Share of questions whose correct option is in their prediction set."""
    sets = np.asarray(sets, dtype=bool)
    y = _check_labels(labels, sets.shape[0], sets.shape[1])
    if len(y) == 0:
        raise DataError("coverage of zero questions is undefined.")
    return float(sets[np.arange(len(y)), y].mean())


def set_size_distribution(set_sizes: np.ndarray, num_options: int) -> np.ndarray:
    """Share of questions with a set of size 0, 1, ..., num_options (length num_options + 1)."""
    sizes = np.asarray(set_sizes, dtype=np.int64)
    if len(sizes) == 0:
        raise DataError("set-size distribution of zero questions is undefined.")
    return np.bincount(sizes, minlength=num_options + 1)[: num_options + 1] / len(sizes)


def _entropy(shares: np.ndarray) -> float:
    nz = shares[shares > 0]
    return float(-(nz * np.log(nz)).sum())


def full_entropy(set_sizes: np.ndarray, num_options: int) -> float:
    """H_full: entropy (nats) of the set-size distribution over sizes 0..K."""
    return _entropy(set_size_distribution(set_sizes, num_options))


def binary_entropy(set_sizes: np.ndarray) -> float:
    """H_binary: entropy (nats) of singleton vs. non-singleton sets."""
    sizes = np.asarray(set_sizes, dtype=np.int64)
    if len(sizes) == 0:
        raise DataError("binary entropy of zero questions is undefined.")
    f1 = float((sizes == 1).mean())
    return _entropy(np.array([f1, 1.0 - f1]))


def fbe(set_sizes: np.ndarray, num_options: int, beta: float = DEFAULT_FBE_BETA) -> float:
    """Full-and-Binary Entropy: beta * H_full + H_binary (CP-Router Eq. 4)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return beta * full_entropy(set_sizes, num_options) + binary_entropy(set_sizes)


@dataclass(frozen=True, eq=False)
class FBESelection:
    """The alpha FBE chose, and the FBE (and q_hat) of every candidate."""

    alpha: float
    fbe: float
    alphas: np.ndarray
    fbe_values: np.ndarray
    qhats: np.ndarray

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "fbe": self.fbe, "alphas": self.alphas.tolist(),
                "fbe_values": self.fbe_values.tolist(),
                "qhats": [None if math.isinf(q) else float(q) for q in self.qhats]}


def select_alpha_fbe(calibration_scores: np.ndarray, route_probs: np.ndarray, *,
                     alphas: tuple[float, ...] | np.ndarray = DEFAULT_ALPHA_GRID,
                     beta: float = DEFAULT_FBE_BETA) -> FBESelection:
    """alpha* = argmax_alpha FBE(set sizes of `route_probs` at q_hat(alpha)); the first maximum wins."""
    p = _check_probs(route_probs, "route_probs")
    grid = np.asarray(sorted(float(a) for a in alphas), dtype=np.float64)
    if len(grid) == 0:
        raise ValueError("the alpha grid is empty")
    qhats = np.array([conformal_quantile(calibration_scores, a) for a in grid])
    values = np.array([fbe(prediction_sets(p, q).sum(axis=1), p.shape[1], beta) for q in qhats])
    best = int(np.argmax(values))  # argmax returns the first maximum: the smallest alpha among ties
    return FBESelection(alpha=float(grid[best]), fbe=float(values[best]), alphas=grid, fbe_values=values,
                        qhats=qhats)


@dataclass(frozen=True, eq=False)
class CPRouterReport:
    """What CP-Router did on the routed questions (shares are fractions in [0, 1])."""

    alpha: float
    qhat: float
    n_calibration: int
    n_routed: int
    set_size_distribution: np.ndarray  # share of sets of size 0..K
    escalated: np.ndarray  # bool per routed question: True = sent to the LRM
    coverage: float | None  # None without test labels
    llm_accuracy: float | None
    lrm_accuracy: float | None
    routed_accuracy: float | None
    token_reduction_ratio: float | None
    fbe: FBESelection | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def escalation_share(self) -> float:
        return float(self.escalated.mean())

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "alpha_chosen_by": "fbe" if self.fbe is not None else "fixed",
            "qhat": None if math.isinf(self.qhat) else self.qhat,
            "n_calibration": self.n_calibration,
            "n_routed": self.n_routed,
            "coverage": self.coverage,
            "target_coverage": 1.0 - self.alpha,
            "set_size_distribution": {str(s): float(f) for s, f in enumerate(self.set_size_distribution)},
            "mean_set_size": float(np.dot(np.arange(len(self.set_size_distribution)), self.set_size_distribution)),
            "escalation_share": self.escalation_share,
            "llm_accuracy": self.llm_accuracy,
            "lrm_accuracy": self.lrm_accuracy,
            "routed_accuracy": self.routed_accuracy,
            "token_reduction_ratio": self.token_reduction_ratio,
            "fbe": self.fbe.to_dict() if self.fbe is not None else None,
            "notes": list(self.notes),
        }


def _per_question(values: np.ndarray | float | None, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)).copy()
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} must be finite for every routed question.")
    return arr


def cp_router_report(calibration_probs: np.ndarray, calibration_labels: np.ndarray, route_probs: np.ndarray, *,
                     alpha: float | None = None, alphas: tuple[float, ...] | np.ndarray = DEFAULT_ALPHA_GRID,
                     beta: float = DEFAULT_FBE_BETA, route_labels: np.ndarray | None = None,
                     llm_correct: np.ndarray | None = None, lrm_correct: np.ndarray | None = None,
                     llm_tokens: np.ndarray | float | None = None,
                     lrm_tokens: np.ndarray | float | None = None) -> CPRouterReport:
    """Calibrate on labelled questions, route `route_probs` (alpha fixed, or chosen by FBE when None).

    `llm_correct` / `lrm_correct`: per routed question, 1 when that model answers it correctly; without
    `llm_correct` but with `route_labels`, the LLM's answer is its argmax option. `llm_tokens` /
    `lrm_tokens`: tokens each model spends per routed question (arrays or one number each).
    """
    cal = _check_probs(calibration_probs, "calibration_probs")
    routed = _check_probs(route_probs, "route_probs")
    if cal.shape[1] != routed.shape[1]:
        raise DataError(f"calibration questions have {cal.shape[1]} options but routed ones have {routed.shape[1]}.")
    if len(routed) == 0:
        raise DataError("no questions to route.")
    scores = nonconformity_scores(cal, calibration_labels)
    selection = None
    if alpha is None:
        selection = select_alpha_fbe(scores, routed, alphas=alphas, beta=beta)
        alpha = selection.alpha
    qhat = conformal_quantile(scores, alpha)
    sets = prediction_sets(routed, qhat)
    sizes = sets.sum(axis=1)
    escalated = sizes != 1
    n, k = routed.shape
    notes = []
    if math.isinf(qhat):
        notes.append(f"alpha={alpha} < 1/(n+1) with n={len(scores)} calibration questions: every set is full.")
    cov = None
    if route_labels is not None:
        y = _check_labels(route_labels, n, k, "route_labels")
        cov = coverage(sets, y)
        if llm_correct is None:
            llm_correct = (routed.argmax(axis=1) == y).astype(np.float64)
    llm_c = _per_question(llm_correct, n, "llm_correct")
    lrm_c = _per_question(lrm_correct, n, "lrm_correct")
    routed_acc = None
    if llm_c is not None and lrm_c is not None:
        routed_acc = float(np.where(escalated, lrm_c, llm_c).mean())
    llm_t = _per_question(llm_tokens, n, "llm_tokens")
    lrm_t = _per_question(lrm_tokens, n, "lrm_tokens")
    trr = None
    if llm_t is not None and lrm_t is not None:
        lrm_total = float(lrm_t.sum())
        if lrm_total <= 0:
            raise DataError("lrm_tokens sum to 0: the token-reduction ratio is undefined.")
        trr = 1.0 - float(np.where(escalated, lrm_t, llm_t).sum()) / lrm_total
    return CPRouterReport(
        alpha=float(alpha), qhat=float(qhat), n_calibration=len(scores), n_routed=n,
        set_size_distribution=set_size_distribution(sizes, k), escalated=escalated, coverage=cov,
        llm_accuracy=None if llm_c is None else float(llm_c.mean()),
        lrm_accuracy=None if lrm_c is None else float(lrm_c.mean()),
        routed_accuracy=routed_acc, token_reduction_ratio=trr, fbe=selection, notes=notes)
