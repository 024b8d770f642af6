"""The final export of a training run: model.safetensors + config.json + manifest.json, written atomically.

    <export_dir>/
        model.safetensors   the router's weights (safetensors only; never pickles)
        config.json         what is needed to rebuild the nn.Module (recipe-specific keys)
        manifest.json       recipe, resolved config, model pool, encoder, data fingerprint, git sha (+dirty),
                            library versions, training facts, metrics, sha256 of every other file

Everything is written into a temporary sibling directory that replaces `<export_dir>` only once
complete, so an interrupted export never leaves a half-written directory where a good one was.
The registry (routerforge/registry) adds the model card and calibration and checks the manifest on load.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import save_file

from routerforge.data.dataset_io import sha256_file

EXPORT_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE)
_LIBRARIES = ("routerforge", "torch", "accelerate", "transformers", "datasets", "safetensors")


def git_revision(repo_dir: Path) -> dict:
    """{"sha": commit or None, "dirty": uncommitted changes?} of the code that trained the router."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": bool(status.strip())}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(*, recipe: str, router_type: str, resolved_config: dict, model_pool: list[str],
                   encoder: dict, data: dict, training: dict, metrics: dict, tracking: dict,
                   repo_dir: Path) -> dict:
    """The manifest (without the file hashes, which `export_router` adds)."""
    return {
        "export_format_version": EXPORT_FORMAT_VERSION,
        "recipe": recipe,
        "router_type": router_type,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model_pool": list(model_pool),
        "encoder": dict(encoder),
        "data": dict(data),
        "config": resolved_config,
        "training": dict(training),
        "metrics": dict(metrics),
        "tracking": dict(tracking),
        "git": git_revision(repo_dir),
        "libraries": library_versions(),
    }


def export_router(export_dir: Path, state_dict: dict[str, torch.Tensor], model_config: dict, manifest: dict) -> Path:
    """Write the export atomically; return `export_dir`."""
    export_dir = Path(export_dir)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = export_dir.with_name(f".tmp-{export_dir.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(model_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        full_manifest = dict(manifest)
        full_manifest["files"] = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, CONFIG_FILE)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if export_dir.exists():
            old = export_dir.with_name(f".old-{export_dir.name}-{os.getpid()}")
            os.rename(export_dir, old)
            os.rename(tmp, export_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return export_dir
