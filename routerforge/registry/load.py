"""Find a checkpoint (local directory or Hub repo) and verify it against its manifest before anything loads.

`fetch_checkpoint(path_or_hub_id, revision)` returns a local directory: a local path as is (or through
its router's LATEST, see routerforge.registry.versions), a Hub id `ORG/NAME` through
`huggingface_hub.snapshot_download(revision=...)` (published versions are tags `v<version>`).

`verify_checkpoint(directory)` checks, in order, and raises `CheckpointError` with one line naming the
file and the cause:

1. manifest.json parses and has router_type, model_pool, encoder and files;
2. every file listed in `files` exists and its sha256 matches (else: "modified or corrupted after
   export", i.e. a tampered file), and no other file is there (a file slipped in after export);
3. config.json agrees with the manifest: same router_type, same model pool in the same order (else:
   "another model pool": the weights' rows would be read as other models), and for embedding routers
   the same prompt-embedding width as the manifest's encoder (else: "another encoder").

The encoder itself (id, revision, settings) is checked when the router is built, against the encoder
this machine resolves (routerforge/models/family_scorer.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from routerforge.errors import CheckpointError
from routerforge.io.digest import sha256_file
from routerforge.io.names import CONFIG_FILE, MANIFEST_FILE
from routerforge.registry.versions import parse_semver, read_manifest, resolve_local_checkpoint

# Present in every Hub snapshot (the Hub adds it), never part of an export.
IGNORED_NAMES = frozenset({".gitattributes"})
# Hub repo ids: letters, digits, '-', '_', '.', at most 96 characters each side of the '/'.
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REQUIRED_MANIFEST_KEYS = (("router_type", str), ("model_pool", list), ("encoder", dict), ("files", dict))


def is_hub_id(path_or_hub_id: str | Path) -> bool:
    """True for `ORG/NAME` that is not an existing local path."""
    text = str(path_or_hub_id)
    return bool(HUB_ID_RE.match(text)) and not Path(text).exists() and ".." not in text


def fetch_checkpoint(path_or_hub_id: str | Path, revision: str | None = None, *, token: str | bool | None = None,
                     cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """A local checkpoint directory for a path or a Hub id (downloaded at `revision`, e.g. "v1.0.0"; default
    main, the newest published version). token, cache_dir, local_files_only: as huggingface_hub's."""
    if not is_hub_id(path_or_hub_id):
        if revision is not None:
            raise CheckpointError(f"revision={revision!r} applies to Hub ids (ORG/NAME) only; {path_or_hub_id} is a "
                                  f"local path: pass its version directory instead.")
        return resolve_local_checkpoint(path_or_hub_id)
    return download_checkpoint(str(path_or_hub_id), revision, token=token, cache_dir=cache_dir,
                               local_files_only=local_files_only)


def download_checkpoint(repo_id: str, revision: str | None, *, token: str | bool | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """snapshot_download of a Hub repo at `revision` (into the HF cache); CheckpointError when it cannot."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # huggingface_hub reads HF_ENDPOINT once, at import; read it again so a value set since is honoured.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{repo_id}@{revision or 'main'}"
    try:
        return Path(snapshot_download(repo_id, revision=revision, endpoint=endpoint, token=token,
                                      cache_dir=cache_dir, local_files_only=local_files_only))
    except RevisionNotFoundError:
        raise CheckpointError(f"{where}: no such revision on the Hub; published versions are tags v<version> "
                              f"(e.g. revision='v1.0.0'), main holds the newest.") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such model repo on the Hub (or it is private: set HF_TOKEN), and no "
                              f"local directory of that name.") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{where}: no local directory {repo_id}, not in the local HF cache, and the Hub cannot "
                              f"be reached (HF_HUB_OFFLINE or no network); pass a local checkpoint "
                              f"directory.") from None
    except HfHubHTTPError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{where}: download failed ({first}).") from None


def _files_on_disk(directory: Path) -> set[str]:
    out = set()
    for path in directory.rglob("*"):
        rel = path.relative_to(directory)
        if path.is_file() and path.name not in IGNORED_NAMES and not any(p.startswith(".") for p in rel.parts):
            out.add(rel.as_posix())
    return out - {MANIFEST_FILE}


def verify_files(directory: Path, manifest: dict, *, allow_unlisted: frozenset[str] = frozenset()) -> None:
    """Every listed file present with its sha256, nothing unlisted (but `allow_unlisted`)."""
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise CheckpointError(f"{directory / MANIFEST_FILE}: 'files' must map each file to its sha256; re-export.")
    missing = sorted(rel for rel in listed if not (directory / rel).is_file())
    if missing:
        raise CheckpointError(f"{directory}: files listed in manifest.json are missing: {', '.join(missing)}; the "
                              f"checkpoint is incomplete, re-download or re-export it.")
    changed = [rel for rel in sorted(listed) if sha256_file(directory / rel) != listed[rel]]
    if changed:
        raise CheckpointError(f"{directory}: sha256 of {', '.join(changed)} differs from manifest.json: modified or "
                              f"corrupted after export (tampered?); re-download or re-export the checkpoint.")
    unlisted = sorted(_files_on_disk(directory) - set(listed) - allow_unlisted)
    if unlisted:
        raise CheckpointError(f"{directory}: {', '.join(unlisted)} not listed in manifest.json: added after export; "
                              f"remove it or re-export.")


def verify_checkpoint(directory: str | Path, *, expected_version: str | None = None) -> tuple[dict, dict]:
    """(manifest, config) of a checkpoint after every check of the module docstring."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    where = directory / MANIFEST_FILE
    for key, kind in REQUIRED_MANIFEST_KEYS:
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(f"{where}: field '{key}' must be a {kind.__name__}, got "
                                  f"{type(manifest.get(key)).__name__}; not a RouterForge export.")
    verify_files(directory, manifest)
    if expected_version is not None and manifest.get("version") != expected_version:
        raise CheckpointError(f"{where}: version is {manifest.get('version')!r}, but revision {expected_version!r} "
                              f"was asked for; the tag does not hold that version.")
    config_path = directory / CONFIG_FILE
    if CONFIG_FILE not in manifest["files"]:
        raise CheckpointError(f"{where}: {CONFIG_FILE} is not among the exported files; re-export.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err}); re-export.") from None
    if config.get("router_type") != manifest["router_type"]:
        raise CheckpointError(f"{config_path}: router_type {config.get('router_type')!r} but the manifest says "
                              f"{manifest['router_type']!r}; config.json belongs to another router.")
    if "model_pool" in config and list(config["model_pool"]) != list(manifest["model_pool"]):
        raise CheckpointError(f"{config_path}: model pool {config.get('model_pool')} differs from the manifest's "
                              f"{manifest['model_pool']}: another model pool (weights rows would be read as other "
                              f"models); re-export.")
    embedding_dim = config.get("prompt_embedding_dim")
    encoder_dim = manifest["encoder"].get("dim")
    if embedding_dim is not None and encoder_dim is not None and int(embedding_dim) != int(encoder_dim):
        raise CheckpointError(f"{config_path}: prompt embeddings of width {embedding_dim}, but the manifest's encoder "
                              f"{manifest['encoder'].get('id')} gives {encoder_dim}: another encoder; re-export.")
    if "version" in manifest:
        parse_semver(str(manifest["version"]))
    return manifest, config
