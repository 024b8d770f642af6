"""Step 1 of `routerforge publish`: check a checkpoint directory is complete, untampered and publishable.

Nothing here touches the network. `validate_checkpoint` follows `checkpoints/<router>` to its LATEST version,
then requires manifest.json with `router`, `version` ("MAJOR.MINOR.PATCH"), `recipe`, `files` ({relative
path: sha256}) and `metrics`; every file on disk listed in `files` with a matching sha256 and every listed
file present; only safetensors, JSON, markdown, PNG and tokenizer files, checked by content too (a
safetensors header, parseable JSON, a PNG signature, UTF-8 markdown); no symlinks; and the token in no file.
Anything else is refused with one line naming each offending file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from routerforge.errors import CheckpointError
from routerforge.io.digest import sha256_and_scan
from routerforge.io.names import LATEST_FILE, MANIFEST_FILE
from routerforge.io.safetensors_file import safetensors_problem
from routerforge.registry.publish_gate import GateMetric, read_gate
from routerforge.registry.versions import SEMVER_RE, resolve_local_checkpoint

ALLOWED_SUFFIXES = (".safetensors", ".json", ".md", ".png")

# Tokenizer files that are neither JSON nor markdown (sentencepiece protobufs, BPE/WordPiece vocabularies).
TOKENIZER_FILENAMES = frozenset(
    {"spm.model", "tokenizer.model", "sentencepiece.bpe.model", "vocab.txt", "merges.txt"}
)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class CheckpointInfo:
    """A validated checkpoint: what will be uploaded and the sha256 each file must have on the Hub."""

    path: Path
    router: str
    version: str
    recipe: str
    file_sha256: dict[str, str]  # every file to publish (manifest.json included), relative POSIX path -> hex
    gate: GateMetric | None


def is_publishable_filename(relative_path: str) -> bool:
    """True for safetensors, JSON, markdown, PNG and tokenizer files: the only types ever published."""
    name = relative_path.rsplit("/", 1)[-1]
    return name.endswith(ALLOWED_SUFFIXES) or name in TOKENIZER_FILENAMES


def check_content(path: Path, relative_path: str) -> None:
    """Refuse a file whose bytes do not match its type (e.g. a pickle renamed to .safetensors)."""
    name = relative_path.rsplit("/", 1)[-1]
    if name.endswith(".safetensors"):
        if safetensors_problem(path) is not None:
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


def validate_checkpoint(checkpoint_dir: str | Path, *, secret: str | None = None) -> CheckpointInfo:
    """Check a checkpoint directory is complete, untampered and publishable; never touches the network.

    `secret` (the Hub token) must not occur in any file. Raises CheckpointError with one line naming the
    offending files.
    """
    root = Path(checkpoint_dir)
    if root.name in (LATEST_FILE, "latest") or (
        (root / LATEST_FILE).is_file() and not (root / MANIFEST_FILE).is_file()
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

    manifest_path = root / MANIFEST_FILE
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
        or p == MANIFEST_FILE
        or p.startswith("/")
        or ".." in p.split("/")
    ]
    if bad_entries:
        raise CheckpointError(
            f"{manifest_path}: bad 'files' entries {', '.join(bad_entries)}: keys are relative paths"
            " (not manifest.json), values lowercase hex sha256."
        )
    present = set(on_disk) - {MANIFEST_FILE}
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
    for rel in sorted(present | {MANIFEST_FILE}):
        file_sha256[rel], found = sha256_and_scan(root / rel, secret_bytes)
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
        check_content(root / rel, rel)
    return CheckpointInfo(
        path=root,
        router=manifest["router"],
        version=version,
        recipe=manifest["recipe"],
        file_sha256=file_sha256,
        gate=read_gate(manifest, str(manifest_path)),
    )

