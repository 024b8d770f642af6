"""Shared config blocks every training recipe composes, and the recipe command line.

A recipe declares ONE frozen top-level dataclass that holds these blocks as fields (composition, no
inheritance), next to its own `data` / `model` / `loss` blocks::

    @dataclass(frozen=True)
    class MFConfig:
        run: RunConfig = doc("...", default_factory=RunConfig)
        optim: OptimConfig = doc("...", default_factory=OptimConfig)
        ...
        resume: str = doc(RESUME_HELP, default="never")

`parse_recipe_args(MFConfig, argv)` reads `--config file.yaml` and `key=value` overrides through
`routerforge.config.load_config`, so a typo or a wrong type is an error naming the key.
Every unit is in the field's help: steps are OPTIMIZER steps (one per `gradient_accumulation_steps`
micro-batches), batch sizes are per process.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from routerforge.config import doc, load_config, parse_yaml
from routerforge.config_reference import format_help
from routerforge.errors import ConfigError
from routerforge.recipes import resolve_config_path

T = TypeVar("T")

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "linear", "cosine")
TRACKERS = ("wandb", "tensorboard", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes, how long it trains, and its batch geometry and numerics."""

    name: str = doc("run name: the run directory is <output_dir>/<router>/<name>/ (letters, digits, . _ -)",
                    default="default")
    output_dir: str = doc("root directory of all checkpoints and exports (path)", default="checkpoints")
    seed: int = doc("random seed (integer); process i seeds its noise RNG with seed + i", default=42)
    epochs: int = doc("passes over the training split (epochs)", default=1)
    max_optimizer_steps: int | None = doc("stop after this many optimizer steps (steps); None: run all epochs",
                                          default=None)
    micro_batch_size: int = doc("examples per process per forward pass (examples)", default=64)
    gradient_accumulation_steps: int = doc("micro-batches accumulated per optimizer step (count)", default=1)
    mixed_precision: str = doc("autocast dtype: no, fp16 (GPU only) or bf16", default="no")
    eval_every_optimizer_steps: int = doc("evaluate on the validation split every N optimizer steps (steps); "
                                          "0: only at the end", default=0)
    progress_bar: bool = doc("show a progress bar on the main process (bool)", default=True)
    max_consecutive_nonfinite_steps: int = doc(
        "an optimizer step whose loss is NaN/Inf on any process is skipped (weights unchanged, counted); after "
        "this many such steps in a row the run saves a checkpoint and stops with exit status 3 (steps)",
        default=10)
    early_stopping_patience_evals: int = doc(
        "stop when the validation metric has not improved for this many evaluations in a row (evaluations, "
        "every run.eval_every_optimizer_steps); the export then holds the weights of the best evaluation. "
        "0: train every step; the export still holds the best evaluation's weights when evaluations ran",
        default=0)
    early_stopping_metric: str = doc(
        "validation metric for early stopping and keep-best export: auto (the recipe's routing metric where the "
        "split has the labels for it, else its validation loss) or a metric name the recipe logs under eval/ "
        "(e.g. loss, accuracy); lower is better for names containing loss/mse/mae/ece/brier, else higher",
        default="auto")
    early_stopping_min_delta: float = doc("an evaluation counts as an improvement only when it beats the best by "
                                          "more than this (metric units)", default=0.0)
    keep_best: bool = doc("export the weights of the best evaluation instead of the last step's (bool); needs "
                          "evaluations (run.eval_every_optimizer_steps > 0)", default=True)
    time_budget_minutes: float | None = doc(
        "after the first optimizer steps, warn when the projected training time exceeds this (minutes); a "
        "warning, the run continues. None: no budget", default=None)
    cpu_threads_per_process: int | None = doc(
        "torch intra-op threads per process on CPU (threads). None: keep the launcher's setting, except that a "
        "single-process CPU launch left at accelerate's default of 1 thread uses every available core",
        default=None)

    def __post_init__(self) -> None:
        if not _RUN_NAME.match(self.name):
            raise ValueError(f"run.name '{self.name}' must be letters, digits, '.', '_' or '-' (it names a directory)")
        if self.epochs < 1:
            raise ValueError(f"run.epochs must be >= 1, got {self.epochs}")
        if self.max_optimizer_steps is not None and self.max_optimizer_steps < 1:
            raise ValueError(f"run.max_optimizer_steps must be >= 1 or null, got {self.max_optimizer_steps}")
        if self.micro_batch_size < 1:
            raise ValueError(f"run.micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"run.gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"run.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got '{self.mixed_precision}'")
        if self.eval_every_optimizer_steps < 0:
            raise ValueError(f"run.eval_every_optimizer_steps must be >= 0, got {self.eval_every_optimizer_steps}")
        if self.max_consecutive_nonfinite_steps < 1:
            raise ValueError(f"run.max_consecutive_nonfinite_steps must be >= 1, got "
                             f"{self.max_consecutive_nonfinite_steps}")
        if self.early_stopping_patience_evals < 0:
            raise ValueError(f"run.early_stopping_patience_evals must be >= 0, got "
                             f"{self.early_stopping_patience_evals}")
        if self.early_stopping_patience_evals and not self.eval_every_optimizer_steps:
            raise ValueError("run.early_stopping_patience_evals needs run.eval_every_optimizer_steps > 0 (early "
                             "stopping compares evaluations made during training)")
        if self.early_stopping_min_delta < 0:
            raise ValueError(f"run.early_stopping_min_delta must be >= 0, got {self.early_stopping_min_delta}")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= 0:
            raise ValueError(f"run.time_budget_minutes must be > 0 or null, got {self.time_budget_minutes}")
        if self.cpu_threads_per_process is not None and self.cpu_threads_per_process < 1:
            raise ValueError(f"run.cpu_threads_per_process must be >= 1 or null, got {self.cpu_threads_per_process}")


@dataclass(frozen=True)
class FitRunConfig:
    """The run block of a recipe fitted in one pass (no epochs, batches or step checkpoints: cluster, kNN, linear)."""

    name: str = doc("run name: the run directory is <output_dir>/<router>/<name>/ (letters, digits, . _ -)",
                    default="default")
    output_dir: str = doc("root directory of all runs and exports (path)", default="checkpoints")
    seed: int = doc("random seed (integer) of the fit's random choices (cross-validation folds, k-means++ seeds, "
                    "samples)", default=42)
    progress_bar: bool = doc("show progress on the main process (bool)", default=True)

    def __post_init__(self) -> None:
        self.as_run_config()  # the shared RunConfig validates the name

    def as_run_config(self) -> RunConfig:
        """The shared run block, for the shared accelerate/run-dir functions."""
        return RunConfig(name=self.name, output_dir=self.output_dir, seed=self.seed, progress_bar=self.progress_bar)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient clipping."""

    name: str = doc("optimizer: adam (L2 penalty added to the gradient, as RouteLLM) or adamw (decoupled decay)",
                    default="adam")
    lr: float = doc("peak learning rate (per optimizer step)", default=3e-4)
    weight_decay: float = doc("weight decay coefficient (unitless; L2 for adam, decoupled for adamw)", default=0.0)
    betas: list[float] = doc("Adam beta1, beta2 (unitless, each in [0, 1))",
                             default_factory=lambda: [0.9, 0.999])
    eps: float = doc("Adam epsilon (unitless)", default=1e-8)
    max_grad_norm: float = doc("clip the global gradient L2 norm to this value (norm units); 0: no clipping",
                               default=0.0)
    lr_schedule: str = doc("learning-rate schedule after warmup: constant, linear (to 0) or cosine (to 0)",
                           default="constant")
    warmup_optimizer_steps: int = doc("linear warmup from 0 to lr over this many optimizer steps (steps)",
                                      default=0)
    warmup_fraction: float | None = doc("linear warmup over this fraction of the run's optimizer steps "
                                        "(fraction in [0, 1)); replaces warmup_optimizer_steps, so shortening "
                                        "the run shortens the warmup. None: use warmup_optimizer_steps",
                                        default=None)

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got '{self.name}'")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.max_grad_norm < 0:
            raise ValueError(f"optim.max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"optim.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got '{self.lr_schedule}'")
        if self.warmup_optimizer_steps < 0:
            raise ValueError(f"optim.warmup_optimizer_steps must be >= 0, got {self.warmup_optimizer_steps}")
        if self.warmup_fraction is not None:
            if not 0.0 <= self.warmup_fraction < 1.0:
                raise ValueError(f"optim.warmup_fraction must be in [0, 1) or null, got {self.warmup_fraction}")
            if self.warmup_optimizer_steps:
                raise ValueError(f"set one of optim.warmup_fraction ({self.warmup_fraction}) and "
                                 f"optim.warmup_optimizer_steps ({self.warmup_optimizer_steps}); set the other to "
                                 f"{'0' if self.warmup_fraction is not None else 'null'}")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking through accelerate's tracker API (W&B or TensorBoard)."""

    report_to: str = doc("tracker: wandb, tensorboard or none", default="wandb")
    project: str = doc("W&B project / TensorBoard sub-directory name", default="routerforge")
    entity: str | None = doc("W&B entity (team or user); None: the key's default entity", default=None)
    wandb_mode: str = doc("auto: online when WANDB_API_KEY is set and the W&B host answers, else offline; "
                          "or online, offline, disabled (an explicit WANDB_MODE env var wins)", default="auto")
    log_every_optimizer_steps: int = doc("log training metrics every N optimizer steps (steps)", default=10)

    def __post_init__(self) -> None:
        if self.report_to not in TRACKERS:
            raise ValueError(f"tracking.report_to must be one of {', '.join(TRACKERS)}, got '{self.report_to}'")
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"tracking.wandb_mode must be one of {', '.join(WANDB_MODES)}, got '{self.wandb_mode}'")
        if self.log_every_optimizer_steps < 1:
            raise ValueError(f"tracking.log_every_optimizer_steps must be >= 1, got {self.log_every_optimizer_steps}")
        if not self.project:
            raise ValueError("tracking.project must not be empty")


@dataclass(frozen=True)
class CheckpointConfig:
    """Step checkpoints (accelerate save_state + trainer_state.json + COMPLETE) for resuming."""

    every_optimizer_steps: int = doc("save a step checkpoint every N optimizer steps (steps); 0: never", default=500)
    keep_last: int = doc("keep the newest N complete step checkpoints (count); older ones are deleted", default=3)

    def __post_init__(self) -> None:
        if self.every_optimizer_steps < 0:
            raise ValueError(f"checkpoint.every_optimizer_steps must be >= 0, got {self.every_optimizer_steps}")
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


@dataclass(frozen=True)
class ExportConfig:
    """The final export (model.safetensors, config.json, manifest.json)."""

    dir: str | None = doc("export directory (path); None: <output_dir>/<router>/<run.name>/final", default=None)
    registry: bool = doc("also register the export as a versioned checkpoint <output_dir>/<router>/<version>/ "
                         "(model card, calibration.json, LATEST) via routerforge.registry.register.finalize_export",
                         default=True)
    version: str | None = doc("semver of the registered checkpoint (MAJOR.MINOR.PATCH, must exceed every existing "
                              "one); None: the next minor version (1.0.0 first)", default=None)


RESUME_HELP = ("never: start fresh (error if the run directory already holds checkpoints); auto: continue "
               "from the newest COMPLETE step checkpoint of this run, or start fresh if there is none; "
               "or the path of one step checkpoint directory")
"""Help of the top-level `resume` field every recipe declares: `resume: str = doc(RESUME_HELP, default="never")`.
It is top level because it is a per-invocation choice (`... resume=auto`), not part of the experiment."""


def parse_recipe_args(config_cls: type[T], argv: list[str] | None, description: str = "") -> T:
    """`--config file.yaml key=value ...` -> a validated, frozen `config_cls` (ConfigError on any problem)."""
    parser = argparse.ArgumentParser(description=description, epilog=format_help(config_cls),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE|RECIPE/NAME",
                        help="YAML config file, or a packaged config by name (e.g. mf/default, mf/tiny)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3 run.epochs=2")
    args = parser.parse_args(argv)
    config_path = resolve_config_path(args.config) if args.config is not None else None
    refuse_retired_keys(config_cls, config_path, args.overrides)
    return load_config(config_cls, config_path, args.overrides)


def refuse_retired_keys(config_cls: type, config_path: Path | None, overrides: list[str]) -> None:
    """A top-level key the recipe no longer reads (`config_cls.RETIRED_KEYS`: key -> what to do instead) is a
    ConfigError saying where it went, rather than "unknown key" (a config written for an earlier layout)."""
    retired: dict[str, str] = getattr(config_cls, "RETIRED_KEYS", {})
    if not retired:
        return
    from_file = {}
    if config_path is not None and Path(config_path).is_file():
        try:
            from_file = parse_yaml(Path(config_path).read_text(encoding="utf-8")) or {}
        except Exception:  # noqa: BLE001 (load_config reports a file it cannot read, with its reason)
            from_file = {}
    given = [(f"{config_path}", key) for key in (from_file if isinstance(from_file, dict) else {})]
    given += [("override", override.partition("=")[0].split(".")[0]) for override in overrides]
    for origin, key in given:
        if key in retired:
            raise ConfigError(f"{origin}: '{key}' is not a key of this recipe: {retired[key]}")


def run_dir_for(run: RunConfig, router: str) -> Path:
    """The directory of one training run: step checkpoints, tracker files, run_state.json."""
    return Path(run.output_dir) / router / run.name


def export_dir_for(run: RunConfig, export: ExportConfig, router: str) -> Path:
    return Path(export.dir) if export.dir else run_dir_for(run, router) / "final"
