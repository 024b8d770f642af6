"""Early stopping on a validation metric, and the weights of the best evaluation for the export.

Every evaluation made during training (`run.eval_every_optimizer_steps`) is compared with the best so far;
`run.early_stopping_patience_evals` evaluations in a row without an improvement larger than
`run.early_stopping_min_delta` stop the run (Prechelt 1998, "Early stopping - but when?": patience on a
held-out error). With `run.keep_best` the export holds the weights of the best evaluation, not the last step's.

Resume-safe: the tracker's counters live in trainer_state.json (`early_stopping`) and the best weights in
`best_weights.safetensors` of every step checkpoint, so a resumed run stops at the step the uninterrupted run
stops at and exports the same weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from routerforge.errors import CheckpointError, ConfigError

BEST_WEIGHTS_FILE = "best_weights.safetensors"
_LOWER_IS_BETTER = ("loss", "mse", "mae", "ece", "brier", "nll")


def lower_is_better(metric: str) -> bool:
    return any(marker in metric for marker in _LOWER_IS_BETTER)


def resolve_metric(configured: str, auto_metric: str, available: list[str], recipe: str) -> str:
    """The metric to track: `auto_metric` for `auto`, else the configured name if the recipe evaluates it."""
    metric = auto_metric if configured == "auto" else configured
    if metric not in available:
        raise ConfigError(f"run.early_stopping_metric={configured}: the {recipe} recipe evaluates "
                          f"{', '.join(available) or 'nothing'} on this data; use one of them or auto.")
    return metric


@dataclass
class EarlyStopping:
    """Best-so-far bookkeeping of one run (mutable: the loop updates it; saved in every step checkpoint)."""

    metric: str
    patience_evals: int  # 0: never stop, only keep the best
    min_delta: float
    best_value: float | None = None
    best_optimizer_step: int | None = None
    evaluations: int = 0
    evaluations_since_best: int = 0
    stopped_early: bool = False

    def update(self, metrics: dict, optimizer_step: int) -> bool:
        """Record one evaluation; True when it is the new best (a NaN never is)."""
        value = float(metrics[self.metric])
        self.evaluations += 1
        sign = 1.0 if lower_is_better(self.metric) else -1.0
        improved = not math.isnan(value) and (
            self.best_value is None or sign * (self.best_value - value) > self.min_delta)
        if improved:
            self.best_value, self.best_optimizer_step, self.evaluations_since_best = value, optimizer_step, 0
        else:
            self.evaluations_since_best += 1
            if self.patience_evals and self.evaluations_since_best >= self.patience_evals:
                self.stopped_early = True
        return improved

    def to_dict(self) -> dict:
        return {**asdict(self), "lower_is_better": lower_is_better(self.metric)}

    def stop_message(self, recipe: str, optimizer_step: int) -> str:
        """The line a recipe prints when this evaluation stopped the run."""
        return (f"{recipe}: early stop at optimizer step {optimizer_step}: validation {self.metric} has not improved "
                f"for {self.evaluations_since_best} evaluations (best {self.best_value:.4f} at step "
                f"{self.best_optimizer_step})")

    @classmethod
    def resumed(cls, saved: dict | None, metric: str, patience_evals: int, min_delta: float) -> EarlyStopping:
        """A fresh tracker, or the one saved in a checkpoint's trainer state (same metric required)."""
        if not saved:
            return cls(metric, patience_evals, min_delta)
        if saved["metric"] != metric:
            raise CheckpointError(f"the checkpoint tracked early-stopping metric {saved['metric']}, this run asks for "
                                  f"{metric}; restore run.early_stopping_metric or start a new run.")
        fields = {k: v for k, v in saved.items() if k not in ("metric", "patience_evals", "min_delta",
                                                              "lower_is_better")}
        return cls(metric, patience_evals, min_delta, **fields)


def cpu_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (the best weights must not change with later steps)."""
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state_dict.items()}


def save_best_weights(best_state: dict[str, torch.Tensor] | None, directory: Path) -> None:
    if best_state is not None:
        save_file(best_state, str(directory / BEST_WEIGHTS_FILE))


def load_best_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor] | None:
    path = checkpoint_dir / BEST_WEIGHTS_FILE
    return load_file(str(path)) if path.is_file() else None
