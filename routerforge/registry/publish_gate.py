"""The promotion gate of `routerforge publish`: a new version must not be worse than the one it follows.

A checkpoint's gate metric is `manifest["metrics"]["gate"]`::

    {"set": str, "metric": str, "value": float, "higher_is_better": bool}

e.g. `{"set": "mt-bench-gate", "metric": "apgr", "value": 0.71, "higher_is_better": true}`. `check_gate` compares
it with the same field of the published version it follows (the rules are in routerforge/registry/publish.py's
docstring); it never touches the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from routerforge.errors import CheckpointError, PublishError

GATE_FORMAT = '{"set": str, "metric": str, "value": float, "higher_is_better": bool}'


class GateRefusedError(PublishError):
    """The promotion gate refused the checkpoint; `--force` overrides."""


@dataclass(frozen=True)
class GateMetric:
    """`manifest["metrics"]["gate"]`: one number on a fixed evaluation set that decides promotion."""

    set: str
    metric: str
    value: float
    higher_is_better: bool


def read_gate(manifest: dict[str, Any], where: str) -> GateMetric | None:
    """The gate metric of a manifest, None if it has none; CheckpointError if it is malformed."""
    metrics = manifest.get("metrics")
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    if gate is None:
        return None
    if not isinstance(gate, dict):
        raise CheckpointError(f"{where}: metrics.gate must be an object {GATE_FORMAT}.")
    value = gate.get("value")
    problems = [
        f"'{key}' must be a non-empty string"
        for key in ("set", "metric")
        if not (isinstance(gate.get(key), str) and gate[key])
    ]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"'value' must be a finite number, got {value!r}")
    if not isinstance(gate.get("higher_is_better"), bool):
        problems.append(f"'higher_is_better' must be true or false, got {gate.get('higher_is_better')!r}")
    if problems:
        raise CheckpointError(f"{where}: metrics.gate: {'; '.join(problems)}. Expected {GATE_FORMAT}.")
    return GateMetric(gate["set"], gate["metric"], float(value), gate["higher_is_better"])


def check_gate(
    new: GateMetric | None,
    version: str,
    published: GateMetric | None,
    published_version: str | None,
    *,
    force: bool,
) -> list[str]:
    """Apply the promotion gate (rules in the module docstring); return notes, raise GateRefusedError."""
    if published_version is None:
        return ["first published version: nothing to compare the promotion gate with."]
    if published is None:
        return [
            f"published v{published_version} has no metrics.gate in its manifest.json: promotion gate not checked."
        ]

    def refuse_or_note(message: str, fix: str) -> list[str]:
        if force:
            return [f"{message}; publishing anyway (--force)."]
        raise GateRefusedError(f"{message}. {fix} or pass --force to publish anyway.")

    direction = "higher" if published.higher_is_better else "lower"
    if new is None:
        return refuse_or_note(
            f"promotion gate: {version} has no metrics.gate but published v{published_version} has one"
            f" ({published.metric} on '{published.set}' = {published.value:.6g})",
            f"Add metrics.gate {GATE_FORMAT} to manifest.json",
        )
    if (new.set, new.metric, new.higher_is_better) != (
        published.set,
        published.metric,
        published.higher_is_better,
    ):
        return refuse_or_note(
            f"promotion gate: not comparable: {version} reports {new.metric} on '{new.set}'"
            f" ({'higher' if new.higher_is_better else 'lower'} is better), published v{published_version}"
            f" reports {published.metric} on '{published.set}' ({direction} is better)",
            "Evaluate on the same gate set and metric",
        )
    worse = new.value < published.value if new.higher_is_better else new.value > published.value
    comparison = (
        f"{new.metric} on '{new.set}' is {new.value:.6g} for {version} vs {published.value:.6g} for published"
        f" v{published_version} ({direction} is better)"
    )
    if worse:
        return refuse_or_note(
            f"promotion gate: worse than published v{published_version}, the version it follows: {comparison}",
            "Improve it",
        )
    return [f"promotion gate passed: {comparison}."]

