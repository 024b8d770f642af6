"""Worker for test_embed_distributed.py: embed real Chatbot Arena prompts through `embed_texts` under accelerate.

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/unit/encoders/_embed_worker.py \
        --out-dir OUT --cache-dir CACHE --n 64 --batch-size 8 --expect-world-size 2

Every rank writes rank<i>.npy (the full matrix it got back) and rank<i>.json (world size, how many
texts this rank's encoder actually encoded, torch threads).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
ARENA = REPO_ROOT / "data" / "chatbot_arena" / "arena_battles_1k.jsonl"


def load_prompts(n: int) -> list[str]:
    """The first `n` non-empty first turns of the bundled Arena battles, then 5 of them again (duplicates)."""
    prompts: list[str] = []
    with open(ARENA, encoding="utf-8") as fh:
        for line in fh:
            turns = json.loads(line).get("turns")
            if turns and isinstance(turns[0], str) and turns[0].strip() and turns[0] not in prompts:
                prompts.append(turns[0])
            if len(prompts) == n:
                break
    return prompts + prompts[:5]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--expect-world-size", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch
    from accelerate import Accelerator

    from routerforge.data.config import EncoderConfig
    from routerforge.encoders import build_encoder, embed_texts

    accelerator = Accelerator(cpu=True)
    # `accelerate launch --cpu` silently runs one process (ARCHITECTURE.md, Known traps): check it is real.
    assert accelerator.num_processes == args.expect_world_size, accelerator.num_processes
    assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == args.expect_world_size

    cfg = EncoderConfig(cache_dir=args.cache_dir, batch_size=args.batch_size)
    encoder = build_encoder(cfg, device="cpu")
    encoded = {"texts": 0, "batches": 0}
    real_encode = encoder.encode

    def counting_encode(texts: list[str]):
        encoded["texts"] += len(texts)
        encoded["batches"] += 1
        return real_encode(texts)

    encoder.encode = counting_encode
    matrix = embed_texts(load_prompts(args.n), cfg, accelerator=accelerator, encoder=encoder)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank = accelerator.process_index
    np.save(out / f"rank{rank}.npy", matrix)
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world_size": accelerator.num_processes,
                "encoded_texts": encoded["texts"],
                "encoded_batches": encoded["batches"],
                "torch_threads": torch.get_num_threads(),
            }
        )
    )
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    from routerforge.train.entrypoint import run_recipe

    run_recipe(lambda _argv: main())  # ends a 2-process run as every recipe does (entrypoint.py)
