"""The installable package: a wheel built from this repo, installed into a fresh venv outside the checkout,
trains a tiny MF router with `routerforge train` using a packaged config by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.recipe_runner import REPO_ROOT, recipe_env
from tests.fixtures.tiny_dataset import build_tiny_dataset

pytestmark = pytest.mark.slow  # wheel build + venv + a training run in a fresh interpreter: ~25 s


def test_wheel_installed_outside_the_repo_trains_mf_with_routerforge_train(tmp_path):
    wheel_dir = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheel_dir), str(REPO_ROOT)], check=True, timeout=300)
    [wheel] = wheel_dir.glob("routerforge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        # The recipes travel unchanged: the installed file is the readable one in training/.
        assert archive.read("routerforge/_recipes/train_mf.py") == (REPO_ROOT / "training/train_mf.py").read_bytes()
    assert {f"routerforge/_recipes/train_{r}.py" for r in ("mf", "difficulty", "cluster", "probe", "router_r1")} \
        <= names
    assert {"routerforge/_configs/mf/default.yaml", "routerforge/_configs/mf/tiny.yaml"} <= names

    # A fresh venv that sees the shared venv's libraries (torch, ...) but not its editable routerforge: a plain
    # path line in a .pth adds the directory without running the .pth files (the editable finder) inside it.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Install first: with the shared libraries visible, pip would take the editable routerforge as installed.
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not be importable
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", "--force-reinstall", str(wheel)], check=True, timeout=300, env=clean_env)
    Path(site, "shared_libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    data = build_tiny_dataset(tmp_path / "data", n_pairs=60, name="arena60")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = recipe_env()
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(python), "-c", "import routerforge.recipes as r; print(r.recipes_dir())"],
                           cwd=workdir, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert where == str(Path(site) / "routerforge" / "_recipes")  # the wheel's copy, not the checkout

    done = subprocess.run([str(venv / "bin" / "routerforge"), "train", "mf", "--config", "mf/tiny",
                           f"data.path={data}", "run.output_dir=out", "run.epochs=1"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((workdir / "out/mf/mf-tiny/final/manifest.json").read_text())
    assert manifest["recipe"] == "mf" and manifest["config"]["run"]["epochs"] == 1
    assert manifest["config"]["model"]["model_embedding_dim"] == 16  # from the packaged mf/tiny config
    assert (workdir / "out/mf/LATEST").read_text().strip() == "1.0.0"

    helped = subprocess.run([str(python), "-m", "routerforge.train", "mf", "--help"], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0
    assert "[optim] Optimizer, learning-rate schedule and gradient clipping." in helped.stdout
    assert "  optim.lr (float, unit: per optimizer step; default 0.0003)\n      peak learning rate" in helped.stdout
    missing = subprocess.run([str(venv / "bin" / "routerforge"), "train", "mf", "--config", "mf/nope"],
                             cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "--config mf/nope: no such file, and no packaged config of that name (packaged: mf/default, mf/tiny)" \
        in missing.stderr
