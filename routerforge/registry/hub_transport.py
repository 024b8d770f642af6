"""The Hub side of `routerforge publish`: bounded retries of each Hub step, and the steps themselves.

Retries. Each Hub step is retried up to `max_retries` times with exponential backoff (`backoff_s`, x2 per
retry) on transient failures only: HTTP 408/429/5xx, timeouts, refused/reset/dropped connections, and a
non-JSON reply (a gateway's HTML error page). Other 4xx (auth, not found, conflict) fail at once. A step
is safe to repeat: the branch and repo are created with exist_ok, a re-upload skips files already on the
branch, a tag whose creation answer was lost is recognised. huggingface_hub retries some calls itself
(preupload, commit, tree listing: 5 retries from 1 s, up to 8 s apart), so a persistent 5xx there costs
~23 s per attempt; create_repo, create_branch, create_tag, validate-yaml and 5xx on file downloads are
not retried by the client. The token is scrubbed from every message (a server may echo it).

Steps: list the published `v<version>` tags, read a published manifest, upload a checkpoint to a branch,
tag a commit, download a revision into a temporary cache and compare sha256, bring `main` up to a tag.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from routerforge import __version__
from routerforge.errors import PublishError, RouterForgeError
from routerforge.io.digest import sha256_file
from routerforge.io.names import MANIFEST_FILE
from routerforge.registry.publish_validation import CheckpointInfo
from routerforge.registry.versions import SEMVER_PATTERN, parse_semver

logger = logging.getLogger(__name__)

VERSION_TAG_RE = re.compile(rf"^v{SEMVER_PATTERN}$")
MAIN_BRANCH = "main"  # the Hub's default branch: what a bare `from_pretrained(repo_id)` downloads

# HTTP statuses worth retrying: request timeout, rate limit, server-side failures (huggingface_hub's own set).
TRANSIENT_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})


T = TypeVar("T")


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


def http_status(exc: BaseException) -> int | None:
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
        status = http_status(current)
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


def describe_error(exc: BaseException, secret: str) -> str:
    """One line about `exc` for an error message, with the token scrubbed in case a server echoed it."""
    status = http_status(exc)
    text = (getattr(exc, "server_message", None) or str(exc) or type(exc).__name__).strip()
    line = text.splitlines()[0] if text else ""
    described = f"HTTP {status}: {line}" if status is not None else f"{type(exc).__name__}: {line}"
    return described.replace(secret, "***") if secret else described


@dataclass
class Retrier:
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
                        self.repo_id, step, describe_error(exc, self.secret), attempt, self.max_retries, delay_s,
                    )  # fmt: skip
                    time.sleep(delay_s)
                    continue
                kind = "transient error, retries exhausted" if transient else "not retried"
                status = http_status(exc)
                if status in (401, 403):
                    org = self.repo_id.split("/")[0]
                    on_failure = f"Check that the token has write access to '{org}'. {on_failure}"
                raise PublishError(
                    f"publish to {self.repo_id}: {step} failed after {attempt} attempt(s) ({kind}):"
                    f" {describe_error(exc, self.secret)}. {on_failure}"
                ) from exc
        raise AssertionError("unreachable")


def published_versions(api, repo_id: str) -> dict[tuple[int, int, int], str]:
    """{semver: tag} of the `vMAJOR.MINOR.PATCH` tags on the repo; empty if the repo does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(repo_id)
    except RepositoryNotFoundError:
        return {}
    return {parse_semver(ref.name[1:]): ref.name for ref in refs.tags if VERSION_TAG_RE.match(ref.name)}


def download_manifest(repo_id: str, tag: str, endpoint: str, token: str) -> dict[str, Any] | None:
    """manifest.json of a published tag, None if the tag has none (or an unreadable one)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    # A private temporary cache: nothing lands in (or is read from) the user's HF cache.
    with tempfile.TemporaryDirectory(prefix="routerforge-gate-") as cache_dir:
        try:
            path = hf_hub_download(
                repo_id, MANIFEST_FILE, revision=tag, cache_dir=cache_dir, endpoint=endpoint, token=token
            )
        # Not EntryNotFoundError: LocalEntryNotFoundError (Hub unreachable, retry-worthy) is one too.
        except RemoteEntryNotFoundError:
            return None
        try:
            manifest = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
    return manifest if isinstance(manifest, dict) else None


def create_tag(api, repo_id: str, tag: str, commit_sha: str, message: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(repo_id, tag=tag, revision=commit_sha, tag_message=message)
    except HfHubHTTPError as err:
        if http_status(err) != 409:
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


def download_revision(repo_id: str, tag: str, endpoint: str, token: str) -> tuple[str, dict[str, str]]:
    """Download a tag into a temporary cache; return (commit it resolves to, {path: sha256})."""
    from huggingface_hub import snapshot_download

    with tempfile.TemporaryDirectory(prefix="routerforge-verify-") as cache_dir:
        folder = Path(
            snapshot_download(repo_id, revision=tag, cache_dir=cache_dir, endpoint=endpoint, token=token)
        )
        hashes = {
            p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
    # huggingface_hub's cache layout: <cache>/models--org--name/snapshots/<commit sha>/
    return folder.name, hashes


def verification_problems(
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


def upload_checkpoint(api, checkpoint: CheckpointInfo, repo_id: str, branch: str) -> str:
    """upload_folder of the checkpoint to `branch`; the commit sha the branch then points to."""
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=checkpoint.path,
        revision=branch,
        commit_message=f"Publish {checkpoint.router} {checkpoint.version}",
        commit_description=(f"routerforge {__version__}, recipe {checkpoint.recipe}, "
                            f"{len(checkpoint.file_sha256)} files"),
        delete_patterns="*",  # the branch holds exactly this checkpoint (.gitattributes is always kept)
    )
    return commit.oid


def published_commit(api, repo_id: str, tag: str) -> str:
    return next(ref.target_commit for ref in api.list_repo_refs(repo_id).tags if ref.name == tag)


def main_version(api, retrier: Retrier, repo_id: str, endpoint: str, token: str) -> str | None:
    """The version `main` holds (its manifest's), None when main holds no RouterForge checkpoint."""
    manifest = retrier.run(
        "read main's manifest",
        lambda: download_manifest(repo_id, MAIN_BRANCH, endpoint, token),
        on_failure="Nothing was changed; re-run the same command.",
    )
    return manifest.get("version") if manifest else None


def update_main(
    api, retrier: Retrier, checkpoint: CheckpointInfo, repo_id: str, tag: str, endpoint: str, token: str
) -> str:
    """Step 8: `main` gets exactly the files of the verified tag, checked by sha256; the commit sha of main."""
    again = f"{tag} is published and verified, but main still holds the previous version; re-run the same command."
    main_sha = retrier.run(
        "update main", lambda: upload_checkpoint(api, checkpoint, repo_id, MAIN_BRANCH), on_failure=again
    )
    main_commit, downloaded = retrier.run(
        "verify main", lambda: download_revision(repo_id, MAIN_BRANCH, endpoint, token), on_failure=again
    )
    if problems := verification_problems(checkpoint.file_sha256, downloaded, main_commit, main_sha):
        raise PublishError(
            f"{repo_id}: main failed verification after the upload ({'; '.join(problems)}); {tag} is published and"
            " verified. Re-run the same command to upload main again."
        )
    return main_sha


def resolve_hub_endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    # huggingface_hub reads HF_ENDPOINT once, at import; read it again so a value set since is honoured.
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")

