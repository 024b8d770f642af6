"""Data-parallel scaling of a training recipe: samples/s with 1 and 2 processes (CPU), and efficiency.

    .venv/bin/python bench/bench_scaling.py --recipe mf                       # data/processed/demo if present
    .venv/bin/python bench/bench_scaling.py --recipe difficulty --steps 20    # tiny random-init DeBERTa-v2
    .venv/bin/python bench/bench_scaling.py --recipe cluster
    .venv/bin/python bench/bench_scaling.py --recipe mf --data data/processed/demo --json bench/out/mf.json
    .venv/bin/python bench/bench_scaling.py --recipe difficulty --gpu --mixed-precision bf16   # needs a GPU

What runs: the recipe itself (training/train_<recipe>.py, its tiny config + the overrides below), each time
in a fresh process: `python training/X.py` for 1 process, `accelerate launch --config_file
launch/accelerate/cpu_2proc.yaml` for 2 (a real 2-process gloo world; each run's manifest must say
world_size 2). No step checkpoints, no tracker, no evaluation split.

What is measured:
- loop samples/s: the recipe's own `train_samples_per_second` from its export manifest: samples through a
  training forward pass on ALL processes / seconds from the first batch to the last optimizer step
  (recorded by train_mf and train_difficulty). Weak scaling: `run.micro_batch_size` is per process, so
  2 processes do the same number of optimizer steps on twice the samples.
- efficiency = samples/s(2 processes) / (2 x samples/s(1 process)); 1.0 is perfect scaling.
- end-to-end seconds: process start to exit (imports, data loading, model build, export included).
  train_cluster has no gradient loop: only end-to-end seconds are reported for it.
Each configuration runs `--repeats` times (after one unmeasured warm-up run that also builds a random-init
backbone); the best run is reported, as is usual for throughput on a shared machine.

`--gpu`: one process on one GPU through launch/accelerate/single_gpu.yaml; reports loop samples/s and the
peak GPU memory the recipe records (`peak_accelerator_memory_bytes`, torch.cuda.max_memory_allocated; train_mf
records it; a recipe that does not shows "not recorded"). Not run on the project's CPU machines.

Caveat for CPU numbers: 2 processes on a 2-core machine compete with each other (and with anything else
running); OMP_NUM_THREADS is 1 per process in both configurations so that the comparison is per core.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
CPU_2PROC = REPO_ROOT / "launch" / "accelerate" / "cpu_2proc.yaml"
SINGLE_GPU = REPO_ROOT / "launch" / "accelerate" / "single_gpu.yaml"
DEMO_DATA = REPO_ROOT / "data" / "processed" / "demo"
RECIPES = ("mf", "difficulty", "cluster")
ROUTER_DIR = {"mf": "mf", "difficulty": "difficulty", "cluster": "cluster"}
RUN_NAME = {"mf": "mf-tiny", "difficulty": "difficulty-tiny", "cluster": "cluster-tiny"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_data(recipe: str, work_dir: Path) -> Path:
    """data/processed/demo (made by `make demo`) when present, else a small real fixture dataset."""
    if DEMO_DATA.is_dir():
        return DEMO_DATA
    if recipe == "mf":
        from tests.fixtures.tiny_dataset import build_tiny_dataset
        return build_tiny_dataset(work_dir / "data", n_pairs=400)
    if recipe == "cluster":
        from tests.fixtures.tiny_outcomes_dataset import build_tiny_outcomes_dataset
        return build_tiny_outcomes_dataset(work_dir / "data")
    from tests.fixtures.tiny_difficulty_dataset import build_tiny_difficulty_dataset
    return build_tiny_difficulty_dataset(work_dir / "data")


def recipe_overrides(args, recipe: str, data: Path, out_dir: Path, backbone_dir: Path) -> list[str]:
    common = [f"data.path={data}", f"run.output_dir={out_dir}", "tracking.report_to=none", "run.progress_bar=false"]
    if recipe == "cluster":
        return [*common, "data.eval_split=", "eval.n_bootstrap=0"]
    trained = [*common, "run.epochs=1000", f"run.max_optimizer_steps={args.steps}",
               f"run.micro_batch_size={args.micro_batch_size}", "checkpoint.every_optimizer_steps=0",
               "data.eval_split=", f"run.mixed_precision={args.mixed_precision}"]
    if recipe == "difficulty":
        trained.append(f"model.backbone=random-deberta:tiny:{backbone_dir}")
    return trained


def command(recipe: str, processes: int, gpu: bool) -> list[str]:
    script = str(REPO_ROOT / "training" / f"train_{recipe}.py")
    config = str(REPO_ROOT / "configs" / recipe / "tiny.yaml")
    if gpu:
        return [ACCELERATE, "launch", "--config_file", str(SINGLE_GPU), script, "--config", config]
    if processes == 1:
        return [PYTHON, script, "--config", config]
    return [ACCELERATE, "launch", "--config_file", str(CPU_2PROC), "--main_process_port", str(free_port()),
            script, "--config", config]


def run_once(args, recipe: str, processes: int, data: Path, work_dir: Path, tag: str) -> dict:
    out_dir = work_dir / tag
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = command(recipe, processes, args.gpu) + recipe_overrides(args, recipe, data, out_dir, work_dir / "backbone")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.timeout_s)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} with {processes} process(es) failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    manifest = json.loads((out_dir / ROUTER_DIR[recipe] / RUN_NAME[recipe] / "final" / "manifest.json").read_text())
    training = manifest["training"]
    if training["world_size"] != processes:
        raise SystemExit(f"{recipe}: asked for {processes} processes, the run formed a world of "
                         f"{training['world_size']}")
    return {"processes": processes, "end_to_end_seconds": seconds,
            "loop_samples_per_second": training.get("train_samples_per_second"),
            "loop_seconds": training.get("train_loop_seconds"), "samples": training.get("train_samples"),
            "optimizer_steps": training.get("optimizer_steps"),
            "peak_accelerator_memory_bytes": training.get("peak_accelerator_memory_bytes"),
            "distributed_type": training["distributed_type"]}


def best(runs: list[dict]) -> dict:
    if runs[0]["loop_samples_per_second"] is not None:
        return max(runs, key=lambda r: r["loop_samples_per_second"])
    return min(runs, key=lambda r: r["end_to_end_seconds"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--data", type=Path, default=None, help="prepared dataset (default: data/processed/demo "
                        "if present, else a small real fixture dataset built once)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (steps)")
    parser.add_argument("--micro-batch-size", type=int, default=32, help="examples per process per step (examples)")
    parser.add_argument("--repeats", type=int, default=2, help="measured runs per configuration (count)")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--gpu", action="store_true", help="1 process on 1 GPU (single_gpu.yaml): samples/s and "
                        "peak GPU memory; needs a CUDA GPU")
    parser.add_argument("--timeout-s", type=float, default=900, help="per run (seconds)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work_dir = Path(tmp)
        data = args.data or default_data(args.recipe, work_dir)
        counts = (1,) if args.gpu else (1, 2)
        run_once(args, args.recipe, 1, data, work_dir, "warmup")  # builds the random-init backbone, warms caches
        results = {}
        for processes in counts:
            runs = [run_once(args, args.recipe, processes, data, work_dir, f"p{processes}-r{i}")
                    for i in range(args.repeats)]
            results[processes] = {**best(runs), "all_runs": runs}

    report = {"recipe": args.recipe, "data": str(data), "steps": args.steps, "micro_batch_size": args.micro_batch_size,
              "mixed_precision": args.mixed_precision, "device": "gpu" if args.gpu else "cpu",
              "cpu_count": os.cpu_count(), "results": {str(k): v for k, v in results.items()}}
    one, two = results.get(1), results.get(2)
    if two is not None and one["loop_samples_per_second"]:
        report["efficiency"] = two["loop_samples_per_second"] / (2 * one["loop_samples_per_second"])
    if two is not None:
        report["end_to_end_speedup"] = one["end_to_end_seconds"] / two["end_to_end_seconds"]

    shape = ("fit (no gradient loop)" if args.recipe == "cluster"
             else f"micro-batch {args.micro_batch_size}/process  {args.steps} steps")
    print(f"recipe {args.recipe}  data {data}  {report['device']}  {shape}  best of {args.repeats}")
    print(f"{'processes':>9}  {'loop samples/s':>15}  {'loop s':>7}  {'end-to-end s':>12}  {'peak GPU MiB':>12}")
    for processes, row in results.items():
        sps = f"{row['loop_samples_per_second']:.0f}" if row["loop_samples_per_second"] else "n/a"
        loop = f"{row['loop_seconds']:.2f}" if row["loop_seconds"] else "n/a"
        peak = (f"{row['peak_accelerator_memory_bytes'] / 2**20:.0f}" if row["peak_accelerator_memory_bytes"]
                else ("not recorded" if args.gpu else "-"))
        print(f"{processes:>9}  {sps:>15}  {loop:>7}  {row['end_to_end_seconds']:>12.1f}  {peak:>12}")
    if "efficiency" in report:
        print(f"efficiency (2 processes vs 2 x 1 process): {report['efficiency']:.2f}")
    if "end_to_end_speedup" in report:
        print(f"end-to-end speed-up (1 -> 2 processes): {report['end_to_end_speedup']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
