"""routerforge/train/sharded_models.py on a real FSDP2 world (2 CPU processes over gloo; the worker is
tests/fixtures/fsdp_generation_worker.py), and build_accelerator's switch of a CPU world to FSDP2."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.fixtures.recipe_runner import ACCELERATE, FSDP_CPU_2PROC, REPO_ROOT, free_port, recipe_env
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm

WORKER = REPO_ROOT / "tests" / "fixtures" / "fsdp_generation_worker.py"


@pytest.mark.slow
def test_processes_generate_different_amounts_inside_the_gathered_context_without_hanging(tmp_path):
    model_dir = build_tiny_causal_lm(tmp_path / "tiny")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([ACCELERATE, "launch", "--config_file", str(FSDP_CPU_2PROC), "--main_process_port",
                           str(free_port()), str(WORKER), str(model_dir), str(out)],
                          cwd=REPO_ROOT, env=recipe_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, report in enumerate(reports):
        assert report["distributed_type"] == "FSDP"
        assert report["fsdp_units"] >= 3  # at least the two decoder layers and the root
        assert 0.45 < report["local_share"] < 0.55  # each process holds about half of every weight
        assert report["contexts"] == (3 if rank == 0 else 1)  # 3 generate calls on rank 0, 1 on rank 1
        assert all(report["generations_equal_the_unsharded_model"])  # same token ids, greedy
        assert sum(report["generated_tokens"]) > 0
        assert report["sharded_again_after"]
        assert report["digest_equals_unsharded"]
        assert report["digest_changed_by_a_step"]
    assert reports[0]["full_state_dict_equals_unsharded"] and reports[0]["full_state_dict_keys"] > 0
    assert reports[1]["full_state_dict_keys"] == 0  # gathered to the main process only
