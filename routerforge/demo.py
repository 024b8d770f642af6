"""`make demo`: the main job end to end on the bundled real data, on CPU.

1. data prep (configs/data/demo.yaml): Arena votes, arena-bench-v1 judge labels, RouteLLM MMLU/GSM8K
   gold labels; MT-Bench and held-out halves of MMLU/GSM8K kept for evaluation and decontaminated
   against; prints the dataset stats.
2. trains the routers on it, each with the same command a user runs (printed before it runs):
   matrix factorization (RouteLLM), the BEST-Route difficulty router, the cluster router (UniRoute)
   and a probe router (P(weak model correct) from hidden states; offline the packaged MiniLM encoder
   stands in for the weak model's own states).

Every step is resumable: re-running the demo reuses the dataset (same version) and the finished runs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

DEMO_DATA_CONFIG = Path("configs/data/demo.yaml")
DEMO_DATA = "data/processed/demo"

# (title, script, config, overrides): the demo sizes of the recipes' default configs.
TRAINING_STEPS = [
    ("train the matrix factorization router (RouteLLM)", "training/train_mf.py", "configs/mf/default.yaml",
     ["run.name=demo", "run.epochs=50", "resume=auto", "tracking.report_to=tensorboard"]),
    ("train the difficulty router (BEST-Route heads on the packaged all-MiniLM-L6-v2)", "training/train_difficulty.py",
     "configs/difficulty/default.yaml",
     # CPU-sized: 40 optimizer steps of 16 prompts at <= 128 tokens (~1.5 min on 2 quiet cores)
     ["run.name=demo", "run.max_optimizer_steps=40", "run.micro_batch_size=16", "model.max_seq_tokens=128",
      "optim.warmup_optimizer_steps=8", "run.eval_every_optimizer_steps=0", "resume=auto",
      "tracking.report_to=tensorboard"]),
    ("train the cluster router (UniRoute)", "training/train_cluster.py", "configs/cluster/default.yaml",
     # 8 clusters with a 5-outcome prior: the demo's validation split is small (see the config's comment)
     ["run.name=demo", "clusters.num_clusters=8", "table.prior_pseudo_count=5", "tracking.report_to=tensorboard",
      "costs.prices_file=data/prices/routerarena/model_cost/cost.json",
      # RouterArena lists Mixtral as mistralai/mixtral-8x7b-instruct: its price under our model name
      "costs.prices={mistralai/Mixtral-8x7B-Instruct-v0.1: "
      "{input_usd_per_million_tokens: 0.6, output_usd_per_million_tokens: 0.6}}"]),
    # Probe: the packaged MiniLM encoder STANDS IN for Mixtral's own hidden states (offline, no causal LM);
    # P(Mixtral correct) on RouteLLM MMLU, reported on the held-out eval/mmlu set against the baselines.
    ("hidden states for the probe (MiniLM stand-in for the weak model)", "data_prep/hidden_states.py",
     "configs/probe/default.yaml", [f"features.dataset={DEMO_DATA}", "features.eval_sets=[mmlu]"]),
    ("train the probe router (P(weak model correct), MiniLM stand-in)", "training/train_probe.py",
     "configs/probe/default.yaml",
     [f"features.dataset={DEMO_DATA}", "features.eval_sets=[mmlu]", "data.report_sets=[eval/mmlu]",
      "run.name=demo", "resume=auto", "tracking.report_to=tensorboard"]),
]


def _run(cmd: list[str]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_demo() -> int:
    from routerforge.cli import format_summary
    from routerforge.config import load_config
    from routerforge.data.config import PrepConfig
    from routerforge.data.pipeline import run_pipeline

    t_start = time.perf_counter()
    print(f"== 1. data prep: routerforge prep --config {DEMO_DATA_CONFIG} ==", flush=True)
    cfg = load_config(PrepConfig, DEMO_DATA_CONFIG)
    path = run_pipeline(cfg)
    stats = json.loads((path / "stats.json").read_text())
    manifest = json.loads((path / "manifest.json").read_text())
    print(format_summary(manifest, stats))
    print(f"dataset: {path}  ({time.perf_counter() - t_start:.0f}s)", flush=True)

    for number, (title, script, config, overrides) in enumerate(TRAINING_STEPS, start=2):
        t0 = time.perf_counter()
        print(f"\n== {number}. {title} ==", flush=True)
        data_arg = [] if any(o.startswith("features.dataset=") for o in overrides) else [f"data.path={DEMO_DATA}"]
        _run([sys.executable, script, "--config", config, *data_arg, *overrides])
        print(f"({time.perf_counter() - t0:.0f}s)", flush=True)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f}s")
    return 0
