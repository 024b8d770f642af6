"""Publish a router checkpoint to the Hugging Face Hub as an immutable, verified version tag.

Command (routerforge/cli.py wires `routerforge publish` to `publish_main`; also `python -m
routerforge.registry.publish`)::

    HF_TOKEN=hf_... routerforge publish checkpoints/mf --repo my-org/mf-router [--force] [--private] [--branch B]

Layout on the Hub: branch `main` holds the newest published version (card, weights, manifest), so
`Router.from_pretrained("my-org/mf-router")` loads it and the repo page shows its card; every version stays
as an immutable tag `v<version>` (plus its upload branch `release-<version>`), so
`Router.from_pretrained("my-org/mf-router", revision="v1.2.0")` pins one.

This module runs the steps below and the command line; step 1 is routerforge/registry/publish_validation.py,
the promotion gate routerforge/registry/publish_gate.py, the Hub calls and their retries
routerforge/registry/hub_transport.py.

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
`vMAJOR.MINOR.PATCH` tag below it: the newest one for a new release, 1.0.0 for a patch 1.0.1).
Worse (strictly) -> refused unless `--force`; equal or better -> published.
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
retry) on transient failures only (HTTP 408/429/5xx, dropped connections, a gateway's HTML page); other 4xx
fail at once. Every step is safe to repeat; the details are in routerforge/registry/hub_transport.py.
`HF_ENDPOINT` is read at call time, so a private Hub (or the loopback server in tests) can be targeted.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from routerforge import __version__
from routerforge.errors import CheckpointError, PublishError, RouterForgeError
from routerforge.registry.hub_transport import (
    MAIN_BRANCH,
    VERSION_TAG_RE,
    Retrier,
    create_tag,
    download_manifest,
    download_revision,
    main_version,
    published_commit,
    published_versions,
    resolve_hub_endpoint,
    update_main,
    upload_checkpoint,
    verification_problems,
)
from routerforge.registry.load import HUB_ID_RE
from routerforge.registry.publish_gate import check_gate, read_gate
from routerforge.registry.publish_validation import validate_checkpoint
from routerforge.registry.versions import parse_semver

logger = logging.getLogger(__name__)

BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


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
    if not HUB_ID_RE.match(repo_id) or "--" in repo_id or ".." in repo_id:
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
    hub_endpoint = resolve_hub_endpoint(endpoint)
    api = HfApi(endpoint=hub_endpoint, token=token, library_name="routerforge", library_version=__version__)
    retrier = Retrier(repo_id, max_retries, backoff_s, token)
    not_tagged = "Nothing was tagged; re-run the same command to resume."
    notes: list[str] = []

    published = retrier.run(
        "list published versions", lambda: published_versions(api, repo_id), on_failure=not_tagged
    )
    newest = max(published, default=None)
    is_newest = newest is None or parse_semver(version) >= newest
    if tag in published.values():
        # Re-run after step 8 failed: the tag is published and verified; only `main` lags behind it.
        if parse_semver(version) == newest and main_version(api, retrier, repo_id, hub_endpoint, token) != version:
            main_sha = update_main(api, retrier, checkpoint, repo_id, tag, hub_endpoint, token)
            print(f"note: {tag} was already published; brought main up to it.")
            return PublishResult(repo_id, f"{hub_endpoint}/{repo_id}", version, branch, tag,
                                 published_commit(api, repo_id, tag), dict(checkpoint.file_sha256), main_sha,
                                 ("main brought up to the already published version",), dict(retrier.attempts))
        raise PublishError(
            f"{repo_id}: {tag} is already published and tags are immutable. Bump 'version' in manifest.json."
        )
    follows = max((v for v in published if v < parse_semver(version)), default=None)
    follows_manifest = None
    if follows is not None:
        follows_manifest = retrier.run(
            "read the manifest of the version it follows",
            lambda: download_manifest(repo_id, published[follows], hub_endpoint, token),
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
        "upload", lambda: upload_checkpoint(api, checkpoint, repo_id, branch), on_failure=not_tagged
    )
    retrier.run(
        "create tag",
        lambda: create_tag(api, repo_id, tag, commit_sha, f"{checkpoint.router} {version}"),
        on_failure=f"The upload is on branch '{branch}' (commit {commit_sha}) but untagged; re-run to tag it.",
    )
    tag_commit, downloaded = retrier.run(
        "verify",
        lambda: download_revision(repo_id, tag, hub_endpoint, token),
        on_failure=f"{tag} is tagged (commit {commit_sha}) but not verified; download it and compare sha256 by hand.",
    )
    if problems := verification_problems(checkpoint.file_sha256, downloaded, tag_commit, commit_sha):
        retrier.run(
            "delete unverified tag",
            lambda: api.delete_tag(repo_id, tag=tag),
            on_failure=(f"Verification failed ({'; '.join(problems)}) and {tag} could not be deleted: "
                        "delete it by hand."),
        )
        raise PublishError(
            f"{repo_id}: {tag} failed verification ({'; '.join(problems)}); the tag was deleted, branch '{branch}'"
            " keeps the upload for inspection. Re-run to publish again."
        )
    main_sha = (
        update_main(api, retrier, checkpoint, repo_id, tag, hub_endpoint, token) if is_newest else None
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
