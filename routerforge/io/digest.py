"""sha256 of files and directory trees, read in 1 MiB blocks: the digests manifests and COMPLETE markers record."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from routerforge.io.names import COMPLETE_MARKER, MANIFEST_FILE

HASH_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return sha256_and_scan(path, None)[0]


def sha256_and_scan(path: str | Path, secret: bytes | None) -> tuple[str, bool]:
    """(hex sha256 of the file, whether `secret` occurs in it), in one read; a secret that straddles two
    blocks is found too."""
    digest = hashlib.sha256()
    found, tail = False, b""
    with open(path, "rb") as fh:
        while block := fh.read(HASH_CHUNK_BYTES):
            digest.update(block)
            if secret and not found:
                window = tail + block
                found = secret in window
                tail = window[-(len(secret) - 1):] if len(secret) > 1 else b""
    return digest.hexdigest(), found


def tree_sha256(root: str | Path, exclude: Iterable[str] = (MANIFEST_FILE, COMPLETE_MARKER)) -> dict[str, str]:
    """{relative POSIX path: sha256} of every file below `root` (sub-directories too), sorted by path;
    `exclude`: relative paths left out."""
    root, skip = Path(root), set(exclude)
    return {path.relative_to(root).as_posix(): sha256_file(path)
            for path in sorted(p for p in root.rglob("*") if p.is_file())
            if path.relative_to(root).as_posix() not in skip}
