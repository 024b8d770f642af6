"""Multi-model routing with costs: the quality-cost curve, its non-decreasing convex hull, AIQ, budgets.

Source: Hu et al., "RouterBench: A Benchmark for Multi-LLM Routing System" (arXiv 2403.12031,
Sec. 3, "Math formulation of router evaluation"), and its code, withmartian/routerbench
``evaluation/AIQ.py``.

Setting. n prompts, m models. The router predicts a quality for every (prompt, model) pair
(`predicted_quality`, shape (n, m)); the outcome table gives the true score (`true_quality`) and the
cost in USD of each answer (`costs`, shape (n, m), or (m,) for a per-model price per prompt). The
router's choice rule for a cost weight lambda >= 0 is

    choice_i(lambda) = argmax_j  predicted_quality[i, j] - lambda * decision_cost[i, j]

(RouterBench writes the same rule as argmax_j  lambda' * P_ij - cost_j with a willingness-to-pay
lambda' = 1 / lambda; we sweep lambda so that lambda = 0 means "ignore cost"). Each lambda gives one
point (mean cost per prompt in USD, mean true quality). `decision_costs` is what the router believes a
choice costs (e.g. the model's price per prompt); it defaults to `costs`.

Definitions (RouterBench Sec. 3):

* Routers and their mixtures: choosing configuration A with probability t and B with 1 - t reaches
  every point on the segment AB, so what a router can achieve is the convex hull of its points.
* Non-decreasing convex hull (NDCH) R~: the upper hull, kept from the cheapest point up to the first
  point of maximum quality, then flat: spending more never has to lower quality (keep using the
  cheaper configuration). R~(c) is the best quality reachable at mean cost <= c.
* AIQ(R) = 1 / (c_max - c_min) * integral_{c_min}^{c_max} R~(c) dc, the average quality of the hull
  over a cost range.
* Zero router: the NDCH of the single models' points (random mixtures of models, no per-prompt
  information), RouterBench's baseline. Oracle: the best true-quality model per prompt (cheapest among
  ties); its curve here is the same lambda sweep with predicted = true quality.

Conventions chosen here, and why:

* **Cost range.** By default [c_min, c_max] = [cheapest, most expensive] single model's mean cost per
  prompt, the zero router's range, so the router, the zero router and the oracle are compared on one
  range (the paper's AIQ compares routers over a shared range; its code extends every hull flat to the
  shared max cost). Pass `cost_range` to compare with another report.
* **Below the hull.** For c below the router's cheapest point R~ is not reachable; that part of the
  range contributes quality 0, as in RouterBench's code (it integrates from the router's cheapest
  point and divides by the shared range). Above the hull's last point R~ stays flat at its maximum.
  The official code divides by c_max (as if c_min = 0); we follow the paper's (c_max - c_min).
* **The lambda grid.** Default: 0, then 121 weights log-spaced over six decades around the scale
  lambda_0 = median per-prompt spread of predicted quality / spread of decision costs, then +inf
  (always the cheapest model; ties to the higher predicted quality). lambda = 0 and +inf give the
  curve's two ends, the log grid the points between (RouterBench also sweeps a fixed list of
  willingness-to-pay values). Pass `cost_weights` for another grid.
* **Ties in the choice rule** go to the cheaper model (then to the lower model index), so equal
  predicted utility never buys a more expensive answer.
* **Quality at a budget** b (USD per prompt) is R~(b): linear interpolation on the hull, flat beyond
  its last point, NaN below its cheapest point (unreachable). Default budgets: each single model's mean
  cost ("the router's quality for the price of model X").
* **Bootstrap** (when `n_bootstrap > 0`): prompts are resampled, the routing choices stay fixed (they
  depend only on each prompt), and the cost range and budgets are held at their full-sample values.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from routerforge.errors import DataError
from routerforge.eval.bootstrap import BootstrapInterval, bootstrap_metrics


@dataclass(frozen=True, eq=False)
class QualityCostHull:
    """Vertices of a non-decreasing convex hull: mean cost (USD per prompt), increasing, and quality."""

    cost: np.ndarray
    quality: np.ndarray


@dataclass(frozen=True, eq=False)
class MultiReport:
    """Quality-cost evaluation of a multi-model router, its references, and bootstrap intervals.

    Costs are mean USD per prompt; qualities are mean scores. `intervals` maps every key of the
    headline metrics (aiq, zero_router_aiq, oracle_aiq, router_max_quality, quality_at:<budget label>)
    to its interval (empty with ``n_bootstrap=0``).
    """

    n_prompts: int
    models: tuple[str, ...]
    model_mean_cost: np.ndarray
    model_mean_quality: np.ndarray
    cost_weights: np.ndarray
    sweep_cost: np.ndarray
    sweep_quality: np.ndarray
    hull: QualityCostHull
    zero_router_hull: QualityCostHull
    oracle_sweep_cost: np.ndarray
    oracle_sweep_quality: np.ndarray
    oracle_hull: QualityCostHull
    cost_range: tuple[float, float]
    aiq: float
    zero_router_aiq: float
    oracle_aiq: float
    budgets_usd: dict[str, float]
    quality_at_budget: dict[str, float]
    intervals: dict[str, BootstrapInterval] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (infinite cost weights are written as the string "inf")."""
        return {
            "n_prompts": self.n_prompts,
            "cost_range_usd_per_prompt": list(self.cost_range),
            "aiq": self.aiq,
            "zero_router_aiq": self.zero_router_aiq,
            "oracle_aiq": self.oracle_aiq,
            "budgets_usd_per_prompt": dict(self.budgets_usd),
            "quality_at_budget": dict(self.quality_at_budget),
            "models": {name: {"mean_cost_usd": float(c), "mean_quality": float(q)} for name, c, q
                       in zip(self.models, self.model_mean_cost, self.model_mean_quality, strict=True)},
            "sweep": {"cost_weight": [w if np.isfinite(w) else "inf" for w in self.cost_weights.tolist()],
                      "mean_cost_usd": self.sweep_cost.tolist(), "mean_quality": self.sweep_quality.tolist()},
            "hull": _hull_dict(self.hull),
            "zero_router_hull": _hull_dict(self.zero_router_hull),
            "oracle_hull": _hull_dict(self.oracle_hull),
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
        }


def _hull_dict(h: QualityCostHull) -> dict:
    return {"mean_cost_usd": h.cost.tolist(), "mean_quality": h.quality.tolist()}


# -- inputs ------------------------------------------------------------------------------------------
def _quality_matrix(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} must have shape (n_prompts, n_models) with both > 0, got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        i, j = (int(x) for x in np.argwhere(~np.isfinite(arr))[0])
        raise DataError(f"{name}[{i}, {j}] is {arr[i, j]}; every (prompt, model) cell must be finite "
                        f"(drop prompts with missing cells, see outcome_table.complete_subtable).")
    return arr


def cost_matrix(costs: np.ndarray, n_prompts: int, n_models: int, name: str = "costs") -> np.ndarray:
    """Costs as an (n_prompts, n_models) float array; a (n_models,) vector is a per-model price per prompt."""
    arr = np.asarray(costs, dtype=np.float64)
    if arr.shape == (n_models,):
        arr = np.broadcast_to(arr, (n_prompts, n_models))
    if arr.shape != (n_prompts, n_models):
        raise DataError(f"{name} must have shape ({n_models},) or ({n_prompts}, {n_models}), got {arr.shape}.")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(f"{name} must be finite and >= 0 (USD); found {arr[~np.isfinite(arr) | (arr < 0)][0]}.")
    return np.array(arr, dtype=np.float64)


# -- routing sweep -----------------------------------------------------------------------------------
def default_cost_weights(predicted_quality: np.ndarray, decision_costs: np.ndarray, n_log_points: int = 121
                         ) -> np.ndarray:
    """0, `n_log_points` weights log-spaced over 1e-3..1e3 times lambda_0, and +inf (module docstring)."""
    pred = _quality_matrix(predicted_quality, "predicted_quality")
    cost = cost_matrix(decision_costs, *pred.shape, name="decision_costs")
    cost_spread = float(np.median(cost.max(axis=1) - cost.min(axis=1)))
    if cost_spread == 0:
        return np.array([0.0, np.inf])  # every model costs the same: cost cannot change a choice
    quality_spread = float(np.median(pred.max(axis=1) - pred.min(axis=1)))
    lambda_0 = (quality_spread if quality_spread > 0 else 1.0) / cost_spread
    return np.concatenate([[0.0], lambda_0 * np.logspace(-3, 3, n_log_points), [np.inf]])


def route_by_cost_weight(predicted_quality: np.ndarray, decision_costs: np.ndarray,
                         cost_weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Model index chosen for each (cost weight, prompt): argmax predicted - lambda * cost; shape (k, n).

    Ties go to the cheaper model, then the lower index; lambda = +inf picks the cheapest model
    (ties to the higher predicted quality).
    """
    pred = _quality_matrix(predicted_quality, "predicted_quality")
    cost = cost_matrix(decision_costs, *pred.shape, name="decision_costs")
    weights = np.asarray(cost_weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0 or np.any(np.isnan(weights)) or np.any(weights < 0):
        raise ValueError(f"cost_weights must be a non-empty 1-D array of values >= 0, got {weights!r}")
    choices = np.empty((len(weights), pred.shape[0]), dtype=np.int64)
    for k, lam in enumerate(weights):
        if np.isinf(lam):
            tied = cost == cost.min(axis=1, keepdims=True)
            choices[k] = np.where(tied, pred, -np.inf).argmax(axis=1)
        else:
            utility = pred - lam * cost
            tied = utility == utility.max(axis=1, keepdims=True)
            choices[k] = np.where(tied, cost, np.inf).argmin(axis=1)
    return choices


def chosen_values(choices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[i, choices[k, i]] arranged (n_prompts, k): one row per prompt, as the bootstrap resamples."""
    n = values.shape[0]
    return values[np.arange(n)[None, :], choices].T


# -- hull, AIQ, budgets ------------------------------------------------------------------------------
def non_decreasing_convex_hull(costs: np.ndarray, qualities: np.ndarray) -> QualityCostHull:
    """RouterBench's NDCH of (cost, quality) points: upper hull up to the first maximum-quality point.

    Andrew's monotone chain over points sorted by cost (at equal cost only the best quality counts);
    collinear middle points are dropped (they add no area).
    """
    c = np.asarray(costs, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    if c.shape != q.shape or c.ndim != 1 or len(c) == 0:
        raise ValueError(f"costs and qualities must be equal-length non-empty 1-D arrays, got {c.shape}, {q.shape}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(q))):
        raise DataError("quality-cost points must be finite.")
    order = np.lexsort((-q, c))  # by cost, then best quality first
    c, q = c[order], q[order]
    keep = np.concatenate([[True], c[1:] != c[:-1]])
    c, q = c[keep], q[keep]
    hull: list[int] = []
    for i in range(len(c)):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (c[a] - c[o]) * (q[i] - q[o]) - (q[a] - q[o]) * (c[i] - c[o])
            if cross >= 0:  # a is on or below the chord o -> i: not an upper-hull vertex
                hull.pop()
            else:
                break
        hull.append(i)
    hc, hq = c[hull], q[hull]
    top = int(np.argmax(hq))  # first maximum = cheapest point of maximum quality
    return QualityCostHull(cost=hc[: top + 1], quality=hq[: top + 1])


def hull_quality_at(hull: QualityCostHull, budgets_usd: np.ndarray | float) -> np.ndarray:
    """R~(b): best mean quality with mean cost <= b; NaN below the hull's cheapest point."""
    b = np.asarray(budgets_usd, dtype=np.float64)
    out = np.interp(b, hull.cost, hull.quality)  # flat beyond the last vertex; clamps to vertex 0 below
    # A budget equal to the cheapest point up to rounding of the mean (e.g. "the cheapest model's cost")
    # is reachable; only clearly smaller budgets are not.
    unreachable = (b < hull.cost[0]) & ~np.isclose(b, hull.cost[0], rtol=1e-9, atol=0.0)
    return np.where(unreachable, np.nan, out)


def aiq(hull: QualityCostHull, cost_range: tuple[float, float]) -> float:
    """Average quality of R~ over [c_min, c_max] (RouterBench AIQ); 0 where R~ is unreachable.

    With c_min == c_max the average is the value R~(c_min) (the limit of the definition).
    """
    lo, hi = float(cost_range[0]), float(cost_range[1])
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise ValueError(f"cost_range must be finite with c_min <= c_max, got {cost_range}")
    if hi == lo:
        value = hull_quality_at(hull, lo)
        return 0.0 if np.isnan(value) else float(value)
    start = max(lo, float(hull.cost[0]))
    if start >= hi:
        return 0.0
    inner = hull.cost[(hull.cost > start) & (hull.cost < hi)]
    xs = np.concatenate([[start], inner, [hi]])
    ys = hull_quality_at(hull, xs)
    return float(np.trapezoid(ys, xs)) / (hi - lo)


# -- report ------------------------------------------------------------------------------------------
def _headline(prompt_weights: np.ndarray, per_prompt: Mapping[str, np.ndarray], *,
              cost_range: tuple[float, float], budgets_usd: Mapping[str, float]) -> dict[str, float]:
    """Headline numbers with prompts weighted by `prompt_weights` (sums to 1; uniform = the sample)."""
    mean = {k: prompt_weights @ v for k, v in per_prompt.items()}
    hull = non_decreasing_convex_hull(mean["router_cost"], mean["router_quality"])
    zero = non_decreasing_convex_hull(mean["model_cost"], mean["model_quality"])
    oracle = non_decreasing_convex_hull(mean["oracle_cost"], mean["oracle_quality"])
    out = {
        "aiq": aiq(hull, cost_range),
        "zero_router_aiq": aiq(zero, cost_range),
        "oracle_aiq": aiq(oracle, cost_range),
        "router_max_quality": float(hull.quality[-1]),
    }
    labels = list(budgets_usd)
    values = hull_quality_at(hull, np.array([budgets_usd[k] for k in labels], dtype=np.float64))
    for label, v in zip(labels, values, strict=True):
        out[f"quality_at:{label}"] = float(v)
    return out


def multi_report(predicted_quality: np.ndarray, true_quality: np.ndarray, costs: np.ndarray, *,
                 models: Sequence[str] | None = None, decision_costs: np.ndarray | None = None,
                 cost_weights: Sequence[float] | np.ndarray | None = None,
                 cost_range: tuple[float, float] | None = None,
                 budgets_usd: Mapping[str, float] | None = None,
                 n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> MultiReport:
    """Sweep the cost weight, build the hulls, and compute AIQ, references and quality at budgets.

    `true_quality` (n, m) scores from the outcome table; `costs` (n, m) or (m,) USD per answer;
    `budgets_usd` maps a label to a budget in mean USD per prompt (default: each model's mean cost,
    labelled "cost_of:<model>"). See the module docstring for every convention.
    """
    true = _quality_matrix(true_quality, "true_quality")
    pred = _quality_matrix(predicted_quality, "predicted_quality")
    if pred.shape != true.shape:
        raise DataError(f"predicted_quality {pred.shape} and true_quality {true.shape} must have the same shape.")
    n, m = true.shape
    names = tuple(models) if models is not None else tuple(f"model_{j}" for j in range(m))
    if len(names) != m:
        raise DataError(f"got {len(names)} model names for {m} model columns.")
    cost = cost_matrix(costs, n, m)
    decision = cost if decision_costs is None else cost_matrix(decision_costs, n, m, name="decision_costs")

    weights = default_cost_weights(pred, decision) if cost_weights is None else np.asarray(cost_weights, float)
    choices = route_by_cost_weight(pred, decision, weights)
    router_q, router_c = chosen_values(choices, true), chosen_values(choices, cost)
    # The oracle knows the true scores and the true per-answer costs.
    oracle_weights = default_cost_weights(true, cost)
    oracle_choices = route_by_cost_weight(true, cost, oracle_weights)
    oracle_q, oracle_c = chosen_values(oracle_choices, true), chosen_values(oracle_choices, cost)

    uniform = np.full(n, 1.0 / n)
    model_mean_cost, model_mean_quality = uniform @ cost, uniform @ true
    if cost_range is None:
        cost_range = (float(model_mean_cost.min()), float(model_mean_cost.max()))
    if budgets_usd is None:
        budgets_usd = {f"cost_of:{name}": float(c) for name, c in zip(names, model_mean_cost, strict=True)}
    budgets = {str(k): float(v) for k, v in budgets_usd.items()}

    per_prompt = {"router_quality": router_q, "router_cost": router_c, "oracle_quality": oracle_q,
                  "oracle_cost": oracle_c, "model_quality": true, "model_cost": cost}
    headline = functools.partial(_headline, per_prompt=per_prompt, cost_range=cost_range, budgets_usd=budgets)
    point = headline(uniform)
    intervals: dict[str, BootstrapInterval] = {}
    if n_bootstrap > 0:
        # Resample prompt indices; a resample's means are its index counts / n times the per-prompt
        # matrices (one matrix-vector product instead of gathering n x k matrices per resample).
        def resampled(idx: np.ndarray) -> dict[str, float]:
            return headline(np.bincount(idx, minlength=n) / n)

        intervals = bootstrap_metrics(resampled, (np.arange(n),), n_resamples=n_bootstrap,
                                      confidence=confidence, seed=seed)

    # Same weighted means as `_headline`, so the stored hulls are exactly the ones the metrics used.
    sweep_cost, sweep_quality = uniform @ router_c, uniform @ router_q
    oracle_cost, oracle_quality = uniform @ oracle_c, uniform @ oracle_q
    return MultiReport(
        n_prompts=n,
        models=names,
        model_mean_cost=model_mean_cost,
        model_mean_quality=model_mean_quality,
        cost_weights=weights,
        sweep_cost=sweep_cost,
        sweep_quality=sweep_quality,
        hull=non_decreasing_convex_hull(sweep_cost, sweep_quality),
        zero_router_hull=non_decreasing_convex_hull(model_mean_cost, model_mean_quality),
        oracle_sweep_cost=oracle_cost,
        oracle_sweep_quality=oracle_quality,
        oracle_hull=non_decreasing_convex_hull(oracle_cost, oracle_quality),
        cost_range=(float(cost_range[0]), float(cost_range[1])),
        aiq=point["aiq"],
        zero_router_aiq=point["zero_router_aiq"],
        oracle_aiq=point["oracle_aiq"],
        budgets_usd=budgets,
        quality_at_budget={k: point[f"quality_at:{k}"] for k in budgets},
        intervals=intervals,
    )
