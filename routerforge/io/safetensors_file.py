"""Safetensors files, checked by their bytes before anything reads them.

`safetensors_problem` looks only at the first bytes and the JSON header: a pickle or a `torch.save` zip
renamed to `.safetensors` is recognised and refused unread (unpickling runs arbitrary code). The check is
ours because the safetensors library has no "is this a safetensors file" call; `load_safetensors` then
reads the tensors through `safetensors.torch.load_file` (torch is imported only there).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from routerforge.errors import CheckpointError
from routerforge.io.digest import sha256_file
from routerforge.io.names import MANIFEST_FILE, WEIGHTS_FILE

MAX_SAFETENSORS_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on its JSON header


class UnsafeWeightsError(CheckpointError):
    """A weights file is not safetensors (e.g. a pickle): refused unread, since unpickling runs code."""


def safetensors_problem(path: str | Path) -> str | None:
    """None if `path` starts like a safetensors file (u64 header length + a JSON object), else what it is."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        header = None
        if 0 < header_len <= min(size - 8, MAX_SAFETENSORS_HEADER_BYTES):
            try:
                header = json.loads(fh.read(header_len))
            except (UnicodeDecodeError, ValueError):
                header = ValueError
    if isinstance(header, dict):
        return None
    # Named only once the header check failed: a real header length can start with the byte 0x80 too (384 bytes).
    if prefix.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save's format: pickled Python objects)"
    if prefix[:1] == b"\x80":
        return "a Python pickle"
    if header is None:
        return "not safetensors (no valid header)"
    if header is ValueError:
        return "not safetensors (its header is not JSON)"
    return "not safetensors (its header is not a JSON object)"


def check_safetensors(path: str | Path) -> None:
    """UnsafeWeightsError naming the file and what it is, unless `safetensors_problem` finds nothing."""
    problem = safetensors_problem(path)
    if problem is not None:
        raise UnsafeWeightsError(f"{path}: refused, the file is {problem}; RouterForge loads weights only from "
                                 f"safetensors and never unpickles them. Re-export the router with RouterForge.")


def load_safetensors(path: str | Path) -> dict:
    """{name: torch.Tensor} of a safetensors file, after `check_safetensors`; UnsafeWeightsError also when
    the safetensors library cannot read it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise UnsafeWeightsError(f"{path}: not a readable safetensors file ({exc}); re-export the router.") from None


def load_export_weights(export_dir: str | Path, weights_file: str = WEIGHTS_FILE) -> dict:
    """The tensors of an export's safetensors file, after checking its format and its manifest sha256.

    UnsafeWeightsError when the file is not safetensors (never unpickled); CheckpointError when it is
    missing or differs from the sha256 that manifest.json recorded at export.
    """
    export_dir = Path(export_dir)
    path = export_dir / weights_file
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file; pass the directory of a RouterForge export.")
    check_safetensors(path)
    manifest_path = export_dir / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            recorded = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {}).get(weights_file)
        except (UnicodeDecodeError, ValueError, AttributeError):
            raise CheckpointError(f"{manifest_path}: not a valid manifest (JSON object); "
                                  f"re-export the router.") from None
        if recorded is not None and recorded != sha256_file(path):
            raise CheckpointError(f"{path}: sha256 differs from {manifest_path} (modified or damaged after export); "
                                  f"re-export the router or restore the file.")
    return load_safetensors(path)
