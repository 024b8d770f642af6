"""Atomic writes: a reader sees the old content or the new one, never a half-written file or directory.

Files: written to a hidden temporary sibling, then `os.replace`d over the target (atomic on POSIX within a
filesystem). Directories: built in `.tmp-<name>-<pid>` next to the target and renamed into place only when
the block that fills them completes; an older directory is moved aside to `.old-<name>-<pid>` for the
moment between the two renames (routerforge/train/final_export.py recovers from a death in between).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid + thread: concurrent writers of the same file (threads of an answer cache) never share a temp file.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


class DestinationExistsError(FileExistsError):
    """`atomic_directory(..., replace=False)`: the target appeared while the directory was being built."""


def temporary_sibling(final: Path) -> Path:
    """Where `atomic_directory` builds `final`: `.tmp-<name>-<pid>` in the same directory."""
    return final.with_name(f".tmp-{final.name}-{os.getpid()}")


@contextmanager
def atomic_directory(final: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary sibling directory of `final`; when the block completes it becomes `final`.

    replace: an existing `final` is swapped out (moved aside, the new one renamed in, the old one deleted);
    with replace=False an existing `final` raises DestinationExistsError instead. If the block raises, the
    temporary directory is deleted and `final` is untouched.
    """
    final = Path(final)
    tmp = temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)  # this process's own leftover
    tmp.mkdir()
    try:
        yield tmp
        if not final.exists():
            try:
                os.rename(tmp, final)
            except OSError:  # another writer's `final` appeared in between
                raise DestinationExistsError(f"{final} already exists") from None
        elif replace:
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            raise DestinationExistsError(f"{final} already exists")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
