"""Routing speed on CPU: throughput, p50/p99 latency at batch 1 and batch 64, and time spent outside the encoder.

    .venv/bin/python bench/bench_routing.py                      # trains tiny MF, cluster, difficulty routers first
    .venv/bin/python bench/bench_routing.py --checkpoint checkpoints/mf/1.0.0 --checkpoint checkpoints/cluster
    .venv/bin/python bench/bench_routing.py --n-prompts 1024 --threads 2 --json bench/results/routing.json

Routers: the given checkpoints, or (default) routers trained here by the recipes on real data
(tests/fixtures/registry_routers.py: MF and cluster on RouteLLM MMLU outcomes prepared by the real data-prep
pipeline with the packaged all-MiniLM-L6-v2 encoder; difficulty with a tiny random-init DeBERTa-v2), each
finalized into a temporary registry. Prompts: distinct real MMLU questions (data/routellm/mmlu), all subjects.

Each router is first calibrated on the prompts (strong share 0.5, when it has a strong/weak pair) and then timed
through the public API exactly as an application calls it, `Router.route(prompts, strong_share=0.5)` (routers
without a pair: `cost_weight` routing):
  - batch 1: `--n-single` prompts, one call each; latency per call;
  - batch 64: all `--n-prompts` prompts in calls of 64; latency per call; prompts/s = prompts / total time.
Encoder vs the rest: `Router.timing` accumulates the seconds inside the encoder (MiniLM embedding, or the
DeBERTa backbone forward + tokenization) per call; everything else in the call (family head, pair score,
threshold and tie rule, batching, name lookup) is router overhead = call time − encoder time. Target: overhead
under 10% of encoder time. Model loading and one warm-up call are excluded. `--repeats` runs of each phase;
the best (lowest total) is reported, as usual for speed on a shared machine. Torch threads: `--threads`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
BATCH = 64


def mmlu_prompts(n: int) -> list[str]:
    import glob

    from routerforge.data.config import ConvertConfig, SourceConfig
    from routerforge.data.readers.outcome_tables import read_routellm_csv
    from routerforge.data.report import Ledger

    prompts: dict[str, None] = {}
    for path in sorted(glob.glob(str(REPO_ROOT / "data" / "routellm" / "mmlu" / "mmlu_*.csv"))):
        source = SourceConfig(name="mmlu", kind="routellm_csv", path=path, convert=ConvertConfig(rule="outcome_pairs"))
        for row in read_routellm_csv(source, Ledger(echo=None)):
            prompts.setdefault(row["prompt"], None)
    ordered = list(prompts)
    step = max(1, len(ordered) // n)  # spread over every subject
    return ordered[::step][:n]


def default_checkpoints(work: Path) -> list[Path]:
    """Train tiny routers of every family on real data and finalize them into `work`/registry."""

    class BaseTemp:  # what tests/fixtures/tiny_deberta.py needs from pytest's tmp_path_factory
        def getbasetemp(self) -> Path:
            return work

    from routerforge.registry.register import finalize_export
    from tests.fixtures import registry_routers as rr

    return [finalize_export(rr.trained_any(work, family, BaseTemp()), work / "registry")
            for family in ("mf", "cluster", "difficulty")]


def percentile_ms(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000.0, q))


def timed_calls(router, batches: list[list[str]], route_kwargs: dict) -> dict:
    for key in ("encode_s", "head_s"):
        router.timing[key] = 0.0
    latencies, encoder = [], []
    for batch in batches:
        before = router.timing["encode_s"]
        t0 = time.perf_counter()
        router.route(batch, **route_kwargs)
        latencies.append(time.perf_counter() - t0)
        encoder.append(router.timing["encode_s"] - before)
    total, encode = sum(latencies), sum(encoder)
    prompts = sum(len(b) for b in batches)
    return {"calls": len(batches), "prompts": prompts, "total_s": total, "prompts_per_s": prompts / total,
            "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
            "encoder_s": encode, "outside_encoder_s": total - encode,
            "outside_share_of_call": (total - encode) / total,
            "overhead_vs_encoder": (total - encode) / encode if encode > 0 else float("nan")}


def bench_router(path: Path, prompts: list[str], args) -> dict:
    from routerforge.eval.thresholds import calibrate_router
    from routerforge.registry.register import write_calibration
    from routerforge.router import Router

    router = Router.from_pretrained(path, batch_size=BATCH)
    route_kwargs: dict = {"cost_weight": router.scorer.default_cost_weight}
    pair = None
    if len(router.scorer.pair_models) >= 2:
        pool = router.scorer.pair_models
        pair = next(((s, w) for s in pool for w in pool if s != w and router.scorer.pair_rule(s, w)), None)
    if pair is not None:
        write_calibration(path, calibrate_router(router, prompts, [0.5], strong=pair[0], weak=pair[1],
                                                 holdout_fraction=0.0))
        router = Router.from_pretrained(path, batch_size=BATCH)
        route_kwargs = {"strong_share": 0.5, "strong": pair[0], "weak": pair[1]}
    router.route(prompts[:BATCH], **route_kwargs)  # warm-up: lazy model load, first-call allocations
    single = [[p] for p in prompts[: args.n_single]]
    batched = [prompts[i:i + BATCH] for i in range(0, len(prompts), BATCH)]
    result = {"checkpoint": str(path), "router_type": router.router_type, "route": route_kwargs,
              "encoder": router.scorer.encoder_id}
    for name, batches in (("batch_1", single), ("batch_64", batched)):
        runs = [timed_calls(router, batches, route_kwargs) for _ in range(args.repeats)]
        result[name] = min(runs, key=lambda r: r["total_s"])
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", type=Path, default=None,
                        help="router checkpoint to time (repeatable); default: train tiny ones of every family")
    parser.add_argument("--n-prompts", type=int, default=512, help="prompts routed in batches of 64 (prompts)")
    parser.add_argument("--n-single", type=int, default=128, help="prompts routed one call each (prompts)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each phase; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (threads)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    prompts = mmlu_prompts(args.n_prompts)
    with tempfile.TemporaryDirectory(prefix="routerforge-bench-") as tmp:
        if args.checkpoint:
            import shutil

            checkpoints = []
            for i, given in enumerate(args.checkpoint):  # calibration is written into a copy, never the original
                from routerforge.registry.versions import resolve_local_checkpoint

                source = resolve_local_checkpoint(given)
                checkpoints.append(Path(shutil.copytree(source, Path(tmp) / f"ckpt{i}" / source.name)))
        else:
            checkpoints = default_checkpoints(Path(tmp))
        results = [bench_router(path, prompts, args) for path in checkpoints]
    report = {"device": "cpu", "torch_threads": args.threads, "prompts": len(prompts),
              "prompt_source": "data/routellm/mmlu (distinct questions, all subjects)", "batch": BATCH,
              "routers": results}
    print(f"{'router':<11}{'batch':>6}{'prompts/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'outside enc.':>14}"
          f"{'overhead/enc.':>15}  encoder")
    for r in results:
        for name in ("batch_1", "batch_64"):
            m = r[name]
            print(f"{r['router_type']:<11}{name.split('_')[1]:>6}{m['prompts_per_s']:>11.1f}{m['p50_ms']:>9.2f}"
                  f"{m['p99_ms']:>9.2f}{m['outside_share_of_call']:>13.1%}{m['overhead_vs_encoder']:>14.1%}  "
                  f"{r['encoder']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
