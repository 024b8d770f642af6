"""The versioned dataset directory every trainer reads.

Layout (written by `write_dataset_dir`, read by `load_prepared`)::

    <output_root>/<name>/LATEST            text file: the newest complete version
    <output_root>/<name>/<version>/
        prompts/      DatasetDict (train/validation/test): prompt_id, prompt, embedding (float32[dim])
        pairs/        DatasetDict (train/validation/test): PAIR_FEATURES (winner is a ClassLabel)
        outcomes/     DatasetDict (train/validation/test): OUTCOME_FEATURES
        eval/<set>.jsonl   held-out evaluation sets as long outcome tables (prompt_id, prompt, model, score, ...)
        manifest.json  name, version, fingerprints, encoder, model pool, counts, sha256 of every file
        stats.json     per source and stage: input, kept, dropped by reason (kept + dropped = input)
        config.yaml    the resolved prep config
        README.md      dataset card
        bad_rows.jsonl, decontamination.jsonl
        COMPLETE       written last

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place only
when complete, so an interrupted run never leaves a half-written dataset where a good one was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import DatasetDict, load_from_disk

from routerforge.errors import DataError
from routerforge.io.atomic import atomic_directory, atomic_write_text
from routerforge.io.digest import tree_sha256
from routerforge.io.names import COMPLETE_MARKER, LATEST_FILE, MANIFEST_FILE

SPLITS = ("train", "validation", "test")
DATA_FORMAT_VERSION = 1


def write_dataset_dir(dataset_root: Path, version: str, fill: Callable[[Path], dict]) -> Path:
    """Build a dataset version atomically.

    `fill(tmp_dir)` writes every file into `tmp_dir` and returns the manifest dict (without file
    hashes). We add the sha256 of every file, write manifest.json and COMPLETE, rename the directory
    into place (replacing an older copy of the same version only after the new one is complete), and
    point LATEST at it.
    """
    dataset_root.mkdir(parents=True, exist_ok=True)
    final = dataset_root / version
    with atomic_directory(final) as tmp:
        manifest = fill(tmp)
        manifest["files"] = tree_sha256(tmp)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        (tmp / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
    atomic_write_text(dataset_root / LATEST_FILE, version + "\n")
    return final


def resolve_version_dir(path: str | Path) -> Path:
    """A dataset version directory from either the version dir itself or its parent (via LATEST)."""
    path = Path(path)
    if (path / COMPLETE_MARKER).is_file():
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        version_dir = path / latest.read_text(encoding="utf-8").strip()
        if (version_dir / COMPLETE_MARKER).is_file():
            return version_dir
        raise DataError(f"{latest} points to {version_dir.name}, which is not a complete dataset; "
                        f"re-run data prep.")
    if path.exists():
        raise DataError(f"{path} is not a prepared dataset (no COMPLETE marker, no LATEST); "
                        f"build one with `routerforge prep --config ...`.")
    raise DataError(f"dataset not found: {path}; build it with `routerforge prep --config ...`.")


@dataclass(frozen=True)
class PreparedDataset:
    """A loaded dataset version: the three tables, the manifest, and embedding lookups."""

    path: Path
    manifest: dict
    prompts: DatasetDict
    pairs: DatasetDict
    outcomes: DatasetDict

    @property
    def fingerprint(self) -> str:
        return self.manifest["content_fingerprint"]

    @property
    def models(self) -> list[str]:
        """The model pool seen in the training data, in a stable (sorted) order."""
        return list(self.manifest["models"])

    @property
    def encoder(self) -> dict:
        return dict(self.manifest["encoder"])

    def embeddings(self, split: str) -> tuple[list[str], np.ndarray]:
        """(prompt ids, float32 matrix [n, dim]) of one split's prompts."""
        table = self.prompts[split]
        if len(table) == 0:
            return [], np.zeros((0, int(self.manifest["encoder"]["dim"])), dtype=np.float32)
        emb = np.asarray(table.with_format("numpy")["embedding"], dtype=np.float32)
        return list(table["prompt_id"]), emb

    def embedding_index(self) -> dict[str, np.ndarray]:
        """prompt_id -> embedding over all splits (prompts are few; this fits in memory)."""
        out: dict[str, np.ndarray] = {}
        for split in self.prompts:
            ids, emb = self.embeddings(split)
            out.update(zip(ids, emb, strict=True))
        return out

    def eval_sets(self) -> dict[str, Path]:
        """Name -> path of each held-out evaluation table (long outcome JSONL)."""
        eval_dir = self.path / "eval"
        return {p.stem: p for p in sorted(eval_dir.glob("*.jsonl"))} if eval_dir.is_dir() else {}


def load_prepared(path: str | Path) -> PreparedDataset:
    version_dir = resolve_version_dir(path)
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    if manifest.get("data_format_version") != DATA_FORMAT_VERSION:
        raise DataError(f"{version_dir}: data format {manifest.get('data_format_version')} but this RouterForge "
                        f"reads format {DATA_FORMAT_VERSION}; re-run data prep.")
    return PreparedDataset(
        path=version_dir,
        manifest=manifest,
        prompts=load_from_disk(str(version_dir / "prompts")),
        pairs=load_from_disk(str(version_dir / "pairs")),
        outcomes=load_from_disk(str(version_dir / "outcomes")),
    )
