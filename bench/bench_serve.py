"""Load test of `routerforge serve`: requests/s and p50/p99 added latency at 1, 8 and 64 concurrent clients.

    .venv/bin/python bench/bench_serve.py                          # trains a tiny MF router on real data first
    .venv/bin/python bench/bench_serve.py --checkpoint checkpoints/mf/1.0.0 --requests 200 400 640 --json out.json

Set-up, all real HTTP on 127.0.0.1: two OpenAI-compatible fake upstreams answering at once
(tests/support/fake_chat_upstream.py, own process), the proxy started by the real CLI (`routerforge serve`, own
process, strong share 0.3 calibrated on the prompts), and the clients here (httpx, asyncio, one connection per
client). Prompts: distinct real MMLU questions, each request tagged with a unique id, so every request is
encoded (no cache) and every one can be counted at the upstreams.

For each concurrency C, `--requests` requests (and at most `--max-seconds` s):
  - direct: the clients call the upstreams themselves (the same split of requests) -> latency without the proxy;
  - proxy: the clients call the proxy -> latency with it.
added latency = proxy percentile − direct percentile. The encoder's own time comes from the proxy's /metrics
(routerforge_serve_encoder_batch_seconds: seconds per encoder call, and requests per call), and, for one request
at a time, from `Router.score` on one prompt in this process (`encoder_single_ms`); the proxy's overhead at C = 1
is added p50 − encoder_single p50. At every C, each response's `Server-Timing` (routing = queue + encoder + rule,
upstream = the forwarded call) is subtracted from its client latency: what is left (p50/p99) is what the proxy
itself costs (HTTP in and out, JSON, headers). Lost / duplicated: the upstreams' record of every user text they received
is compared with what was sent (each id exactly once, at the proxy phase's upstream). Best of nothing: one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
SHARE = 0.3


def train_checkpoint(work: Path) -> Path:
    from routerforge.registry.register import finalize_export
    from tests.fixtures import registry_routers as rr

    return finalize_export(rr.trained_export(work, "mf"), work / "registry")


def calibrate(checkpoint: Path, prompts: list[str]) -> None:
    from routerforge.eval.thresholds import calibrate_router
    from routerforge.registry.register import write_calibration
    from routerforge.router import Router
    from tests.fixtures import registry_routers as rr

    router = Router.from_pretrained(checkpoint)
    write_calibration(checkpoint, calibrate_router(router, prompts, [SHARE], strong=rr.STRONG, weak=rr.WEAK))


def encoder_single_ms(checkpoint: Path, prompts: list[str]) -> list[float]:
    from routerforge.router import Router
    from tests.fixtures import registry_routers as rr

    router = Router.from_pretrained(checkpoint)
    router.score(prompts[:4], rr.STRONG, rr.WEAK)  # warm-up
    times = []
    for prompt in prompts:
        t0 = time.perf_counter()
        router.score([prompt], rr.STRONG, rr.WEAK)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def wait_for(predicate, process: subprocess.Popen, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout_s:g} s")
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def run_clients(concurrency: int, jobs: list[tuple[str, str, dict]], max_seconds: float) -> dict:
    """`jobs`: (url, tag, body). Each of `concurrency` clients takes the next job until none is left."""
    import httpx

    latencies_ms: list[float] = []
    outside_ms: list[float] = []  # latency minus the proxy's routing and upstream time (its Server-Timing)
    statuses: Counter = Counter()
    models: Counter = Counter()
    queue = list(reversed(jobs))
    deadline = time.monotonic() + max_seconds
    headers = {"authorization": "Bearer bench-token"}

    async def client() -> None:
        async with httpx.AsyncClient(timeout=120.0, limits=httpx.Limits(max_connections=1)) as http:
            while queue and time.monotonic() < deadline:
                url, _, body = queue.pop()
                t0 = time.perf_counter()
                response = await http.post(url, json=body, headers=headers)
                latency_ms = (time.perf_counter() - t0) * 1000.0
                latencies_ms.append(latency_ms)
                timing = response.headers.get("server-timing")
                if timing:
                    durations = dict(part.strip().split(";dur=") for part in timing.split(","))
                    outside_ms.append(latency_ms - float(durations["routing"]) - float(durations["upstream"]))
                statuses[response.status_code] += 1
                models[response.headers.get("x-router-model", "direct")] += 1

    started = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies_ms), "seconds": elapsed, "requests_per_s": len(latencies_ms) / elapsed,
            "p50_ms": percentile(latencies_ms, 50), "p99_ms": percentile(latencies_ms, 99),
            "statuses": dict(statuses), "models": dict(models),
            "outside_routing_and_upstream_p50_ms": percentile(outside_ms, 50),
            "outside_routing_and_upstream_p99_ms": percentile(outside_ms, 99)}


def metric_totals(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_count", "_sum")) or sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="MF router checkpoint; default: train a tiny one")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients")
    parser.add_argument("--requests", type=int, nargs="+", default=[100, 240, 640],
                        help="requests per concurrency level (one number, or one per level)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="time limit per phase (s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the proxy (OMP_NUM_THREADS)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    counts = args.requests * len(args.concurrency) if len(args.requests) == 1 else args.requests
    if len(counts) != len(args.concurrency):
        parser.error("--requests: give one number or one per --concurrency level")

    import httpx
    from bench_routing import mmlu_prompts

    prompts = mmlu_prompts(max(counts) + 200)
    # the machine's load average when the run starts and ends (a shared machine's numbers vary with it)
    results: dict = {"concurrency": {}, "share": SHARE, "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="routerforge-bench-serve-") as tmp:
        work = Path(tmp)
        if args.checkpoint is None:
            checkpoint = train_checkpoint(work)
        else:
            import shutil

            checkpoint = Path(shutil.copytree(args.checkpoint, work / "checkpoint"))  # calibration is written into it
        calibrate(checkpoint, prompts[-200:])
        results["encoder_single_ms"] = {"p50": percentile(timings := encoder_single_ms(checkpoint, prompts[:50]), 50),
                                        "p99": percentile(timings, 99)}

        urls_file = work / "upstreams.json"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "BENCH_SERVE_TOKEN": "bench-token"}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        fakes = subprocess.Popen([sys.executable, "-m", "tests.support.fake_chat_upstream", "--urls-file",
                                  str(urls_file)], env=env, cwd=REPO_ROOT)
        proxy = None
        try:
            wait_for(urls_file.is_file, fakes, "the fake upstreams")
            urls = json.loads(urls_file.read_text())
            config = work / "serve.yaml"
            config.write_text(
                "host: 127.0.0.1\nport: 0\nauth_token_env: BENCH_SERVE_TOKEN\n"
                f"strong: {{base_url: '{urls['strong']}', upstream_model: strong-v1, timeout_s: 60}}\n"
                f"weak: {{base_url: '{urls['weak']}', upstream_model: weak-v1, timeout_s: 60}}\n")
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            proxy = subprocess.Popen([sys.executable, "-m", "routerforge.cli", "serve", str(checkpoint),
                                      "--strong-share", str(SHARE), "--config", str(config), f"port={port}",
                                      "--log-level", "warning"], env=env, cwd=REPO_ROOT)
            proxy_url = f"http://127.0.0.1:{port}"

            def proxy_up() -> bool:
                try:
                    return httpx.get(proxy_url + "/health", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(proxy_up, proxy, "routerforge serve")
            # warm-up (first encoder call allocations), not counted
            asyncio.run(run_clients(4, [(proxy_url + "/v1/chat/completions", "w",
                                         {"model": "router", "messages": [{"role": "user", "content": p}]})
                                        for p in prompts[-8:]], args.max_seconds))
            sent_total: Counter = Counter()
            for concurrency, n in zip(args.concurrency, counts, strict=True):
                texts = [f"[p-c{concurrency}-{i}] {prompts[i]}" for i in range(n)]
                bodies = [{"model": "router", "messages": [{"role": "user", "content": t}]} for t in texts]
                direct_bodies = [{"model": "router", "messages": [{"role": "user", "content": "[d" + t[2:]}]}
                                 for t in texts]
                before = metric_totals(httpx.get(proxy_url + "/metrics").text)
                via_proxy = asyncio.run(run_clients(concurrency, [(proxy_url + "/v1/chat/completions", t, b)
                                                                  for t, b in zip(texts, bodies, strict=True)],
                                                    args.max_seconds))
                after = metric_totals(httpx.get(proxy_url + "/metrics").text)
                # direct: the same requests straight to the upstream the proxy would pick (share as routed)
                direct_jobs = [(urls["weak" if i % 10 >= SHARE * 10 else "strong"] + "/chat/completions", "", b)
                               for i, b in enumerate(direct_bodies)]
                direct = asyncio.run(run_clients(concurrency, direct_jobs, args.max_seconds))
                calls = after["routerforge_serve_encoder_batch_seconds_count"] - \
                    before["routerforge_serve_encoder_batch_seconds_count"]
                encoder_s = after["routerforge_serve_encoder_batch_seconds_sum"] - \
                    before["routerforge_serve_encoder_batch_seconds_sum"]
                routing_n = after["routerforge_serve_routing_seconds_count"] - \
                    before["routerforge_serve_routing_seconds_count"]
                routing_s = after["routerforge_serve_routing_seconds_sum"] - \
                    before["routerforge_serve_routing_seconds_sum"]
                sent_total.update(texts[:via_proxy["requests"]])
                row = {"proxy": via_proxy, "direct": direct,
                       "added_p50_ms": via_proxy["p50_ms"] - direct["p50_ms"],
                       "added_p99_ms": via_proxy["p99_ms"] - direct["p99_ms"],
                       "encoder_calls": calls, "requests_per_encoder_call": routing_n / calls if calls else None,
                       "encoder_ms_per_call": 1000.0 * encoder_s / calls if calls else None,
                       "routing_ms_mean": 1000.0 * routing_s / routing_n if routing_n else None}
                results["concurrency"][concurrency] = row
                print(f"C={concurrency:>3}: {via_proxy['requests']} requests, {via_proxy['requests_per_s']:.1f} req/s "
                      f"via proxy ({direct['requests_per_s']:.0f} direct); added p50 {row['added_p50_ms']:.1f} ms, "
                      f"p99 {row['added_p99_ms']:.1f} ms; encoder {row['encoder_ms_per_call']:.1f} ms/call for "
                      f"{row['requests_per_encoder_call']:.1f} requests/call; routing (queue + encoder) mean "
                      f"{row['routing_ms_mean']:.1f} ms; proxy time outside routing and upstream p50 "
                      f"{via_proxy['outside_routing_and_upstream_p50_ms']:.1f} ms, p99 "
                      f"{via_proxy['outside_routing_and_upstream_p99_ms']:.1f} ms; statuses {via_proxy['statuses']}",
                      flush=True)
            # Lost or duplicated: every text sent through the proxy arrived exactly once, at one upstream.
            received: Counter = Counter()
            for role in ("strong", "weak"):
                base = urls[role].removesuffix("/v1")
                received.update(t for t in httpx.get(base + "/received").json() if t.startswith("[p-"))
            results["lost"] = sum(1 for t in sent_total if received[t] == 0)
            results["duplicated"] = sum(n - 1 for n in received.values() if n > 1) + \
                sum(n for t, n in received.items() if t not in sent_total)
            results["requests_sent_via_proxy"] = sum(sent_total.values())
            print(f"lost {results['lost']}, duplicated {results['duplicated']} of "
                  f"{results['requests_sent_via_proxy']} proxied requests; encoder alone (one prompt): p50 "
                  f"{results['encoder_single_ms']['p50']:.1f} ms, p99 {results['encoder_single_ms']['p99']:.1f} ms",
                  flush=True)
        finally:
            for process in (proxy, fakes):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
    results["load_average_end"] = os.getloadavg()
    print(f"load average (1, 5, 15 min): start {results['load_average_start']}, end {results['load_average_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
