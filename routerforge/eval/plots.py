"""PNG plots of the routing curves with their references, and of the reliability diagram.

Rendered with matplotlib's Agg backend through ``matplotlib.figure.Figure`` and
``FigureCanvasAgg`` directly, never pyplot: no global backend switch, no display needed, and nothing
leaks between calls (safe on headless CI and inside training processes). Each function writes one
PNG and returns its path.

* `plot_strong_share_curves`: quality vs. share of strong calls for one or more routers, with the
  oracle, the random line and the always-weak / always-strong levels (RouteLLM's Figure style).
* `plot_quality_cost`: the lambda-sweep points, the router's non-decreasing convex hull, the single
  models, the zero-router hull and the oracle hull (RouterBench's cost-quality plane).
* `plot_reliability`: observed frequency vs. mean predicted probability per bin, with the diagonal
  and the bin counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from routerforge.eval.binary import BinaryReport
from routerforge.eval.multi import MultiReport
from routerforge.eval.probability_calibration import ReliabilityBins

_DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def _finish(fig: Figure, ax, path: str | Path, xlabel: str, ylabel: str, title: str) -> Path:
    """The common tail of a one-axes plot: labels, title, grid, legend at the lower right; written as PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_strong_share_curves(reports: Mapping[str, BinaryReport], path: str | Path,
                             title: str = "Quality vs. strong-model calls") -> Path:
    """Curves of every router in `reports` (name -> report, all on the same prompts) plus references."""
    if not reports:
        raise ValueError("plot_strong_share_curves needs at least one report")
    first = next(iter(reports.values()))
    for name, rep in reports.items():
        if (rep.n_prompts, rep.weak_mean, rep.strong_mean) != (first.n_prompts, first.weak_mean, first.strong_mean):
            raise ValueError(f"report '{name}' was computed on other prompts or models than the first one; "
                             f"curves on one plot must share their references")
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot()
    for name, rep in reports.items():
        ax.plot(rep.router_curve.shares * 100, rep.router_curve.quality,
                label=f"{name} (APGR {rep.router.apgr:.3f})", linewidth=1.8)
    ax.plot(first.oracle_curve.shares * 100, first.oracle_curve.quality, color="black", linewidth=1.2,
            label=f"oracle (APGR {first.oracle.apgr:.3f})")
    ax.plot([0, 100], [first.weak_mean, first.strong_mean], color="grey", linestyle=":",
            label="random (analytic, APGR 0.500)")
    ax.axhline(first.strong_mean, color="tab:red", linestyle="--", linewidth=1.0,
               label=f"always strong ({first.strong_mean:.3f})")
    ax.axhline(first.weak_mean, color="tab:blue", linestyle="--", linewidth=1.0,
               label=f"always weak ({first.weak_mean:.3f})")
    ax.set_xlim(0, 100)
    return _finish(fig, ax, path, "Strong-model calls (% of prompts)", "Mean quality",
                   f"{title} (n={first.n_prompts})")


def plot_quality_cost(report: MultiReport, path: str | Path, router_name: str = "router",
                      title: str = "Quality vs. cost") -> Path:
    """Sweep points, NDCH of the router, single models, zero-router hull and oracle hull."""
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot()
    hi = report.cost_range[1]

    def hull_xy(h_cost: np.ndarray, h_quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Draw the flat extension past the last vertex, as AIQ integrates it.
        if h_cost[-1] < hi:
            return np.append(h_cost, hi), np.append(h_quality, h_quality[-1])
        return h_cost, h_quality

    ax.scatter(report.sweep_cost, report.sweep_quality, s=10, alpha=0.5, color="tab:orange",
               label=f"{router_name} (cost-weight sweep)")
    ax.plot(*hull_xy(report.hull.cost, report.hull.quality), color="tab:orange", linewidth=2.0,
            label=f"{router_name} hull (AIQ {report.aiq:.3f})")
    ax.plot(*hull_xy(report.zero_router_hull.cost, report.zero_router_hull.quality), color="grey",
            linestyle=":", label=f"zero router (AIQ {report.zero_router_aiq:.3f})")
    ax.plot(*hull_xy(report.oracle_hull.cost, report.oracle_hull.quality), color="black", linewidth=1.2,
            label=f"oracle (AIQ {report.oracle_aiq:.3f})")
    ax.scatter(report.model_mean_cost, report.model_mean_quality, marker="s", color="tab:blue", zorder=3,
               label="single models")
    for name, c, q in zip(report.models, report.model_mean_cost, report.model_mean_quality, strict=True):
        ax.annotate(name, (c, q), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.axvspan(report.cost_range[0], report.cost_range[1], color="tab:green", alpha=0.06,
               label="AIQ cost range")
    return _finish(fig, ax, path, "Mean cost per prompt (USD)", "Mean quality", f"{title} (n={report.n_prompts})")


def plot_reliability(bins: ReliabilityBins, path: str | Path, ece: float | None = None,
                     title: str = "Reliability diagram") -> Path:
    """Observed frequency vs. mean predicted probability per bin, the diagonal, and bin counts."""
    fig = Figure(figsize=(6.0, 6.5))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = bins.count > 0
    width = bins.upper - bins.lower
    ax.bar(bins.lower[filled], bins.observed_frequency[filled], width=width[filled], align="edge",
           edgecolor="black", alpha=0.7, label="observed frequency")
    ax.plot(bins.mean_predicted[filled], bins.observed_frequency[filled], "o", color="tab:red",
            label="(mean predicted, observed)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Observed frequency")
    suffix = f" (ECE {ece:.3f})" if ece is not None else ""
    ax.set_title(f"{title}{suffix}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax_count.bar(bins.lower, bins.count, width=width, align="edge", edgecolor="black", color="tab:grey")
    ax_count.set_xlabel("Predicted probability")
    ax_count.set_ylabel("Prompts")
    fig.tight_layout()
    return _save(fig, path)


def plot_cost_quality_points(points: Sequence[dict], path: str | Path,
                             title: str = "Router-R1: exact match vs. cost") -> Path:
    """Router-R1 exports as (mean cost per query, exact match) points, each annotated with its training alpha
    (routerforge.rl.evaluate.cost_quality_points)."""
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot()
    ordered = sorted(points, key=lambda p: p["cost_usd_per_query"])
    ax.plot([p["cost_usd_per_query"] for p in ordered], [p["exact_match"] for p in ordered], color="tab:orange",
            linewidth=1.0, alpha=0.6)
    ax.scatter([p["cost_usd_per_query"] for p in ordered], [p["exact_match"] for p in ordered], color="tab:orange",
               zorder=3, label="Router-R1 exports")
    for p in ordered:
        ax.annotate(f"alpha={p['training_alpha']:g}", (p["cost_usd_per_query"], p["exact_match"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=7)
    n = sorted({p["n_tasks"] for p in points})
    return _finish(fig, ax, path, "Mean cost per query (USD)", "Exact match",
                   f"{title} (n={'/'.join(str(k) for k in n)})")
