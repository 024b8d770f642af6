"""Publish a router checkpoint to the Hugging Face Hub as an immutable, verified version tag.

Command (routerforge/cli.py wires `routerforge publish` to `publish_main`; also `python -m
routerforge.registry.publish`)::

    HF_TOKEN=hf_... routerforge publish checkpoints/mf --repo my-org/mf-router [--force] [--private] [--branch B]

Layout on the Hub: branch `main` holds the newest published version (card, weights, manifest), so
`Router.from_pretrained("my-org/mf-router")` loads it and the repo page shows its card; every version stays
as an immutable tag `v<version>` (plus its upload branch `release-<version>`), so
`Router.from_pretrained("my-org/mf-router", revision="v1.2.0")` pins one.

Steps, in order; nothing touches the network before step 2:

1. Validate the checkpoint directory `checkpoints/<router>/<version>/` (or `checkpoints/<router>`, which
   follows its LATEST like every other command): `manifest.json` with `router`,
   `version` ("MAJOR.MINOR.PATCH"), `recipe`, `files` ({relative path: sha256}) and `metrics`; every file
   on disk listed in `files` with a matching sha256 and every listed file present; only safetensors, JSON,
   markdown, PNG and tokenizer files (`spm.model`, `tokenizer.model`, `sentencepiece.bpe.model`,
   `vocab.txt`, `merges.txt`; tokenizer JSON files are JSON), checked by content too (a safetensors
   header, parseable JSON, a PNG signature, UTF-8 markdown), no symlinks, and the token in no file.
   Anything else is refused with one line naming each offending file.
2. Read the repo's tags. Published versions are tags `v<version>`; refuse if `v<version>` exists (tags
   are immutable). An older version than the newest published one (a patch of an earlier release) is
   published as its tag, but never moves `main` back.
3. Promotion gate (below).
4. `create_repo(exist_ok=True)`, then `create_branch("release-<version>")` (or `--branch`) from the
   default branch, `exist_ok` so that a re-run after a failure resumes.
5. `upload_folder` to that branch with `delete_patterns="*"`: the branch ends up holding exactly the
   checkpoint (plus the `.gitattributes` the Hub keeps); files already there are skipped by the client.
6. `create_tag("v<version>")` on the exact commit the upload returned, and only after it succeeded.
7. Verify: `snapshot_download(revision="v<version>")` into a temporary cache, check the tag resolves to
   the uploaded commit and that every file's sha256 equals the local one, with no extra or missing file.
   On a mismatch the tag is deleted again, so a tag always marks verified content.
8. Only when this is now the newest published version: `upload_folder` the same files to `main` (again with
   `delete_patterns="*"`) and verify `main` the same way. A re-run after a failure here finds the tag
   published and verified, and only brings `main` up to it.

Promotion gate. A checkpoint's gate metric is `manifest["metrics"]["gate"]`::

    {"set": str, "metric": str, "value": float, "higher_is_better": bool}

e.g. `{"set": "mt-bench-gate", "metric": "apgr", "value": 0.71, "higher_is_better": true}`. It is compared
with the same field of the `manifest.json` of the published version it follows on the Hub (the highest
`vMAJOR.MINOR.PATCH` tag below it: the newest one for a new release, 1.0.0 for a patch 1.0.1). Worse (strictly) -> refused unless `--force`; equal or better -> published.
Missing or not comparable:
- nothing published yet -> published, with a printed note (a first publish must just work);
- the published manifest has no (or a malformed) gate -> published, with a note (older versions may predate it);
- this checkpoint has no gate but the published one has -> refused unless `--force`: otherwise dropping
  the field would be a silent way around the gate;
- different set, metric or direction -> refused unless `--force` (the numbers do not measure the same thing).

Token. Taken from the `token` argument or huggingface_hub's own lookup (`HF_TOKEN`, then the file
`hf auth login` wrote); there is no command-line flag for it (shell history, process list). It is sent
only in the Authorization header: never printed, logged, written to disk or put in an error message.

Retries. Each Hub step is retried up to `max_retries` times with exponential backoff (`backoff_s`, x2 per
retry) on transient failures only: HTTP 408/429/5xx, timeouts, refused/reset/dropped connections, and a
non-JSON reply (a gateway's HTML error page). Other 4xx (auth, not found, conflict) fail at once. A step
is safe to repeat: the branch and repo are created with exist_ok, a re-upload skips files already on the
branch, a tag whose creation answer was lost is recognised. huggingface_hub retries some calls itself
(preupload, commit, tree listing: 5 retries from 1 s, up to 8 s apart), so a persistent 5xx there costs
~23 s per attempt; create_repo, create_branch, create_tag, validate-yaml and 5xx on file downloads are
not retried by the client.
`HF_ENDPOINT` is read at call time, so a private Hub (or the loopback server in tests) can be targeted.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import math
import os
import re
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from routerforge import __version__
from routerforge.errors import CheckpointError, RouterForgeError
from routerforge.registry.versions import LATEST_FILE, resolve_local_checkpoint

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
GATE_FORMAT = '{"set": str, "metric": str, "value": float, "higher_is_better": bool}'
_SEMVER = r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
SEMVER_RE = re.compile(rf"^{_SEMVER}$")
VERSION_TAG_RE = re.compile(rf"^v{_SEMVER}$")
# Hub repo names: letters, digits, '-', '_', '.', at most 96 characters each side of the '/'.
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
MAIN_BRANCH = "main"  # the Hub's default branch: what a bare `from_pretrained(repo_id)` downloads
ALLOWED_SUFFIXES = (".safetensors", ".json", ".md", ".png")
# Tokenizer files that are neither JSON nor markdown (sentencepiece protobufs, BPE/WordPiece vocabularies).
TOKENIZER_FILENAMES = frozenset(
    {"spm.model", "tokenizer.model", "sentencepiece.bpe.model", "vocab.txt", "merges.txt"}
)
# HTTP statuses worth retrying: request timeout, rate limit, server-side failures (huggingface_hub's own set).
TRANSIENT_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
HASH_CHUNK_BYTES = 1 << 20

T = TypeVar("T")


class PublishError(RouterForgeError):
    """Publishing was refused or failed (version already published, Hub error after retries, ...)."""


class GateRefusedError(PublishError):
    """The promotion gate refused the checkpoint; `--force` overrides."""


@dataclass(frozen=True)
class GateMetric:
    """`manifest["metrics"]["gate"]`: one number on a fixed evaluation set that decides promotion."""

    set: str
    metric: str
    value: float
    higher_is_better: bool


@dataclass(frozen=True)
class CheckpointInfo:
    """A validated checkpoint: what will be uploaded and the sha256 each file must have on the Hub."""

    path: Path
    router: str
    version: str
    recipe: str
    file_sha256: dict[str, str]  # every file to publish (manifest.json included), relative POSIX path -> hex
    gate: GateMetric | None


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    repo_url: str
    version: str
    branch: str
    tag: str
    commit_sha: str
    verified_files: dict[str, str]  # relative path -> sha256, as downloaded from the tag and compared
    main_commit_sha: str | None = None  # commit `main` holds this version in; None: a newer version is on main
    notes: tuple[str, ...] = ()
    attempts: dict[str, int] = field(default_factory=dict)  # step -> attempts it took (1 = no retry)


# ------------------------------------------------------------------------------------- local checks


def is_publishable_filename(relative_path: str) -> bool:
    """True for safetensors, JSON, markdown, PNG and tokenizer files: the only types ever published."""
    name = relative_path.rsplit("/", 1)[-1]
    return name.endswith(ALLOWED_SUFFIXES) or name in TOKENIZER_FILENAMES


def _sha256_and_scan(path: Path, secret: bytes | None) -> tuple[str, bool]:
    """sha256 of the file and whether `secret` occurs in it, in one read."""
    digest = hashlib.sha256()
    found, tail = False, b""
    with open(path, "rb") as fh:
        while block := fh.read(HASH_CHUNK_BYTES):
            digest.update(block)
            if secret and not found:
                window = tail + block
                found = secret in window
                tail = window[-(len(secret) - 1) :] if len(secret) > 1 else b""
    return digest.hexdigest(), found


def _check_content(path: Path, relative_path: str) -> None:
    """Refuse a file whose bytes do not match its type (e.g. a pickle renamed to .safetensors)."""
    name = relative_path.rsplit("/", 1)[-1]
    if name.endswith(".safetensors"):
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
            ok = 0 < header_len <= min(size - 8, MAX_SAFETENSORS_HEADER_BYTES)
            if ok:
                try:
                    ok = isinstance(json.loads(fh.read(header_len)), dict)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    ok = False
        if not ok:
            raise CheckpointError(
                f"{path}: not a safetensors file (no valid header); export weights with safetensors.torch.save_file."
            )
    elif name.endswith(".json"):
        try:
            json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: not valid UTF-8 JSON ({err}); fix or re-export it.") from None
    elif name.endswith(".png"):
        with open(path, "rb") as fh:
            if fh.read(8) != PNG_SIGNATURE:
                raise CheckpointError(f"{path}: not a PNG image (bad signature); re-save the plot as PNG.")
    elif name.endswith(".md"):
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise CheckpointError(f"{path}: markdown is not valid UTF-8 ({err}).") from None


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


def validate_checkpoint(checkpoint_dir: str | Path, *, secret: str | None = None) -> CheckpointInfo:
    """Check a checkpoint directory is complete, untampered and publishable; never touches the network.

    `secret` (the Hub token) must not occur in any file. Raises CheckpointError with one line naming the
    offending files.
    """
    root = Path(checkpoint_dir)
    if root.name in (LATEST_FILE, "latest") or (
        (root / LATEST_FILE).is_file() and not (root / MANIFEST_NAME).is_file()
    ):
        root = resolve_local_checkpoint(root)  # checkpoints/<router>: its LATEST version, as eval and route do
    if not root.is_dir():
        raise CheckpointError(
            f"{root}: checkpoint directory not found. Pass a final export checkpoints/<router>/<version>/."
        )
    on_disk, disallowed, symlinks = [], [], []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            symlinks.append(rel)
        elif path.is_file():
            (on_disk if is_publishable_filename(rel) else disallowed).append(rel)
    if disallowed:
        raise CheckpointError(
            f"{root}: refusing to publish {len(disallowed)} file(s) of a type that is never published: "
            f"{', '.join(disallowed)}. Only safetensors, JSON, markdown, PNG and tokenizer files are published;"
            " remove these (save weights with safetensors)."
        )
    if symlinks:
        raise CheckpointError(
            f"{root}: refusing to publish symlinks: {', '.join(symlinks)}. Copy the files in."
        )

    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{manifest_path}: missing. Only exported checkpoints (with a manifest) are published."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{manifest_path}:{err.lineno}: invalid JSON ({err.msg}).") from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{manifest_path}: not UTF-8 ({err}).") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: must be a JSON object.")
    for key, expected in (
        ("router", str),
        ("version", str),
        ("recipe", str),
        ("files", dict),
        ("metrics", dict),
    ):
        if not isinstance(manifest.get(key), expected):
            raise CheckpointError(
                f"{manifest_path}: field '{key}' must be a {expected.__name__}, got {type(manifest.get(key)).__name__}."
            )
    version = manifest["version"]
    if not SEMVER_RE.match(version):
        raise CheckpointError(
            f"{manifest_path}: version {version!r} is not MAJOR.MINOR.PATCH (e.g. '1.2.0')."
        )
    if SEMVER_RE.match(root.name) and root.name != version:
        raise CheckpointError(
            f"{manifest_path}: version {version} does not match its directory {root.name}/."
        )

    listed: dict[str, str] = manifest["files"]
    bad_entries = [
        str(p)
        for p, sha in listed.items()
        if not isinstance(sha, str)
        or not re.fullmatch(r"[0-9a-f]{64}", sha)
        or p == MANIFEST_NAME
        or p.startswith("/")
        or ".." in p.split("/")
    ]
    if bad_entries:
        raise CheckpointError(
            f"{manifest_path}: bad 'files' entries {', '.join(bad_entries)}: keys are relative paths"
            " (not manifest.json), values lowercase hex sha256."
        )
    present = set(on_disk) - {MANIFEST_NAME}
    if missing := sorted(set(listed) - present):
        raise CheckpointError(
            f"{root}: files listed in manifest.json are missing: {', '.join(missing)}. Re-export."
        )
    if unlisted := sorted(present - set(listed)):
        raise CheckpointError(
            f"{root}: files not listed in manifest.json 'files': {', '.join(unlisted)}. Remove them or re-export."
        )

    secret_bytes = secret.encode() if secret else None
    file_sha256, leaking = {}, []
    for rel in sorted(present | {MANIFEST_NAME}):
        file_sha256[rel], found = _sha256_and_scan(root / rel, secret_bytes)
        if found:
            leaking.append(rel)
    if leaking:
        raise CheckpointError(
            f"{root}: the Hub token occurs in {', '.join(leaking)}; remove it before publishing."
        )
    if changed := [rel for rel in sorted(listed) if file_sha256[rel] != listed[rel]]:
        raise CheckpointError(
            f"{root}: sha256 differs from manifest.json for {', '.join(changed)}: modified after export. Re-export."
        )
    for rel in sorted(file_sha256):
        _check_content(root / rel, rel)
    return CheckpointInfo(
        path=root,
        router=manifest["router"],
        version=version,
        recipe=manifest["recipe"],
        file_sha256=file_sha256,
        gate=read_gate(manifest, str(manifest_path)),
    )


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


def _semver(version: str) -> tuple[int, int, int]:
    major, minor, patch = (int(part) for part in version.split("."))
    return major, minor, patch


# ------------------------------------------------------------------------------------- retries


def _transport_error_types() -> tuple[type[BaseException], ...]:
    """Connection-level failures worth retrying, whichever HTTP library huggingface_hub uses
    (httpx2 in 2.x, httpx in 1.x)."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        types += [module.TimeoutException, module.NetworkError, module.RemoteProtocolError]
    return tuple(types)


def _http_status(exc: BaseException) -> int | None:
    from huggingface_hub.errors import HfHubHTTPError

    response = getattr(exc, "response", None) if isinstance(exc, HfHubHTTPError) else None
    return getattr(response, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can fix: HTTP 408/429/5xx, connection failures, non-JSON replies; also wrapped.

    huggingface_hub wraps some of them: `snapshot_download` turns a failed listing into
    `LocalEntryNotFoundError` whose __cause__ is the HTTP or connection error. A 4xx found first wins.
    """
    from huggingface_hub.errors import OfflineModeIsEnabled

    transport = _transport_error_types()
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        status = _http_status(current)
        if status is not None:
            return status in TRANSIENT_STATUS_CODES
        if isinstance(current, OfflineModeIsEnabled):  # a ConnectionError subclass, but no retry will fix it
            return False
        if isinstance(current, transport):
            return True
        if isinstance(current, json.JSONDecodeError):
            # huggingface_hub 2.4 parses some replies as JSON before checking the status (validate-yaml does), so
            # a gateway's HTML 502/504 page surfaces as a JSONDecodeError with no HTTP error attached.
            return True
        stack += [current.__context__, current.__cause__]
    return False


def _describe(exc: BaseException, secret: str) -> str:
    """One line about `exc` for an error message, with the token scrubbed in case a server echoed it."""
    status = _http_status(exc)
    text = (getattr(exc, "server_message", None) or str(exc) or type(exc).__name__).strip()
    line = text.splitlines()[0] if text else ""
    described = f"HTTP {status}: {line}" if status is not None else f"{type(exc).__name__}: {line}"
    return described.replace(secret, "***") if secret else described


@dataclass
class _Retrier:
    """Run one Hub step with bounded retries on transient errors; record attempts per step."""

    repo_id: str
    max_retries: int
    backoff_s: float
    secret: str
    attempts: dict[str, int] = field(default_factory=dict)

    def run(self, step: str, fn: Callable[[], T], *, on_failure: str) -> T:
        for attempt in range(1, self.max_retries + 2):
            self.attempts[step] = attempt
            try:
                return fn()
            except RouterForgeError:
                raise
            except Exception as exc:
                transient = is_transient(exc)
                if transient and attempt <= self.max_retries:
                    delay_s = self.backoff_s * 2 ** (attempt - 1)
                    logger.warning(
                        "%s: %s: transient error (%s); retry %d/%d in %.2f s",
                        self.repo_id, step, _describe(exc, self.secret), attempt, self.max_retries, delay_s,
                    )  # fmt: skip
                    time.sleep(delay_s)
                    continue
                kind = "transient error, retries exhausted" if transient else "not retried"
                status = _http_status(exc)
                if status in (401, 403):
                    org = self.repo_id.split("/")[0]
                    on_failure = f"Check that the token has write access to '{org}'. {on_failure}"
                raise PublishError(
                    f"publish to {self.repo_id}: {step} failed after {attempt} attempt(s) ({kind}):"
                    f" {_describe(exc, self.secret)}. {on_failure}"
                ) from exc
        raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------- Hub steps


def _published_versions(api, repo_id: str) -> dict[tuple[int, int, int], str]:
    """{semver: tag} of the `vMAJOR.MINOR.PATCH` tags on the repo; empty if the repo does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(repo_id)
    except RepositoryNotFoundError:
        return {}
    return {_semver(ref.name[1:]): ref.name for ref in refs.tags if VERSION_TAG_RE.match(ref.name)}


def _download_manifest(repo_id: str, tag: str, endpoint: str, token: str) -> dict[str, Any] | None:
    """manifest.json of a published tag, None if the tag has none (or an unreadable one)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    # A private temporary cache: nothing lands in (or is read from) the user's HF cache.
    with tempfile.TemporaryDirectory(prefix="routerforge-gate-") as cache_dir:
        try:
            path = hf_hub_download(
                repo_id, MANIFEST_NAME, revision=tag, cache_dir=cache_dir, endpoint=endpoint, token=token
            )
        # Not EntryNotFoundError: LocalEntryNotFoundError (Hub unreachable, retry-worthy) is one too.
        except RemoteEntryNotFoundError:
            return None
        try:
            manifest = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
    return manifest if isinstance(manifest, dict) else None


def _create_tag(api, repo_id: str, tag: str, commit_sha: str, message: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(repo_id, tag=tag, revision=commit_sha, tag_message=message)
    except HfHubHTTPError as err:
        if _http_status(err) != 409:
            raise
        # 409 on a retry: the first request may have created the tag before its response was lost.
        target = next(
            (ref.target_commit for ref in api.list_repo_refs(repo_id).tags if ref.name == tag), None
        )
        if target != commit_sha:
            raise PublishError(
                f"{repo_id}: tag {tag} appeared concurrently and points to {target}, not to the uploaded commit"
                f" {commit_sha}. Another publish of this version ran at the same time; check the repo."
            ) from None


def _download_tag(repo_id: str, tag: str, endpoint: str, token: str) -> tuple[str, dict[str, str]]:
    """Download a tag into a temporary cache; return (commit it resolves to, {path: sha256})."""
    from huggingface_hub import snapshot_download

    with tempfile.TemporaryDirectory(prefix="routerforge-verify-") as cache_dir:
        folder = Path(
            snapshot_download(repo_id, revision=tag, cache_dir=cache_dir, endpoint=endpoint, token=token)
        )
        hashes = {
            p.relative_to(folder).as_posix(): _sha256_and_scan(p, None)[0]
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
    # huggingface_hub's cache layout: <cache>/models--org--name/snapshots/<commit sha>/
    return folder.name, hashes


def _verification_problems(
    expected: dict[str, str], downloaded: dict[str, str], tag_commit: str, commit_sha: str
) -> list[str]:
    problems = []
    if tag_commit != commit_sha:
        problems.append(f"tag resolves to {tag_commit}, uploaded {commit_sha}")
    if missing := sorted(set(expected) - set(downloaded)):
        problems.append(f"missing {', '.join(missing)}")
    if extra := sorted(set(downloaded) - set(expected) - {".gitattributes"}):
        problems.append(f"unexpected {', '.join(extra)}")
    if differ := sorted(p for p in expected if p in downloaded and downloaded[p] != expected[p]):
        problems.append(f"sha256 differs for {', '.join(differ)}")
    return problems


def _upload(api, checkpoint: CheckpointInfo, repo_id: str, branch: str) -> str:
    """upload_folder of the checkpoint to `branch`; the commit sha the branch then points to."""
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=checkpoint.path,
        revision=branch,
        commit_message=f"Publish {checkpoint.router} {checkpoint.version}",
        commit_description=f"routerforge {__version__}, recipe {checkpoint.recipe}, {len(checkpoint.file_sha256)} files",
        delete_patterns="*",  # the branch holds exactly this checkpoint (.gitattributes is always kept)
    )
    return commit.oid


def published_commit(api, repo_id: str, tag: str) -> str:
    return next(ref.target_commit for ref in api.list_repo_refs(repo_id).tags if ref.name == tag)


def _main_version(api, retrier: _Retrier, repo_id: str, endpoint: str, token: str) -> str | None:
    """The version `main` holds (its manifest's), None when main holds no RouterForge checkpoint."""
    manifest = retrier.run(
        "read main's manifest",
        lambda: _download_manifest(repo_id, MAIN_BRANCH, endpoint, token),
        on_failure="Nothing was changed; re-run the same command.",
    )
    return manifest.get("version") if manifest else None


def _update_main(
    api, retrier: _Retrier, checkpoint: CheckpointInfo, repo_id: str, tag: str, endpoint: str, token: str
) -> str:
    """Step 8: `main` gets exactly the files of the verified tag, checked by sha256; the commit sha of main."""
    again = f"{tag} is published and verified, but main still holds the previous version; re-run the same command."
    main_sha = retrier.run(
        "update main", lambda: _upload(api, checkpoint, repo_id, MAIN_BRANCH), on_failure=again
    )
    main_commit, downloaded = retrier.run(
        "verify main", lambda: _download_tag(repo_id, MAIN_BRANCH, endpoint, token), on_failure=again
    )
    if problems := _verification_problems(checkpoint.file_sha256, downloaded, main_commit, main_sha):
        raise PublishError(
            f"{repo_id}: main failed verification after the upload ({'; '.join(problems)}); {tag} is published and"
            " verified. Re-run the same command to upload main again."
        )
    return main_sha


def _hub_endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    # huggingface_hub reads HF_ENDPOINT once, at import; read it again so a value set since is honoured.
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def publish_checkpoint(
    checkpoint_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    branch: str | None = None,
    private: bool = False,
    force: bool = False,
    max_retries: int = 3,
    backoff_s: float = 2.0,
    endpoint: str | None = None,
) -> PublishResult:
    """Upload a checkpoint to `repo_id`, tag it `v<version>` and verify the tag by sha256 (module docstring).

    token: Hub token with write access; default huggingface_hub's lookup (HF_TOKEN, then `hf auth login`).
    branch: branch to upload to; default `release-<version>`.
    private: create the repo private (ignored when it exists).
    force: publish even when the promotion gate refuses.
    max_retries: retries per Hub step on transient errors (count); backoff_s: first retry delay (seconds), x2 each.
    endpoint: Hub URL; default HF_ENDPOINT, then https://huggingface.co.
    """
    if not REPO_ID_RE.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise PublishError(
            f"--repo {repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.'), e.g. my-org/mf-router."
        )
    if max_retries < 0 or backoff_s < 0:
        raise PublishError(f"max_retries ({max_retries}) and backoff_s ({backoff_s} s) must be >= 0.")
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN to a token with write access (it is never written anywhere)."
        )

    checkpoint = validate_checkpoint(checkpoint_dir, secret=token)
    version, tag = checkpoint.version, f"v{checkpoint.version}"
    branch = branch or f"release-{version}"
    if not BRANCH_RE.match(branch) or branch in (tag, MAIN_BRANCH) or VERSION_TAG_RE.match(branch):
        raise PublishError(
            f"--branch {branch!r}: not a valid upload branch (it must differ from the tag {tag}, and from main,"
            " which publishing moves to the newest version by itself)."
        )

    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise PublishError(
            "HF_HUB_OFFLINE is set: publishing must reach the Hub. Unset HF_HUB_OFFLINE for this command."
        )
    hub_endpoint = _hub_endpoint(endpoint)
    api = HfApi(endpoint=hub_endpoint, token=token, library_name="routerforge", library_version=__version__)
    retrier = _Retrier(repo_id, max_retries, backoff_s, token)
    not_tagged = "Nothing was tagged; re-run the same command to resume."
    notes: list[str] = []

    published = retrier.run(
        "list published versions", lambda: _published_versions(api, repo_id), on_failure=not_tagged
    )
    newest = max(published, default=None)
    is_newest = newest is None or _semver(version) >= newest
    if tag in published.values():
        # Re-run after step 8 failed: the tag is published and verified; only `main` lags behind it.
        if _semver(version) == newest and _main_version(api, retrier, repo_id, hub_endpoint, token) != version:
            main_sha = _update_main(api, retrier, checkpoint, repo_id, tag, hub_endpoint, token)
            print(f"note: {tag} was already published; brought main up to it.")
            return PublishResult(repo_id, f"{hub_endpoint}/{repo_id}", version, branch, tag,
                                 published_commit(api, repo_id, tag), dict(checkpoint.file_sha256), main_sha,
                                 ("main brought up to the already published version",), dict(retrier.attempts))
        raise PublishError(
            f"{repo_id}: {tag} is already published and tags are immutable. Bump 'version' in manifest.json."
        )
    follows = max((v for v in published if v < _semver(version)), default=None)
    follows_manifest = None
    if follows is not None:
        follows_manifest = retrier.run(
            "read the manifest of the version it follows",
            lambda: _download_manifest(repo_id, published[follows], hub_endpoint, token),
            on_failure=not_tagged,
        )
    try:
        follows_gate = (
            read_gate(follows_manifest, f"{repo_id}@{published[follows]}") if follows_manifest else None
        )
    except CheckpointError as err:
        notes.append(f"ignoring the malformed gate of the published version: {err}")
        follows_gate = None
    follows_version = published[follows][1:] if follows is not None else None
    notes += check_gate(checkpoint.gate, version, follows_gate, follows_version, force=force)
    if not is_newest:
        notes.append(f"main stays at {published[newest]}: {version} is older, so it is published as {tag} only"
                     " (main never moves back).")
    for note in notes:
        print(f"note: {note}")

    repo_url = retrier.run(
        "create repo",
        lambda: str(api.create_repo(repo_id, private=True if private else None, exist_ok=True)),
        on_failure=not_tagged,
    )
    retrier.run(
        "create branch",
        lambda: api.create_branch(repo_id, branch=branch, exist_ok=True),
        on_failure=not_tagged,
    )
    logger.info("%s: uploading %d files to branch %s", repo_id, len(checkpoint.file_sha256), branch)
    commit_sha = retrier.run(
        "upload", lambda: _upload(api, checkpoint, repo_id, branch), on_failure=not_tagged
    )
    retrier.run(
        "create tag",
        lambda: _create_tag(api, repo_id, tag, commit_sha, f"{checkpoint.router} {version}"),
        on_failure=f"The upload is on branch '{branch}' (commit {commit_sha}) but untagged; re-run to tag it.",
    )
    tag_commit, downloaded = retrier.run(
        "verify",
        lambda: _download_tag(repo_id, tag, hub_endpoint, token),
        on_failure=f"{tag} is tagged (commit {commit_sha}) but not verified; download it and compare sha256 by hand.",
    )
    if problems := _verification_problems(checkpoint.file_sha256, downloaded, tag_commit, commit_sha):
        retrier.run(
            "delete unverified tag",
            lambda: api.delete_tag(repo_id, tag=tag),
            on_failure=f"Verification failed ({'; '.join(problems)}) and {tag} could not be deleted: delete it by hand.",
        )
        raise PublishError(
            f"{repo_id}: {tag} failed verification ({'; '.join(problems)}); the tag was deleted, branch '{branch}'"
            " keeps the upload for inspection. Re-run to publish again."
        )
    main_sha = (
        _update_main(api, retrier, checkpoint, repo_id, tag, hub_endpoint, token) if is_newest else None
    )
    return PublishResult(
        repo_id=repo_id,
        repo_url=repo_url,
        version=version,
        branch=branch,
        tag=tag,
        commit_sha=commit_sha,
        verified_files={path: downloaded[path] for path in checkpoint.file_sha256},
        main_commit_sha=main_sha,
        notes=tuple(notes),
        attempts=dict(retrier.attempts),
    )


# ------------------------------------------------------------------------------------- command line


def publish_main(argv: Sequence[str] | None = None) -> int:
    """`routerforge publish CHECKPOINT --repo ORG/NAME [--force] [--private] [--branch B]`; returns the exit code.

    routerforge/cli.py hands the arguments after `publish` to this function. Exit 0 when published and
    verified; a RouterForgeError (bad checkpoint, gate refusal, Hub failure) prints one line to stderr and
    returns its exit code (2). The token comes from HF_TOKEN (or `hf auth login`), never from argv.
    """
    parser = argparse.ArgumentParser(
        prog="routerforge publish",
        description="Upload a checkpoint to the Hugging Face Hub, tag it v<version>, verify the tag by sha256, and"
        " move main to it when it is the newest published version. The token is read from HF_TOKEN;"
        " HF_ENDPOINT selects another Hub.",
    )
    parser.add_argument(
        "checkpoint", type=Path, help="checkpoints/<router>/<version>/, or checkpoints/<router> (its LATEST)"
    )
    parser.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub model repo to publish to")
    parser.add_argument(
        "--force",
        action="store_true",
        help="publish even if the promotion gate finds it worse than the latest version",
    )
    parser.add_argument(
        "--private", action="store_true", help="create the repo private (no effect if it exists)"
    )
    parser.add_argument(
        "--branch", default=None, help="branch to upload the version to (default: release-<version>; not main)"
    )
    args = parser.parse_args(argv)
    try:
        result = publish_checkpoint(
            args.checkpoint, args.repo, branch=args.branch, private=args.private, force=args.force
        )
    except RouterForgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    on_main = "main holds it" if result.main_commit_sha else "main keeps the newer version"
    print(
        f"published {result.repo_id} {result.tag} (branch {result.branch}, commit {result.commit_sha}; {on_main}):"
        f" {len(result.verified_files)} files verified by sha256. {result.repo_url}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(publish_main())
