"""Run a router over a long outcome table: binary (strong/weak) or multi-model report, JSON and plot.

Binary (`strong` and `weak` given): the router's binary score on every prompt that has both models' scores
(routerforge.router.Router.score_spec: the router's pair score, a stand-in pair via `router_pair`, or a
pair-free score) -> `binary_report` (RouteLLM's APGR, CPT(50%), CPT(80%), AUC, with random and oracle
references and percentile-bootstrap intervals).

Multi-model (no pair): the router's predicted quality of each table model (the table's names, or the router
models they are mapped to with `model_map`) on the prompts that have every model's score and cost ->
`multi_report` (RouterBench's AIQ with zero-router and oracle references). The router decides with its own
predicted costs when it has them and the table's models are its own; otherwise with each model's mean cost
in the table (a per-prompt price; RouterBench decides by price too).

The JSON holds the headline numbers as {"value", "ci"} (ci: [lo, hi] at `confidence`, null without
bootstrap), the references, where the data came from (file and sha256), and the full report (curves).
Non-finite numbers are written as null (e.g. CPT(80%) of a router that never reaches 80% PGR).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routerforge.errors import DataError
from routerforge.eval.binary import BinaryReport, binary_report
from routerforge.eval.multi import MultiReport, multi_report
from routerforge.eval.outcome_table import complete_subtable, load_outcome_table, strong_weak_columns
from routerforge.io.digest import sha256_file

EVAL_DIR = "eval"
SET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(eq=False)
class EvalResult:
    kind: str  # "binary" | "multi"
    summary: dict
    report: BinaryReport | MultiReport
    router_label: str


def finite_or_none(obj):
    """`obj` with every NaN / inf float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def _with_ci(report, key: str, point: float) -> dict:
    interval = report.intervals.get(key)
    return {"value": point, "ci": [interval.lo, interval.hi] if interval is not None else None}


def _prompt_texts(prompts: Sequence[str], prompt_ids: Sequence[str], path: str) -> list[str]:
    empty = [pid for pid, text in zip(prompt_ids, prompts, strict=True) if not text]
    if empty:
        raise DataError(f"{path}: {len(empty)} prompts have no `prompt` text (e.g. prompt_id {empty[0]!r}); the "
                        f"router reads the text, so add a `prompt` column.")
    return list(prompts)


def _source(router, path: Path, table) -> dict:
    return {"router": router.name, "version": router.version, "router_type": router.router_type,
            "checkpoint": str(router.path),
            "outcomes": {"file": str(path), "sha256": sha256_file(path), "prompts_in_table": len(table.prompt_ids),
                         "models_in_table": list(table.models)}}


def evaluate_router(router, outcomes: str | Path, *, strong: str | None = None, weak: str | None = None,
                    router_pair: Sequence[str] | None = None, model_map: Mapping[str, str] | None = None,
                    models: Sequence[str] | None = None, n_bootstrap: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> EvalResult:
    """Evaluate `router` (a routerforge.router.Router) on a long outcome table (module docstring)."""
    path = Path(outcomes)
    table = load_outcome_table(path)
    label = f"{router.name} {router.version or ''}".strip()
    if (strong is None) != (weak is None):
        raise DataError("binary evaluation needs both --strong and --weak (or neither, for multi-model AIQ).")
    model_map = dict(model_map or {})
    if strong is not None:
        return _evaluate_binary(router, path, table, strong, weak, router_pair, model_map, n_bootstrap, confidence,
                                seed, label)
    if router_pair is not None:
        raise DataError("--router-pair maps the strong and weak model; give --strong and --weak too (or use --map "
                        "TABLE_MODEL=ROUTER_MODEL for multi-model evaluation).")
    return _evaluate_multi(router, path, table, models, model_map, n_bootstrap, confidence, seed, label)


def _evaluate_binary(router, path, table, strong, weak, router_pair, model_map, n_bootstrap, confidence, seed,
                     label) -> EvalResult:
    if router_pair is None and (strong in model_map or weak in model_map):
        router_pair = (model_map.get(strong, strong), model_map.get(weak, weak))
    columns = strong_weak_columns(table, strong, weak)
    prompts = _prompt_texts(columns.prompts, columns.prompt_ids, str(path))
    spec = router.score_spec(strong, weak, router_pair)
    scores = router.scores_for(prompts, spec)
    report = binary_report(scores, columns.weak_scores, columns.strong_scores, n_bootstrap=n_bootstrap,
                           confidence=confidence, seed=seed)
    summary = {
        "kind": "binary", **_source(router, path, table), "strong": strong, "weak": weak, "score": spec.to_dict(),
        "n": report.n_prompts, "dropped_prompts": len(columns.dropped_prompt_ids),
        "confidence": confidence, "n_bootstrap": n_bootstrap, "seed": seed,
        "apgr": _with_ci(report, "apgr", report.router.apgr),
        "cpt50": _with_ci(report, "cpt50_share", report.router.cpt50_share),
        "cpt80": _with_ci(report, "cpt80_share", report.router.cpt80_share),
        "auc": _with_ci(report, "auc", report.router.auc),
        "references": {
            "random": {"apgr": report.random.apgr, "cpt50": report.random.cpt50_share,
                       "cpt80": report.random.cpt80_share,
                       "auc": _with_ci(report, "random_auc", report.random.auc)},
            "oracle": {"apgr": _with_ci(report, "oracle_apgr", report.oracle.apgr),
                       "cpt50": _with_ci(report, "oracle_cpt50_share", report.oracle.cpt50_share),
                       "cpt80": _with_ci(report, "oracle_cpt80_share", report.oracle.cpt80_share),
                       "auc": _with_ci(report, "oracle_auc", report.oracle.auc)},
            "always_strong": {"quality": _with_ci(report, "always_strong_quality", report.strong_mean)},
            "always_weak": {"quality": _with_ci(report, "always_weak_quality", report.weak_mean)},
        },
        "report": report.to_dict(),
    }
    return EvalResult("binary", finite_or_none(summary), report, label)


def _evaluate_multi(router, path, table, models, model_map, n_bootstrap, confidence, seed, label) -> EvalResult:
    names = list(models) if models is not None else list(table.models)
    if len(names) < 2:
        raise DataError(f"{path}: multi-model evaluation needs at least 2 models, got {names}.")
    scorer = router.scorer
    if not scorer.has_quality:
        raise DataError(f"{router.name} ({router.router_type}) predicts no per-model quality; evaluate it as a "
                        f"strong/weak router with --strong NAME --weak NAME.")
    mapped = {m: model_map.get(m, m) for m in names}
    unknown = [m for m in names if mapped[m] not in scorer.models]
    if unknown:
        raise DataError(f"{router.name} ({router.router_type}) predicts the quality of {', '.join(scorer.models)}; "
                        f"the table's {', '.join(unknown)} are not among them. Map them with --map "
                        f"TABLE_MODEL=ROUTER_MODEL, choose models with --models, or pass --strong/--weak.")
    if not table.has_costs:
        raise DataError(f"{path}: multi-model evaluation (AIQ) needs a `cost` (USD) on every row, and this table "
                        f"has rows without one; for strong/weak routing pass --strong NAME --weak NAME.")
    sub = complete_subtable(table, names, require_costs=True)
    prompts = _prompt_texts(sub.prompts, sub.prompt_ids, str(path))
    outputs = router.predict(prompts)
    columns = [scorer.models.index(mapped[m]) for m in names]
    quality = outputs["quality"][:, columns]
    own_costs = scorer.has_cost and all(mapped[m] == m for m in names)
    decision = outputs["cost"][:, columns] if own_costs else np.nanmean(sub.costs, axis=0)
    report = multi_report(quality, sub.scores, sub.costs, models=names, decision_costs=decision,
                          n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    summary = {
        "kind": "multi", **_source(router, path, table), "models": mapped,
        "decision_costs": "router" if own_costs else "table_mean_cost_per_model",
        "n": report.n_prompts, "dropped_prompts": len(table.prompt_ids) - len(sub.prompt_ids),
        "confidence": confidence, "n_bootstrap": n_bootstrap, "seed": seed,
        "aiq": _with_ci(report, "aiq", report.aiq),
        "router_max_quality": _with_ci(report, "router_max_quality", float(report.hull.quality[-1])),
        "quality_at_budget": {k: _with_ci(report, f"quality_at:{k}", v) for k, v in report.quality_at_budget.items()},
        "references": {"zero_router": {"aiq": _with_ci(report, "zero_router_aiq", report.zero_router_aiq)},
                       "oracle": {"aiq": _with_ci(report, "oracle_aiq", report.oracle_aiq)}},
        "report": report.to_dict(),
    }
    return EvalResult("multi", finite_or_none(summary), report, label)


def headline_metrics(result: EvalResult) -> dict[str, float | None]:
    s = result.summary
    if result.kind == "binary":
        return {"apgr": s["apgr"]["value"], "cpt50": s["cpt50"]["value"], "cpt80": s["cpt80"]["value"],
                "auc": s["auc"]["value"]}
    return {"aiq": s["aiq"]["value"], "zero_router_aiq": s["references"]["zero_router"]["aiq"]["value"],
            "oracle_aiq": s["references"]["oracle"]["aiq"]["value"]}


def format_table(result: EvalResult) -> str:
    """The printed summary: router vs references, with intervals."""
    s = result.summary

    def cell(entry) -> str:
        if isinstance(entry, dict):
            value, ci = entry.get("value"), entry.get("ci")
        else:
            value, ci = entry, None
        if value is None:
            return "n/a"
        return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else "")

    head = (f"{result.router_label} ({s['router_type']}) on {s['outcomes']['file']}: n={s['n']} prompts"
            f" ({s['dropped_prompts']} dropped: missing cells)")
    if result.kind == "binary":
        ref = s["references"]
        lines = [head, f"strong={s['strong']} weak={s['weak']}; score: {s['score']['rule']}", "",
                 f"{'':<10}{'APGR':>26}{'CPT(50%)':>26}{'CPT(80%)':>26}{'AUC':>26}"]
        for name, row in (("router", s), ("random", ref["random"]), ("oracle", ref["oracle"])):
            lines.append(f"{name:<10}" + "".join(f"{cell(row[k]):>26}" for k in ("apgr", "cpt50", "cpt80", "auc")))
        lines += ["", f"always strong {cell(ref['always_strong']['quality'])}, always weak "
                      f"{cell(ref['always_weak']['quality'])} (mean score); CPT = share of prompts sent to strong"]
        return "\n".join(lines)
    ref = s["references"]
    lines = [head, f"models: {', '.join(f'{t}->{r}' if t != r else t for t, r in s['models'].items())}; decision "
                   f"costs: {s['decision_costs']}", "", f"{'':<12}{'AIQ':>28}",
             f"{'router':<12}{cell(s['aiq']):>28}", f"{'zero router':<12}{cell(ref['zero_router']['aiq']):>28}",
             f"{'oracle':<12}{cell(ref['oracle']['aiq']):>28}", "", "quality at the cost of each model:"]
    lines += [f"  {k}: {cell(v)}" for k, v in s["quality_at_budget"].items()]
    return "\n".join(lines)


def render_plot(result: EvalResult, path: str | Path) -> Path:
    from routerforge.eval.plots import plot_quality_cost, plot_strong_share_curves

    if result.kind == "binary":
        return plot_strong_share_curves({result.router_label: result.report}, path,
                                        title=f"{result.summary['strong']} vs {result.summary['weak']}")
    return plot_quality_cost(result.report, path, router_name=result.router_label)


def summary_json(result: EvalResult) -> bytes:
    import json

    return (json.dumps(result.summary, indent=2, sort_keys=False, allow_nan=False) + "\n").encode("utf-8")
