"""One training step of the difficulty router's backbone with and without attention dropout, side by side.

    .venv/bin/python bench/bench_attention_dropout.py                       # all-MiniLM-L6-v2, 32 x 256 tokens
    .venv/bin/python bench/bench_attention_dropout.py --backbone <hub id or dir> --micro-batch-size 16

Why: torch's scaled_dot_product_attention has no fused CPU kernel with dropout, so a backbone trained with its
own attention dropout (all-MiniLM-L6-v2: 0.1, what a plain transformers fine-tune runs) takes the unfused path on
every training step; the difficulty recipe's default config sets model.attention_dropout=0.0.

Timed: forward + backward of the backbone in train mode (mean-pooled output summed as the loss, as the recipe's
pooling does; the heads are a few Linear layers and left out) on one fixed batch of real-length-like prompts
(random token ids, lengths drawn from 40..max with the longest at the max, so the batch pads as the recipe's do).
Each variant loads the backbone through the recipe's `load_backbone`, warms up one step, then runs `--repeats`
steps; the median is reported, with peak RSS of this process (cumulative: read it as an upper bound).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routerforge.models.difficulty import load_backbone  # noqa: E402

# (label, attention_dropout passed to load_backbone (None: the backbone's own), bf16 autocast)
VARIANTS = (("backbone's own attention dropout, fp32", None, False),
            ("attention dropout 0, fp32 (the default config)", 0.0, False),
            ("attention dropout 0, bf16 autocast", 0.0, True))


def step_seconds(backbone, input_ids, attention_mask, bf16: bool, repeats: int) -> list[float]:
    backbone.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        ((hidden.float() * mask).sum(1) / mask.sum(1)).sum().backward()
        backbone.zero_grad(set_to_none=True)

    step()  # warm-up: allocator and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="packaged:all-MiniLM-L6-v2", help="model.backbone spec")
    parser.add_argument("--micro-batch-size", type=int, default=32, help="prompts per step")
    parser.add_argument("--max-seq-tokens", type=int, default=256, help="the longest prompt's length (tokens)")
    parser.add_argument("--repeats", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 variant (CPUs without AVX512-BF16/AMX)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 20000, (args.micro_batch_size, args.max_seq_tokens), generator=generator)
    lengths = torch.randint(40, args.max_seq_tokens + 1, (args.micro_batch_size,), generator=generator)
    lengths[0] = args.max_seq_tokens
    attention_mask = (torch.arange(args.max_seq_tokens)[None] < lengths[:, None]).long()

    results = []
    for label, attention_dropout, bf16 in VARIANTS:
        if bf16 and args.no_bf16:
            continue
        backbone, _, _ = load_backbone(args.backbone, attention_dropout=attention_dropout)
        times = step_seconds(backbone, input_ids, attention_mask, bf16, args.repeats)
        results.append({"variant": label, "median_step_seconds": statistics.median(times),
                        "min_step_seconds": min(times),
                        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    base = results[0]["median_step_seconds"]
    print(f"{args.backbone}, {args.micro_batch_size} x {args.max_seq_tokens} tokens, {torch.get_num_threads()} "
          f"threads, forward + backward in train mode, median of {args.repeats}:")
    print("| variant | s per step | speed-up vs the backbone's own | peak RSS MiB |\n|---|---:|---:|---:|")
    for row in results:
        row["speedup"] = base / row["median_step_seconds"]
        print(f"| {row['variant']} | {row['median_step_seconds']:.2f} | {row['speedup']:.2f}x | "
              f"{row['peak_rss_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
