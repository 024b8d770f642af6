"""Every module of routerforge imports at top level in a fresh interpreter.

One subprocess imports them all, one after another, in sorted order: a module whose top-level imports fail
(a missing name after a move, a cycle that breaks at import time) is named with its traceback. A fresh
interpreter, because this test process has already imported half the package through other tests; the
arrows themselves are checked from the source by tests/unit/test_import_layering.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import importlib, json, sys, traceback
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - a SystemExit at import time is a failure too
        failed[name] = traceback.format_exc(limit=3)
print(json.dumps(failed))
"""


def all_module_names() -> list[str]:
    names = []
    for path in sorted((ROOT / "routerforge").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue  # `python -m routerforge.train` runs a recipe: importing it IS running it
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_in_a_fresh_interpreter():
    names = all_module_names()
    assert len(names) > 100 and "routerforge.router" in names and "routerforge.models.mf" in names
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(names)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failed, "modules that do not import:\n" + "\n".join(f"{k}:\n{v}" for k, v in failed.items())
