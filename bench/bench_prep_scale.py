"""Data-prep throughput and peak memory at 10k, 100k and 1M Arena-format rows.

    python bench/bench_prep_scale.py [--sizes 10000 100000 1000000]

Rows are generated for this benchmark only: real Arena battles (data/chatbot_arena) replicated with a
counter appended to each prompt, so every row is a distinct prompt and the clean stage's duplicate
check sees realistic keys. Each size runs in a fresh subprocess so peak RSS is per size; it is split
into heap (anonymous memory, which grows only with the duplicate-key sets, ~100 bytes per unique row)
and memory-mapped Arrow pages (file-backed page cache, reclaimable). Measured: the
streaming stages that scale with rows -- ingest (read + validate + clean, Arrow write) and
convert/merge -- plus the seeded split assignment. Embedding throughput is measured separately in
bench/bench_embed.py (it scales with unique prompts and the encoder, not with the pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARENA = REPO / "data/chatbot_arena/arena_battles_1k.jsonl"


def generate(path: Path, n_rows: int) -> None:
    keep = ("question_id", "model_a", "model_b", "winner", "judge", "turn", "anony", "language", "tstamp", "turns")
    base = [{k: v for k, v in json.loads(line).items() if k in keep} for line in open(ARENA, encoding="utf-8")]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n_rows):
            row = dict(base[i % len(base)])
            row["question_id"] = f"{row['question_id']}-{i}"
            row["turns"] = [f"{row['turns'][0]} (#{i})"]
            fh.write(json.dumps(row) + "\n")


class PeakMemory:
    """Samples /proc/self/status every 20 ms: peak anonymous RSS (heap: what the process really holds)
    and peak file-backed RSS (memory-mapped Arrow pages: page cache the kernel can drop at any time)."""

    def __init__(self) -> None:
        import threading

        self.anon_kib = self.file_kib = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        self.anon_kib = max(self.anon_kib, int(line.split()[1]))
                    elif line.startswith("RssFile:"):
                        self.file_kib = max(self.file_kib, int(line.split()[1]))
            time.sleep(0.02)


def worker(path: Path, out_root: Path) -> dict:
    peak = PeakMemory()
    from routerforge.config import load_config
    from routerforge.data.config import PrepConfig
    from routerforge.data.pipeline import PrepRun, input_fingerprint, stage_convert, stage_ingest
    from routerforge.data.split import assign_split

    cfg = load_config(PrepConfig, None, ["name=bench", f"output_root={out_root}",
                                         f"sources=[{{name: arena, kind: arena_conversations, path: '{path}'}}]"])
    run = PrepRun(cfg=cfg, input_fingerprint=input_fingerprint(cfg), log=lambda m: None)
    run.ledger._echo = None
    run.work_dir.mkdir(parents=True)
    timings = {}
    t0 = time.perf_counter()
    stage_ingest(run)
    timings["ingest"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stage_convert(run)
    timings["convert"] = time.perf_counter() - t0
    from datasets import Dataset

    ds = Dataset.from_file(str(run.stage_dir("convert") / "pairs.arrow"))
    t0 = time.perf_counter()
    n = 0
    for batch in ds.select_columns(["prompt_id"]).iter(batch_size=10_000):
        for pid in batch["prompt_id"]:
            assign_split(pid, 0, 0.1, 0.0)
            n += 1
    timings["split"] = time.perf_counter() - t0
    stats = run.ledger.stats()["per_source"]["arena"]
    return {"rows": stats["read"]["input"], "kept": stats["clean"]["kept"], "seconds": timings,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_anon_mib": peak.anon_kib / 1024, "peak_file_mib": peak.file_kib / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), Path(args.worker[1]))))
        return
    print(f"{'rows':>9} {'file MiB':>9} {'ingest rows/s':>14} {'convert rows/s':>15} {'split rows/s':>13} "
          f"{'peak RSS MiB':>13} {'of it heap':>11} {'of it mmap':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"arena_{size}.jsonl"
            generate(path, size)
            out = subprocess.run([sys.executable, __file__, "--worker", str(path), str(Path(tmp) / f"out{size}")],
                                 check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            s = r["seconds"]
            print(f"{r['rows']:>9} {path.stat().st_size / 2**20:>9.0f} {r['rows'] / s['ingest']:>14,.0f} "
                  f"{r['kept'] / s['convert']:>15,.0f} {r['kept'] / s['split']:>13,.0f} {r['peak_rss_mib']:>13,.0f} "
                  f"{r['peak_anon_mib']:>11,.0f} {r['peak_file_mib']:>11,.0f}")
            path.unlink()


if __name__ == "__main__":
    main()
