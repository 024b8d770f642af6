"""Builders shared by the label tests: a prompts file and a label config pointed at the fake endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

API_KEY = "sk-test-LABEL-SECRET-8c1f9e2a"  # must never appear in any written file
BASE_URL_ENV, KEY_ENV = "RF_LABEL_TEST_BASE_URL", "RF_LABEL_TEST_KEY"

PROMPTS = [
    {"prompt_id": "p1", "prompt": "Explain what a hash table is.", "task": "general"},
    {"prompt_id": "p2", "prompt": "What is 17+25?", "task": "math", "reference": "17 + 25 = 42\n#### 42"},
    {"prompt_id": "p3", "prompt": "Write a haiku about rain.", "task": "writing"},
    {"prompt_id": "p4", "prompt": "MALFORMED: rate this one if you can.", "task": "general"},
    {"prompt_id": "p5", "prompt": "What is 100+1?", "task": "math", "reference": "101"},
]


def write_prompts(path: Path, rows: list[dict] = PROMPTS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def endpoint(name: str, **extra) -> dict:
    return {"name": name, "model": name, "base_url_env": BASE_URL_ENV, "api_key_env": KEY_ENV,
            "input_usd_per_m": 1000.0, "output_usd_per_m": 2000.0, "max_concurrency": 4, "timeout_s": 10.0,
            "backoff_s": 0.01, "generation": {"max_tokens": 64}, **extra}


def write_config(tmp: Path, prompts: Path, mode: str = "single", candidates: list[dict] | None = None,
                 **top) -> Path:
    cfg = {"name": "mine", "prompts": str(prompts), "output_root": str(tmp / "labels"),
           "cache_path": str(tmp / "cache.sqlite"), "spend_cap_usd": 100.0, "progress": False,
           "candidates": candidates or [endpoint("strong-model"), endpoint("weak-model")],
           "judge": {"mode": mode, "endpoint": endpoint("judge", model="judge-model")}, **top}
    path = tmp / f"label-{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
