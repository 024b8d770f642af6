"""Test-wide environment: nothing may reach the network, W&B runs offline, torch stays small.

Set before any test module imports transformers / wandb / huggingface_hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# A stray key without network stalls wandb.init for ~40 s (ARCHITECTURE.md, Known traps).
os.environ.pop("WANDB_API_KEY", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real data shipped with the repository (data/) and, when present, the team's shared copy.
DATA_DIR = REPO_ROOT / "data"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def data_dir() -> Path:
    return DATA_DIR
