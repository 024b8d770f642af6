"""Start of a recipe fitted in one pass (cluster, kNN, linear): run directory, accelerator, tracking.

These recipes have no epochs, optimizer or step checkpoints, so a run is new every time: one fresh tracking
run id (broadcast from the main process so every process logs under the same id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from routerforge.config import config_to_dict
from routerforge.train.accelerator_setup import build_accelerator
from routerforge.train.run_config import RunConfig, run_dir_for
from routerforge.train.tracking import TrackingRun, new_run_id, start_tracking


@dataclass(frozen=True)
class FitRun:
    run: RunConfig
    run_dir: Path
    accelerator: Accelerator
    tracking: TrackingRun
    resolved_config: dict


def start_fit_run(cfg, recipe: str) -> FitRun:
    """`cfg` is the recipe's parsed config: its `run` block has `as_run_config()`, and it has a `tracking` block."""
    run = cfg.run.as_run_config()
    run_dir = run_dir_for(run, recipe)
    accelerator = build_accelerator(run, cfg.tracking, run_dir)
    run_id_box = [new_run_id()]
    broadcast_object_list(run_id_box)
    resolved_config = config_to_dict(cfg)
    tracking = start_tracking(accelerator, cfg.tracking, run_dir, run.name, run_id_box[0], resolved_config)
    return FitRun(run, run_dir, accelerator, tracking, resolved_config)
