"""bench/gpu_checks.sh --dry-run: the prepared GPU check runs every step on CPU at tiny size and records
sane results, so the script is known to work before a GPU is there (the GPU run itself is not part of CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures.recipe_runner import REPO_ROOT

STEPS = ["install", "tiny_recipes", "fsdp_nccl", "difficulty_bench", "router_r1_bench", "larger_encoder"]


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_sane_results(tmp_path, request, monkeypatch):
    from bench import gpu_checks_data

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(REPO_ROOT), OUT=str(out))
    # The two datasets with MiniLM embeddings are made ahead, as `make gpu-data` makes them for the GPU run, here
    # in this process: the MF and cluster tests have embedded the same prompts in it already (~20 s less). The
    # dry run builds the other two itself.
    data = tmp_path / "w" / "data"
    gpu_checks_data.ensure(data, ("mf",), build=True)  # the MF tests' per-process cache (no disk cache)
    cache = getattr(request.config, "cache", None)  # the cluster tests' MiniLM embedding cache, when there is one
    if cache is not None:
        env["GPU_CHECKS_EMBEDDING_CACHE"] = str(cache.mkdir("routerforge-embeddings"))
        monkeypatch.setenv("GPU_CHECKS_EMBEDDING_CACHE", env["GPU_CHECKS_EMBEDDING_CACHE"])
    gpu_checks_data.ensure(data, ("cluster",), build=True)
    proc = subprocess.run([str(REPO_ROOT / "bench" / "gpu_checks.sh"), "--dry-run", "--work-dir", str(tmp_path / "w")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    # Exactly the files the device machine sends back (at most 8): one JSON per step, the summary, its table.
    expected = {f"{i}_{name}.json" for i, name in enumerate(STEPS)} | {"summary.json", "summary.md"}
    assert {p.name for p in out.iterdir()} == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert [(s["number"], s["name"], s["status"]) for s in summary["steps"]] == [
        (i, name, "ok") for i, name in enumerate(STEPS)]
    for i, name in enumerate(STEPS):
        assert f"[step {i} {name}] OK" in proc.stdout
    table = (out / "summary.md").read_text()
    assert all(f"| {i} {name} | ok |" in table for i, name in enumerate(STEPS))

    step = {name: json.loads((out / f"{i}_{name}.json").read_text()) for i, name in enumerate(STEPS)}
    for body in step.values():
        assert all(check["status"] == "ok" for check in body["results"].values()), body
    versions = step["install"]["results"]["imports"]["versions"]
    assert all(not str(versions[m]).startswith("not importable") for m in ("datasets", "trl", "omegaconf", "faiss"))

    recipes = step["tiny_recipes"]["results"]
    assert set(recipes) == {"mf", "difficulty", "cluster", "probe", "router_r1", "mf_kill_resume"}
    for name in ("mf", "difficulty", "probe", "router_r1"):
        assert recipes[name]["device_type"] == "cpu" and recipes[name]["mixed_precision"] == "bf16", name
        assert recipes[name]["world_size"] == 1
    assert recipes["mf"]["last_loss"] < recipes["mf"]["first_loss"]
    resume = recipes["mf_kill_resume"]
    assert resume["bitwise_equal"] is True and resume["resumed_from"].endswith("step-000003")
    assert resume["optimizer_steps"] == resume["reference_optimizer_steps"] == 21

    fsdp = step["fsdp_nccl"]["results"]["difficulty_fsdp2"]
    assert fsdp["distributed_type"] == "FSDP" and fsdp["world_size"] == 1 and fsdp["mixed_precision"] == "bf16"

    bench = step["difficulty_bench"]["results"]["throughput"]
    assert all(0 < bench["samples_per_second"][side] < 1e5 for side in ("ours", "trainer"))
    assert all(bench["peak_memory_mib"][side] > 50 for side in ("ours", "trainer"))
    assert bench["mfu"] == {"ours": None, "trainer": None}  # no peak FLOP/s for a CPU
    assert bench["model_flops_per_sample"] > 0

    r1 = step["router_r1_bench"]["results"]["ppo_vs_grpo"]
    for algorithm in ("ppo", "grpo"):
        assert 0 < r1["seconds_per_step"][algorithm] < 120
        assert 0 < r1["tokens_per_second"][algorithm] and 0 < r1["peak_memory_gib"][algorithm] < 16

    larger = step["larger_encoder"]["results"]["difficulty_recipe"]
    assert larger["throughput"]["train_samples_per_second"] > 0 and larger["device_type"] == "cpu"
