"""Which model a request goes to: the router's binary score against a preset's threshold.

A preset is a calibrated strong share (its threshold and tie fraction come from the checkpoint's
calibration.json, so the share of *your* traffic sent to the strong model is the one calibrated: see
routerforge/eval/thresholds.py) or a raw threshold (strong iff score >= threshold, as `Router.route(threshold=)`).
All presets share one score per request, so concurrent requests of different presets batch together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from routerforge.errors import ConfigError
from routerforge.eval.thresholds import TIE_TOLERANCE, find_calibration, strong_mask, threshold_row
from routerforge.router import Router, ScoreSpec
from routerforge.serve.config import PresetConfig, ServeConfig

MODEL_PREFIX = "router"
DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class Rule:
    """A resolved preset: strong iff the score passes `threshold` (calibrated: with its tie rule)."""

    name: str
    threshold: float
    tie_fraction: float | None  # None: a raw threshold (score >= threshold); else the calibrated rule
    strong_share: float | None
    tie_tolerance: float = TIE_TOLERANCE

    def is_strong(self, score: float, text: str) -> bool:
        if self.tie_fraction is None:
            return score >= self.threshold
        return bool(strong_mask([score], [text], self.threshold, self.tie_fraction, self.tie_tolerance)[0])

    def describe(self) -> str:
        if self.strong_share is None:
            return f"threshold {self.threshold:g}"
        return f"strong share {self.strong_share:g} (calibrated threshold {self.threshold:.6g})"


def raw_threshold_rule(threshold: float, name: str = "header") -> Rule:
    return Rule(name, float(threshold), None, None)


def binary_pair(router: Router, config: ServeConfig) -> ScoreSpec:
    """The (strong, weak) pair the proxy routes between: serve.yaml's names, or the checkpoint's calibrated pair."""
    strong, weak = config.strong.model or None, config.weak.model or None
    if (strong is None) != (weak is None):
        raise ConfigError("serve config: set both strong.model and weak.model (the router's names), or neither to "
                          "use the checkpoint's calibrated pair.")
    spec = router.score_spec(strong, weak)
    if spec.strong is None or spec.weak is None:
        raise ConfigError(f"{router.path}: set strong.model and weak.model in the serve config; the checkpoint has "
                          f"no single calibrated pair to take them from.")
    return spec


def resolve_rules(router: Router, spec: ScoreSpec, presets: Mapping[str, PresetConfig]) -> dict[str, Rule]:
    """Every preset as a Rule; a strong share that is not calibrated in the checkpoint is a ConfigError now,
    at startup, not a failed request later."""
    rules: dict[str, Rule] = {}
    for name, preset in presets.items():
        if preset.threshold is not None:
            if not math.isfinite(preset.threshold):
                raise ConfigError(f"preset '{name}': threshold must be a finite number, got {preset.threshold}")
            rules[name] = raw_threshold_rule(preset.threshold, name)
            continue
        where = str(router.path)
        entry = find_calibration(router.calibration, spec.strong, spec.weak, where)
        row = threshold_row(entry, float(preset.strong_share), where)
        rules[name] = Rule(name, float(row["threshold"]), float(row["tie_fraction"]), float(preset.strong_share),
                           float(router.calibration.get("tie_tolerance", TIE_TOLERANCE)))
    if not rules:
        raise ConfigError("no routing preset: pass --strong-share or --threshold, or define presets in the serve "
                          "config.")
    return rules


def preset_of_model(model: str, rules: Mapping[str, Rule]) -> str | None:
    """`router` -> the default preset, `router-<name>` -> <name>; None for any other model name."""
    if model == MODEL_PREFIX:
        return DEFAULT_PRESET if DEFAULT_PRESET in rules else None
    if model.startswith(MODEL_PREFIX + "-") and model[len(MODEL_PREFIX) + 1:] in rules:
        return model[len(MODEL_PREFIX) + 1:]
    return None


def model_names(rules: Mapping[str, Rule]) -> list[str]:
    return [f"{MODEL_PREFIX}-{name}" for name in rules]
