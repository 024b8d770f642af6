"""The final export of a training run: model.safetensors + config.json + manifest.json, written atomically.

    <export_dir>/
        model.safetensors   the router's weights (safetensors only; never pickles)
        config.json         what is needed to rebuild the nn.Module (recipe-specific keys)
        ...                 a recipe's further files (`extra_files`: difficulty's backbone/ + tokenizer/,
                            Router-R1's policy/ + pool_config.json)
        manifest.json       recipe, resolved config, model pool, encoder, data fingerprint, git sha (+dirty),
                            library versions, training facts, metrics, sha256 of every other file

Everything, the recipe's further files included, is written into a temporary sibling directory that
replaces `<export_dir>` only once complete, so an interrupted export never leaves a half-written
directory where a good one was.
The registry (routerforge/registry) adds the model card and calibration and checks the manifest on load.

Loading an export's weights goes through `load_export_weights`: the file must BE safetensors (checked by
its bytes, not its name: a pickle or a `torch.save` zip renamed to model.safetensors is refused with
`UnsafeWeightsError` before any byte of it is interpreted) and must match the sha256 in manifest.json.
Nothing in RouterForge unpickles an export.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from routerforge.io.atomic import atomic_directory
from routerforge.io.digest import tree_sha256
from routerforge.io.names import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE

EXPORT_FORMAT_VERSION = 1
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


def export_router(export_dir: Path, state_dict: dict[str, torch.Tensor], model_config: dict, manifest: dict,
                  extra_files: Callable[[Path], None] | None = None) -> Path:
    """Write the export atomically; return `export_dir`.

    extra_files: writes a recipe's further files (a policy in save_pretrained format, a backbone, a pool
    config) into the directory it is given, the temporary one, after model.safetensors and config.json and
    before the manifest: every file it writes is listed in manifest.json with its sha256, and if it fails
    the previous export stays untouched. It must not write manifest.json.
    """
    export_dir = Path(export_dir)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_export(export_dir)  # also removes this process's own leftover temporary directory
    with atomic_directory(export_dir) as tmp:
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(model_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if extra_files is not None:
            extra_files(tmp)
            if (tmp / MANIFEST_FILE).exists():
                raise ValueError(f"export_router's extra_files wrote {MANIFEST_FILE}; the manifest is export_router's")
        full_manifest = dict(manifest)
        # Every file on disk, the extra ones included: the registry verifies exactly this set.
        full_manifest["files"] = tree_sha256(tmp, exclude=(MANIFEST_FILE,))
        (tmp / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return export_dir


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def recover_interrupted_export(export_dir: Path) -> list[str]:
    """Clean up after an export whose process died (SIGKILL, OOM) mid-write; return what was done.

    A dead writer leaves `.tmp-<name>-<pid>` (a partial new export: deleted) and, if it died between its two
    renames, `.old-<name>-<pid>` (the previous good export, moved aside): put back when `export_dir` is
    missing, else deleted. Directories of a writer that is still alive are left alone.
    """
    actions = []
    for leftover in sorted(export_dir.parent.glob(f".*-{export_dir.name}-*")):
        kind, _, pid = leftover.name.rpartition("-")
        if kind not in (f".tmp-{export_dir.name}", f".old-{export_dir.name}") or not pid.isdigit():
            continue
        if _process_alive(int(pid)) and int(pid) != os.getpid():
            continue
        if kind.startswith(".old-") and not export_dir.exists():
            os.rename(leftover, export_dir)
            actions.append(f"restored {export_dir} from {leftover.name}")
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            actions.append(f"removed {leftover.name}")
    return actions


