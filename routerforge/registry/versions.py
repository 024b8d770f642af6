"""Versions of a router in the local registry, and the `LATEST` pointer.

    checkpoints/<router>/LATEST            text file: the newest version, e.g. "1.2.0\n"
    checkpoints/<router>/<version>/        one immutable export (manifest.json, model files, card, ...)

Versions are semver "MAJOR.MINOR.PATCH" (what `routerforge publish` tags as v<version> on the Hub) and
only increase: a new export must be higher than every version already in `checkpoints/<router>/`. The
default next version bumps MINOR of the highest one (1.0.0 for the first export).

`LATEST` is a text file, not a symlink: symlinks do not survive every filesystem, archive format or Hub
upload, and a text file is written atomically (temporary file + rename). `checkpoints/<router>`,
`checkpoints/<router>/LATEST` and `checkpoints/<router>/latest` all resolve to the version it names.
Run directories (`checkpoints/<router>/<run name>/`, step checkpoints and `final/`) share the folder; they
are never versions, because a version directory's name is semver and holds a manifest.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from routerforge.errors import CheckpointError
from routerforge.io.atomic import atomic_write_text
from routerforge.io.names import LATEST_FILE, MANIFEST_FILE

SEMVER_PATTERN = r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"  # MAJOR.MINOR.PATCH, no leading zeros
SEMVER_RE = re.compile(rf"^{SEMVER_PATTERN}$")
ROUTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
FIRST_VERSION = "1.0.0"


def parse_semver(version: str) -> tuple[int, int, int]:
    """(major, minor, patch); CheckpointError for anything but MAJOR.MINOR.PATCH."""
    match = SEMVER_RE.match(version or "")
    if not match:
        raise CheckpointError(f"version {version!r} is not MAJOR.MINOR.PATCH (e.g. 1.2.0); versions are semver.")
    return int(match[1]), int(match[2]), int(match[3])


def check_router_name(name: str) -> str:
    if not ROUTER_NAME_RE.match(name or ""):
        raise CheckpointError(f"router name {name!r}: use letters, digits, '.', '_' or '-' (at most 96), "
                              f"e.g. mf or mf-arena.")
    return name


def list_versions(router_dir: Path) -> list[str]:
    """The versions in `router_dir` (semver directories with a manifest.json), oldest first."""
    router_dir = Path(router_dir)
    if not router_dir.is_dir():
        return []
    found = [p.name for p in router_dir.iterdir()
             if p.is_dir() and SEMVER_RE.match(p.name) and (p / MANIFEST_FILE).is_file()]
    return sorted(found, key=parse_semver)


def next_version(router_dir: Path) -> str:
    """MINOR bump of the highest version in `router_dir`; 1.0.0 when there is none."""
    versions = list_versions(router_dir)
    if not versions:
        return FIRST_VERSION
    major, minor, _ = parse_semver(versions[-1])
    return f"{major}.{minor + 1}.0"


def check_new_version(router_dir: Path, version: str) -> str:
    """`version` if it is semver and higher than every existing version; CheckpointError otherwise."""
    parse_semver(version)
    versions = list_versions(router_dir)
    if (Path(router_dir) / version).exists():
        raise CheckpointError(f"{Path(router_dir) / version} already exists; versions are immutable. "
                              f"Export as {next_version(router_dir)} (or leave the version unset).")
    if versions and parse_semver(version) <= parse_semver(versions[-1]):
        raise CheckpointError(f"version {version} is not higher than the newest {router_dir}/{versions[-1]}; "
                              f"versions only increase. Use {next_version(router_dir)} or higher.")
    return version


def read_latest(router_dir: Path) -> str | None:
    """The version LATEST names, or None when there is no LATEST file."""
    latest = Path(router_dir) / LATEST_FILE
    if not latest.is_file():
        return None
    version = latest.read_text(encoding="utf-8").strip()
    parse_semver(version)
    return version


def write_latest(router_dir: Path, version: str) -> None:
    """Point LATEST at `version` atomically (temporary file + rename)."""
    parse_semver(version)
    atomic_write_text(Path(router_dir) / LATEST_FILE, version + "\n")


def resolve_local_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory `path` names: itself (it has a manifest.json), or via LATEST for
    `checkpoints/<router>`, `checkpoints/<router>/LATEST` and `checkpoints/<router>/latest`."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    if path.name in (LATEST_FILE, "latest"):
        router_dir = path.parent
    elif path.is_dir():
        router_dir = path
    else:
        raise CheckpointError(f"checkpoint not found: {path}. Pass checkpoints/<router>/<version>, "
                              f"checkpoints/<router> (its LATEST) or a Hub id ORG/NAME.")
    version = read_latest(router_dir)
    if version is None:
        versions = list_versions(router_dir)
        hint = f" (versions there: {', '.join(versions)})" if versions else ""
        raise CheckpointError(f"{path}: no manifest.json and no {router_dir / LATEST_FILE}{hint}; pass a "
                              f"version directory checkpoints/<router>/<version>.")
    target = router_dir / version
    if not (target / MANIFEST_FILE).is_file():
        raise CheckpointError(f"{router_dir / LATEST_FILE} names {version}, but {target} has no manifest.json; "
                              f"re-export it or fix LATEST.")
    return target


def read_manifest(directory: Path) -> dict:
    """manifest.json of a checkpoint directory as a dict; CheckpointError naming the file otherwise."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; only exported checkpoints (with a manifest) can be loaded.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); the file is damaged, re-export.") \
            from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 ({err}); re-export.") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: must be a JSON object; re-export.")
    return manifest
