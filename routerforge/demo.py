"""`make demo`: the main job end to end on the bundled real data.

Step 1 builds the demo dataset (configs/data/demo.yaml: Arena votes, arena-bench-v1 judge labels,
RouteLLM MMLU/GSM8K gold labels; MT-Bench and held-out halves of MMLU/GSM8K kept for evaluation and
decontaminated against) and prints its stats. Later steps (training, evaluation, export) join here as
their recipes land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_DATA_CONFIG = Path("configs/data/demo.yaml")


def run_demo() -> int:
    from routerforge.cli import format_summary
    from routerforge.config import load_config
    from routerforge.data.config import PrepConfig
    from routerforge.data.pipeline import run_pipeline

    t0 = time.perf_counter()
    print("== 1. data prep: configs/data/demo.yaml ==", flush=True)
    cfg = load_config(PrepConfig, DEMO_DATA_CONFIG)
    path = run_pipeline(cfg)
    stats = json.loads((path / "stats.json").read_text())
    manifest = json.loads((path / "manifest.json").read_text())
    print(format_summary(manifest, stats))
    print(f"dataset: {path}  ({time.perf_counter() - t0:.0f}s)")
    return 0
