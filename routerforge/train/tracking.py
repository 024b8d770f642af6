"""Experiment tracking through accelerate's tracker API: W&B (default) or TensorBoard.

- W&B runs OFFLINE unless a key and a network are there (`tracking.wandb_mode=auto`): with
  `WANDB_API_KEY` set and the W&B host answering, it is online; otherwise the run is written under
  `<run_dir>/wandb/offline-run-*` and can be uploaded later with `wandb sync <that dir>`.
  An explicit `WANDB_MODE` environment variable always wins.
- The tracking run id is created once per training run and stored in every step checkpoint's
  trainer_state.json; a resumed run passes it back (`wandb.init(id=..., resume="allow")`), so the
  resumed run continues the same W&B run.
- TensorBoard (`tracking.report_to=tensorboard`) writes event files under `<run_dir>/tensorboard/`.

Only the main process talks to the tracker (accelerate's `@on_main_process`); call these functions on
every process anyway: they are no-ops elsewhere.
"""

from __future__ import annotations

import os
import secrets
import string
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from accelerate import Accelerator

from routerforge.train.run_config import TrackingConfig

_ID_ALPHABET = string.ascii_lowercase + string.digits
WANDB_DEFAULT_HOST = "https://api.wandb.ai"


@dataclass(frozen=True)
class TrackingRun:
    """Where a run's tracking went (for the end-of-run message and the export manifest)."""

    tracker: str  # wandb | tensorboard | none
    run_id: str | None
    mode: str | None  # W&B: online | offline | disabled
    local_dir: str | None  # the run's files on this machine
    url: str | None = None  # W&B web page when online

    def describe(self) -> str:
        if self.tracker == "none":
            return "tracking: none (tracking.report_to=none)"
        if self.tracker == "tensorboard":
            return f"TensorBoard run {self.run_id}: {self.local_dir} (view: tensorboard --logdir {self.local_dir})"
        if self.mode == "offline":
            return (f"W&B run {self.run_id} (offline): {self.local_dir} "
                    f"(upload: wandb sync {self.local_dir})")
        if self.mode == "disabled":
            return f"W&B run {self.run_id}: disabled (tracking.wandb_mode / WANDB_MODE=disabled)"
        return f"W&B run {self.run_id} (online): {self.url or self.local_dir}"

    def to_dict(self) -> dict:
        return {"tracker": self.tracker, "run_id": self.run_id, "mode": self.mode, "local_dir": self.local_dir,
                "url": self.url}


def new_run_id() -> str:
    """An 8-character lowercase id, W&B's run id format."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _host_answers(url: str, timeout_s: float = 3.0) -> bool:
    """True when `url` gives ANY HTTP response (even 404) within `timeout_s`.

    A TCP connect alone is not enough: a proxy, a firewall or a half-dead server that accepts
    connections but never answers would send W&B online and stall `wandb.init` (~90 s) or fail the run.
    """
    if not urlparse(url).hostname:
        return False
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True  # the server answered, with an error status: it is there
    except (OSError, ValueError):  # URLError, connection refused, timeout, malformed URL
        return False


def resolve_wandb_mode(config: TrackingConfig) -> str:
    """online / offline / disabled. The env var WANDB_MODE wins; `auto` goes online only with key + network."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        return "offline" if env_mode == "dryrun" else env_mode
    if config.wandb_mode != "auto":
        return config.wandb_mode
    if not os.environ.get("WANDB_API_KEY"):
        return "offline"
    # Only checked when a key is set: a key without network stalls wandb.init for ~40 s.
    # tests/reliability/test_tracking_faults.py: a dead port and a silent server both give offline.
    return "online" if _host_answers(os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_HOST)) else "offline"


def flatten_config(values: dict, prefix: str = "") -> dict[str, bool | int | float | str | None]:
    """Nested config -> {"optim.lr": 3e-4, ...}: TensorBoard's hparams accept only scalars."""
    flat: dict[str, bool | int | float | str | None] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def start_tracking(
    accelerator: Accelerator,
    config: TrackingConfig,
    run_dir: Path,
    run_name: str,
    run_id: str,
    resolved_config: dict,
) -> TrackingRun:
    """Start the tracker on the main process (accelerate `init_trackers`); return where it writes."""
    if config.report_to == "none":
        return TrackingRun(tracker="none", run_id=None, mode=None, local_dir=None)
    if config.report_to == "tensorboard":
        accelerator.init_trackers(config.project, config=flatten_config(resolved_config))
        return TrackingRun(tracker="tensorboard", run_id=run_id, mode=None,
                           local_dir=str(Path(accelerator.logging_dir) / config.project))
    mode = resolve_wandb_mode(config)
    wandb_kwargs = {"id": run_id, "resume": "allow", "name": run_name, "dir": str(run_dir), "mode": mode}
    if config.entity:
        wandb_kwargs["entity"] = config.entity
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(config.project, config=resolved_config, init_kwargs={"wandb": wandb_kwargs})
    local_dir = url = None
    if accelerator.is_main_process:
        wandb_run = accelerator.get_tracker("wandb", unwrap=True)
        if mode != "disabled":
            local_dir = str(Path(wandb_run.dir).parent)  # run.dir is <...>/offline-run-*/files
        url = getattr(wandb_run, "url", None) if mode == "online" else None
    return TrackingRun(tracker="wandb", run_id=run_id, mode=mode, local_dir=local_dir, url=url)


def finish_tracking(accelerator: Accelerator) -> None:
    """End the run's trackers (W&B, TensorBoard); what `accelerator.end_training()` does MINUS destroying the
    process group.

    Why not `end_training`: it destroys the gloo/NCCL group while the recipe's DDP/FSDP wrappers still hold
    references to it. When `main` then returns, freeing the wrapper frees the group's last reference, and its
    destructor joins the gloo worker threads while holding the GIL; a worker that is releasing a Python tensor
    waits for that GIL: a deadlock at the very end of an otherwise finished run (seen on a 2-process
    Router-R1 run: rank 1 stuck in ~ProcessGroupGloo under Reducer::~Reducer). The group stays registered
    instead, so freeing a wrapper never runs its destructor, and `routerforge.train.entrypoint.run_recipe`
    ends multi-process runs with `os._exit` after flushing everything.
    """
    for tracker in accelerator.trackers:
        tracker.finish()
