"""Embedding throughput: RouterForge's `embed_texts` vs plain sentence-transformers `encode`, side by side.

    .venv/bin/python bench/bench_embed.py            # 512 real prompts, packaged all-MiniLM-L6-v2
    .venv/bin/python bench/bench_embed.py --n 2000 --batch-size 32 --threads 2 --json out.json

Prompts: first turns of the bundled Chatbot Arena battles (data/chatbot_arena) and Arena-Hard
questions (data/arena_bench_v1/question.jsonl), half from each (the rest from Arena when one runs
out), de-duplicated so both paths embed the same distinct texts (`--keep-duplicates` keeps the
repeats; then `embed_texts` embeds each once and `encode` does not).

Timed, same process, same model files, same batch size and torch threads (model loading is timed
separately and not included in prompts/s):
  (a) SentenceTransformer(path).encode(prompts, batch_size=B)
  (b) embed_texts(prompts, cfg) with an empty cache: hashing, cache lookup, length-sorted batches,
      encoding, cache write
  (c) embed_texts again on the now warm cache: no model call at all
Each timed phase runs `--repeats` times, (a) and (b) alternating, with a fresh empty cache for every
(b); the best run is reported, as is usual for throughput on a shared machine. Peak RSS is sampled
every 5 ms during each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
ARENA = REPO_ROOT / "data" / "chatbot_arena" / "arena_battles_1k.jsonl"
ARENA_HARD = REPO_ROOT / "data" / "arena_bench_v1" / "question.jsonl"


def first_turns(path: Path) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            turns = json.loads(line).get("turns")
            if turns and isinstance(turns[0], str) and turns[0].strip():
                out.append(turns[0])
    return out


def load_prompts(n: int, keep_duplicates: bool) -> list[str]:
    arena, hard = first_turns(ARENA), first_turns(ARENA_HARD)
    if not keep_duplicates:
        arena = list(dict.fromkeys(arena))
        seen = set(arena)
        hard = [t for t in dict.fromkeys(hard) if t not in seen]
    take_hard = min(len(hard), n // 2)
    prompts = hard[:take_hard] + arena[:n - take_hard]
    if len(prompts) < n:
        print(f"note: only {len(prompts)} prompts available (asked for {n})", file=sys.stderr)
    return prompts


class PeakRSS:
    """Samples this process's resident set size in a background thread; `.peak_mib` after the block."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak_mib = 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._proc.memory_info().rss / 2**20)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> PeakRSS:
        self.peak_mib = self._proc.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self._proc.memory_info().rss / 2**20)


class Phase:
    """Best wall time, its result, and the peak RSS (MiB) over all runs of one timed phase."""

    def __init__(self, fn) -> None:
        self.fn, self.best_s, self.result, self.peak_rss_mib = fn, float("inf"), None, 0.0
        self.all_s: list[float] = []

    def run_once(self) -> None:
        with PeakRSS() as rss:
            start = time.perf_counter()
            result = self.fn()
            elapsed = time.perf_counter() - start
        self.peak_rss_mib = max(self.peak_rss_mib, rss.peak_mib)
        self.all_s.append(elapsed)
        if elapsed < self.best_s:
            self.best_s, self.result = elapsed, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="number of prompts (count)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass, both paths")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch intra-op threads (default: the CPUs this process may use)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per phase; the best is reported")
    parser.add_argument("--keep-duplicates", action="store_true", help="do not de-duplicate the prompts")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.n < 1 or args.batch_size < 1 or args.threads < 1 or args.repeats < 1:
        parser.error("--n, --batch-size, --threads and --repeats must be >= 1")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from routerforge.data.config import EncoderConfig
    from routerforge.encoders import build_encoder, embed_texts
    from routerforge.encoders.model_source import resolve_model_source

    torch.set_num_threads(args.threads)
    prompts = load_prompts(args.n, args.keep_duplicates)
    cache_root = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    cfg_model = "packaged:all-MiniLM-L6-v2"
    model_path = resolve_model_source(cfg_model, None).load_from
    try:
        start = time.perf_counter()
        plain = SentenceTransformer(model_path, device="cpu")
        plain_load_s = time.perf_counter() - start
        start = time.perf_counter()
        cfg = EncoderConfig(model=cfg_model, batch_size=args.batch_size, cache_dir=str(cache_root / "unused"))
        encoder = build_encoder(cfg, device="cpu")
        _ = encoder.dim, encoder.revision  # load the model and fingerprint its files now, not inside the timing
        ours_load_s = time.perf_counter() - start
        plain.encode(prompts[:16], batch_size=args.batch_size)  # warm-up: first-call allocations, kernels
        encoder.encode(prompts[:16])

        cold_cfgs: list[EncoderConfig] = []

        def ours_cold():  # a new, empty cache directory for every run
            cold_cfgs.append(EncoderConfig(model=cfg_model, batch_size=args.batch_size,
                                           cache_dir=str(cache_root / f"cold{len(cold_cfgs)}")))
            return embed_texts(prompts, cold_cfgs[-1], encoder=encoder)

        plain_phase = Phase(lambda: plain.encode(prompts, batch_size=args.batch_size, convert_to_numpy=True,
                                                 show_progress_bar=False))
        cold_phase = Phase(ours_cold)
        # (a) and (b) alternate (a b, b a, a b, ...) so a load change on a shared machine hits both alike
        for repeat in range(args.repeats):
            for phase in ((plain_phase, cold_phase) if repeat % 2 == 0 else (cold_phase, plain_phase)):
                phase.run_once()
        warm_cfg = cold_cfgs[-1]  # the last cold run filled this cache
        warm_phase = Phase(lambda: embed_texts(prompts, warm_cfg, encoder=encoder))
        for _ in range(args.repeats):
            warm_phase.run_once()
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)

    n = len(prompts)
    a_s = plain_phase.best_s
    diff_b = float(np.abs(np.asarray(plain_phase.result) - cold_phase.result).max())
    diff_c = float(np.abs(cold_phase.result - warm_phase.result).max())
    mean_chars = sum(map(len, prompts)) / n
    phases = [("(a) sentence-transformers encode", plain_phase), ("(b) embed_texts, empty cache", cold_phase),
              ("(c) embed_texts, warm cache", warm_phase)]
    rows = [(name, phase.best_s, phase.peak_rss_mib) for name, phase in phases]
    print(f"bench_embed: {n} prompts ({len(set(prompts))} distinct, mean {mean_chars:.0f} chars), "
          f"all-MiniLM-L6-v2 (packaged), batch {args.batch_size}, torch threads {args.threads}, cpu, "
          f"best of {args.repeats}")
    print(f"model load: plain {plain_load_s:.2f} s, ours {ours_load_s:.2f} s (not in prompts/s)")
    print(f"{'path':36s} {'seconds':>8s} {'prompts/s':>10s} {'vs (a)':>7s} {'peak RSS MiB':>13s}  every run (s)")
    for name, phase in phases:
        runs = " ".join(f"{t:.3f}" for t in phase.all_s)
        print(f"{name:36s} {phase.best_s:8.3f} {n / phase.best_s:10.1f} {a_s / phase.best_s:6.2f}x "
              f"{phase.peak_rss_mib:13.0f}  {runs}")
    print(f"max |(a) - (b)| = {diff_b:.2e}; max |(b) - (c)| = {diff_c:.2e}; "
          f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({
            "n_prompts": n, "batch_size": args.batch_size, "torch_threads": args.threads, "repeats": args.repeats,
            "results": [{"path": name, "seconds": s, "prompts_per_s": n / s, "ratio_vs_plain": a_s / s,
                         "peak_rss_mib": rss, "all_runs_s": phase.all_s}
                        for (name, s, rss), (_, phase) in zip(rows, phases, strict=True)],
            "max_abs_diff_plain_vs_ours": diff_b}, indent=2))


if __name__ == "__main__":
    main()
