"""Labeling throughput against a loopback OpenAI-compatible endpoint with a fixed reply latency.

    python bench/bench_label.py [--prompts 200] [--latency-ms 50]

Two candidate models answer every prompt (reference mode: no judge call, so every call is one
request); the endpoint (tests/support/fake_chat_endpoint.py) waits `latency-ms` before each reply.
The endpoint runs in its own process, so its Python HTTP server does not share the labeling
process's CPU time slice (GIL). For each `max_concurrency` it prints calls/s next to the ideal
(2 endpoints x concurrency / latency), then the rate of a re-run served entirely from the SQLite
cache (one fsynced commit per new call is part of the first number). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routerforge.config import load_config  # noqa: E402
from routerforge.label.config import LabelConfig  # noqa: E402
from routerforge.label.run import run_label  # noqa: E402

KEY = "bench-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-m", "tests.support.fake_chat_endpoint", "--key", KEY,
                               "--delay-ms", str(args.latency_ms)], cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        os.environ["BENCH_BASE_URL"], os.environ["BENCH_KEY"] = server.stdout.readline().strip(), KEY
        prompts = tmp / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt_id": str(i), "prompt": f"What is {i}+{i}?",
                                               "reference": str(2 * i)}) + "\n" for i in range(args.prompts)))
        print(f"{args.prompts} prompts x 2 candidates, {args.latency_ms:.0f} ms per reply")
        print(f"{'max_concurrency':>16}{'calls':>8}{'seconds':>9}{'calls/s':>9}{'ideal':>8}{'cached calls/s':>16}")
        for concurrency in (1, 8, 32):
            candidates = [{"name": name, "model": name, "base_url_env": "BENCH_BASE_URL", "api_key_env": "BENCH_KEY",
                           "max_concurrency": concurrency} for name in ("strong-a", "weak-b")]
            overrides = [f"prompts={prompts}", f"output_root={tmp / 'out'}", f"cache_path={tmp / f'c{concurrency}.db'}",
                         "judge.mode=reference", "progress=false", f"candidates={json.dumps(candidates)}"]
            cfg = load_config(LabelConfig, None, overrides)
            started = time.perf_counter()
            _, stats = run_label(cfg)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            _, cached = run_label(cfg)
            cached_s = time.perf_counter() - started
            assert cached.new_calls == 0
            ideal = 2 * concurrency / (args.latency_ms / 1000)
            print(f"{concurrency:>16}{stats.new_calls:>8}{seconds:>9.2f}{stats.new_calls / seconds:>9.1f}"
                  f"{ideal:>8.0f}{cached.cached_calls / cached_s:>16.0f}")
    server.stdin.close()
    server.wait(timeout=10)


if __name__ == "__main__":
    main()
