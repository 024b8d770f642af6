"""Hugging Face Hub datasets as prep sources (`hub:` instead of `path:` in a source).

A Hub source is pinned before anything is read: `resolve_hub_source` asks the Hub (or, offline, the
local cache) for the commit sha of the requested revision and fetches that snapshot with
`huggingface_hub.snapshot_download` into the standard Hugging Face cache (only `data_files` when
given). `HubInput.rows` then reads the snapshot with `datasets.load_dataset(..., streaming=True)`, so
rows are streamed from the cached files (memory stays flat on the 100k-140k Arena sets) and the
dataset's own card configuration (`configs:` / `data_files` in its README) picks the files, as it
does for `load_dataset("<id>")`.

Why a snapshot first rather than `load_dataset("<id>")` directly: the dataset version must equal the
commit that is recorded (the input fingerprint, manifest and card name the resolved sha), and the same
call works offline: with ``HF_HUB_OFFLINE=1`` `snapshot_download` answers from the cache, resolving a
branch or tag through the cache's refs.

The readers take a `HubInput` wherever they take a file: the row number (1-based, in split order)
stands in for the line, and ``str(hub_input)`` (``hub:<id>@<sha12>/<split>``) for the file name in
bad-row reports and in the `source_file` column.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from routerforge.errors import DataError


@dataclass(frozen=True)
class HubInput:
    """One split of one pinned Hub dataset snapshot, read like a file of rows."""

    repo_id: str
    sha: str  # the resolved commit
    split: str
    local_dir: Path  # the snapshot in the Hugging Face cache
    data_files: tuple[str, ...]

    def __str__(self) -> str:
        return f"hub:{self.repo_id}@{self.sha[:12]}/{self.split}"

    # A Hub split has no file name: format dispatch on the suffix treats it as rows, and a name-derived
    # label (e.g. a task from a CSV's name) uses the dataset's name.
    suffix = ""

    @property
    def stem(self) -> str:
        return self.repo_id.rsplit("/", 1)[-1]

    def rows(self) -> Iterator[tuple[int, dict]]:
        """(1-based row number, row) of the split, streamed from the cached snapshot."""
        import datasets

        try:
            stream = datasets.load_dataset(str(self.local_dir), data_files=list(self.data_files) or None,
                                           split=self.split, streaming=True)
            iterator = iter(stream)
        except (ValueError, FileNotFoundError) as exc:  # unknown split, no data file matching
            raise DataError(f"{self}: cannot load split '{self.split}' ({_one_line(exc)}); check `split` and "
                            f"`data_files` against the dataset's files.") from None
        yield from enumerate(iterator, start=1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


@functools.lru_cache(maxsize=64)
def _resolve(repo_id: str, revision: str | None, split: str, data_files: tuple[str, ...], endpoint: str | None,
             cache_dir: str) -> HubInput:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"Hub dataset '{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    try:
        local = snapshot_download(repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir,
                                  allow_patterns=[*data_files, "README.md"] if data_files else None,
                                  endpoint=endpoint)
    except GatedRepoError:
        raise DataError(f"{where} is gated: accept its terms on the dataset's Hub page and set HF_TOKEN.") from None
    except RevisionNotFoundError:
        raise DataError(f"{where}: the revision does not exist; use a branch, tag or commit of the dataset.") \
            from None
    except RepositoryNotFoundError:
        raise DataError(f"{where} not found (or private without a token): check the id and HF_TOKEN.") from None
    except LocalEntryNotFoundError:
        raise DataError(f"{where} is not in the local Hugging Face cache and the Hub cannot be reached "
                        f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): run once online, or set "
                        f"HF_HOME to the cache that holds it.") from None
    local_dir = Path(local)
    # snapshot_download returns <cache>/datasets--<ns>--<name>/snapshots/<commit sha>.
    return HubInput(repo_id=repo_id, sha=local_dir.name, split=split, local_dir=local_dir, data_files=data_files)


def forget_resolutions() -> None:
    """Resolve revisions afresh from now on (a prep run starts with this: a moved branch is seen)."""
    _resolve.cache_clear()


def resolve_hub_source(src) -> HubInput:
    """The pinned snapshot of a `SourceConfig` with `hub` set (resolved once per process, endpoint and cache)."""
    from huggingface_hub import constants

    # Read at call time (huggingface_hub reads its environment once, at import).
    endpoint = os.environ.get("HF_ENDPOINT") or None
    return _resolve(src.hub, src.revision, src.split, tuple(src.data_files), endpoint, constants.HF_HUB_CACHE)
