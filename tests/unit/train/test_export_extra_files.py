"""export_router's `extra_files` hook: a recipe's further files go into the same atomic export (issue 6 §5).

The writer under test is the Router-R1 recipe's own (`write_policy_files`: policy/ via save_pretrained +
the tokenizer, pool_config.json), on a tiny random-init Qwen2.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from routerforge.errors import CheckpointError
from routerforge.registry.load import verify_checkpoint
from routerforge.rl.pool_config import PoolConfig
from routerforge.train.final_export import build_manifest, export_router
from tests.fixtures.recipe_runner import REPO_ROOT, load_recipe_module
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_qwen2"))
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def write_policy_files():
    return load_recipe_module("train_router_r1").write_policy_files


def manifest_for(seed: int) -> dict:
    return build_manifest(recipe="router_r1", router_type="router_r1", resolved_config={"seed": seed},
                          model_pool=["a", "b"], encoder={"id": None}, data={}, training={}, metrics={},
                          tracking={}, repo_dir=REPO_ROOT)


def export(target, seed: int, extra_files):
    return export_router(target, {"value_head.weight": torch.full((1, 4), float(seed))},
                         {"router_type": "router_r1", "model_pool": ["a", "b"]}, manifest_for(seed),
                         extra_files=extra_files)


def tree_bytes(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_lists_exactly_the_files_on_disk_policy_included(tmp_path, tiny_policy, write_policy_files):
    model, tokenizer = tiny_policy
    target = export(tmp_path / "final", 1, lambda d: write_policy_files(d, model, tokenizer, PoolConfig()))

    on_disk = tree_bytes(target)
    manifest = json.loads(on_disk.pop("manifest.json"))
    assert manifest["files"] == {rel: hashlib.sha256(data).hexdigest() for rel, data in on_disk.items()}
    assert {"model.safetensors", "config.json", "pool_config.json", "policy/model.safetensors",
            "policy/config.json", "policy/tokenizer.json"} <= set(manifest["files"])
    verify_checkpoint(target)  # the registry's check: every listed file with its sha256, nothing unlisted
    (target / "policy" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="policy/model.safetensors"):
        verify_checkpoint(target)


def test_a_crash_in_extra_files_leaves_the_previous_export_untouched_and_no_temp_dir(tmp_path, tiny_policy,
                                                                                    write_policy_files):
    model, tokenizer = tiny_policy
    target = tmp_path / "final"

    def policy_then_crash(directory):
        write_policy_files(directory, model, tokenizer, PoolConfig())  # policy/ half of the extras is on disk
        raise OSError("No space left on device")

    # No previous export: nothing is left at all.
    with pytest.raises(OSError, match="No space left"):
        export(target, 1, policy_then_crash)
    assert list(tmp_path.iterdir()) == []

    export(target, 1, lambda d: write_policy_files(d, model, tokenizer, PoolConfig()))
    good = tree_bytes(target)
    with pytest.raises(OSError, match="No space left"):
        export(target, 2, policy_then_crash)
    assert tree_bytes(target) == good
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # no .tmp-final-<pid> / .old-final-<pid>
    verify_checkpoint(target)


def test_extra_files_may_not_write_the_manifest(tmp_path):
    with pytest.raises(ValueError, match="manifest.json"):
        export(tmp_path / "final", 1, lambda d: (d / "manifest.json").write_text("{}"))
    assert list(tmp_path.iterdir()) == []


def test_an_export_killed_mid_write_is_cleaned_up_and_a_killed_swap_is_undone(tmp_path):
    """A real SIGKILL while extra_files writes: the partial `.tmp-final-<pid>` is left behind, the next export
    removes it. A writer killed between its two renames left the previous export in `.old-final-<pid>`:
    it is put back when `final/` is missing (never lose the last good export)."""
    import signal
    import subprocess
    import sys
    import time

    from routerforge.train.final_export import recover_interrupted_export

    export_dir = tmp_path / "final"
    export_router(export_dir, {"w": torch.zeros(2)}, {"router_type": "router_r1", "v": 1}, manifest_for(1))
    script = (
        "import sys, time, torch\n"
        "from pathlib import Path\n"
        "from routerforge.train.final_export import export_router\n"
        "def slow(d):\n"
        "    (d / 'part.bin').write_bytes(b'x' * 10)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        f"export_router(Path({str(export_dir)!r}), {{'w': torch.ones(2)}}, "
        f"{{'router_type': 'router_r1', 'v': 2}}, {{}}, extra_files=slow)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftover = tmp_path / f".tmp-final-{proc.pid}"
    assert (leftover / "part.bin").is_file()
    assert json.loads((export_dir / "config.json").read_text())["v"] == 1  # the good export is untouched

    export_router(export_dir, {"w": torch.ones(2)}, {"router_type": "router_r1", "v": 3}, manifest_for(3))
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]

    # Killed between the renames: final/ moved to .old-final-<dead pid>, the new one never arrived.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".old-final-{int(dead.stdout)}"
    export_dir.rename(aside)
    time.sleep(0.1)
    assert recover_interrupted_export(export_dir) == [f"restored {export_dir} from {aside.name}"]
    assert json.loads((export_dir / "config.json").read_text()) == {"router_type": "router_r1", "v": 3}
    verify_checkpoint(export_dir)
