"""Routing-quality metrics: pure functions over numpy arrays aligned with prompts.

* `binary`: strong/weak routing (RouteLLM, arXiv 2406.18665): quality vs. strong-call share, PGR,
  APGR, CPT(50%), CPT(80%), AUC, with random / oracle / always-strong / always-weak references.
* `multi`: multi-model routing with costs (RouterBench, arXiv 2403.12031): cost-weight sweep,
  non-decreasing convex hull, AIQ, quality at fixed budgets, zero-router and oracle references.
* `probability_calibration`: ECE (equal-width bins), Brier score, reliability-diagram data.
* `thresholds`: routing thresholds calibrated on the user's prompts for given strong-call shares
  (`routerforge calibrate`), and the rule that applies them.
* `bootstrap`: seeded percentile bootstrap over prompts for any metric function.
* `outcome_table`: the long outcome table (JSONL / CSV) as a wide prompts x models matrix.
* `plots`: matplotlib (Agg) PNGs of the curves with their references.

A router score is just an array aligned with the prompts, so these metrics serve every router family.
Each module's docstring gives the definitions, their sources, and the conventions chosen.
`plots` is not imported here (it pulls in matplotlib); import `routerforge.eval.plots` directly.
"""

from routerforge.eval.binary import (
    BinaryReport,
    CurveMetrics,
    StrongShareCurve,
    apgr,
    auc,
    binary_headline_metrics,
    binary_report,
    cpt,
    curve_metrics,
    oracle_curve,
    pgr,
    quality_at_share,
    random_metrics,
    strong_share_curve,
)
from routerforge.eval.bootstrap import BootstrapInterval, bootstrap_metric, bootstrap_metrics
from routerforge.eval.multi import (
    MultiReport,
    QualityCostHull,
    aiq,
    default_cost_weights,
    hull_quality_at,
    multi_report,
    non_decreasing_convex_hull,
    route_by_cost_weight,
)
from routerforge.eval.outcome_table import (
    OutcomeTable,
    StrongWeakColumns,
    complete_subtable,
    describe_missing,
    load_outcome_table,
    model_index,
    strong_weak_columns,
)
from routerforge.eval.probability_calibration import (
    CalibrationReport,
    ReliabilityBins,
    brier_score,
    calibration_report,
    expected_calibration_error,
    reliability_bins,
)

__all__ = [
    "BinaryReport", "BootstrapInterval", "CalibrationReport", "CurveMetrics", "MultiReport", "OutcomeTable",
    "QualityCostHull", "ReliabilityBins", "StrongShareCurve", "StrongWeakColumns",
    "aiq", "apgr", "auc", "binary_headline_metrics", "binary_report", "bootstrap_metric", "bootstrap_metrics",
    "brier_score", "calibration_report", "complete_subtable", "cpt", "curve_metrics", "default_cost_weights",
    "describe_missing", "expected_calibration_error", "hull_quality_at", "load_outcome_table", "model_index",
    "multi_report", "non_decreasing_convex_hull", "oracle_curve", "pgr", "quality_at_share", "random_metrics",
    "reliability_bins", "route_by_cost_weight", "strong_share_curve", "strong_weak_columns",
]
