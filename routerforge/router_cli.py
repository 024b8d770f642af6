"""`routerforge route`: route prompts with a checkpoint and print the model chosen per prompt.

    routerforge route CHECKPOINT "prompt" [...] [--prompts FILE] [--strong-share S | --threshold T | --cost-weight λ]
                      [--strong NAME --weak NAME] [--router-pair S W] [--json]

CHECKPOINT is a version directory (checkpoints/mf/1.0.0), a router directory (checkpoints/mf: its LATEST) or a
Hub id ORG/NAME with --revision v1.0.0. Also the loading options every command that runs a `Router` shares
(`routerforge eval`, `calibrate`). A user error prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from routerforge.errors import RouterForgeError

# The commands import what they run inside their functions (torch, datasets, transformers come with it), so
# `--help` and every other command start without them: start-up cost, not a hidden cycle
# (tests/unit/test_import_layering.py checks those imports point down the layers too).


def fail(err: RouterForgeError) -> int:
    print(f"error: {err}", file=sys.stderr)
    return err.exit_code


def add_loading_args(parser: argparse.ArgumentParser, hub: bool = True) -> None:
    if hub:
        parser.add_argument("--revision", default=None,
                            help="Hub revision of an ORG/NAME checkpoint (published versions are tags v<version>)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per encoder call (prompts)")
    parser.add_argument("--embedding-cache", default=None, metavar="DIR",
                        help="on-disk prompt-embedding cache to reuse (embedding routers); default: none")


def load_router_from_args(args):
    from routerforge.router import Router  # here, not at the top: `--help` answers without importing torch

    return Router.from_pretrained(args.checkpoint, getattr(args, "revision", None), batch_size=args.batch_size,
                                  embedding_cache_dir=args.embedding_cache)


# ---------------------------------------------------------------------------------------------------- route
def route_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="routerforge route",
                                     description="Route prompts with a router checkpoint; prints the chosen model.")
    parser.add_argument("checkpoint", help="checkpoint directory, checkpoints/<router> (LATEST) or Hub ORG/NAME")
    parser.add_argument("prompt", nargs="*", help="prompt text(s)")
    parser.add_argument("--prompts", type=Path, default=None, help="route the prompts of this file too")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--strong-share", type=float, default=None, help="use the calibrated threshold of this share")
    mode.add_argument("--threshold", type=float, default=None, help="strong iff the router's score >= this")
    mode.add_argument("--cost-weight", type=float, default=None,
                      help="λ: argmax predicted quality − λ·cost (quality per USD); default the router's own")
    parser.add_argument("--strong", default=None, help="strong model name")
    parser.add_argument("--weak", default=None, help="weak model name")
    parser.add_argument("--router-pair", nargs=2, metavar=("STRONG", "WEAK"), default=None,
                        help="the router's own models that stand in for --strong and --weak")
    parser.add_argument("--json", action="store_true", help="print JSON lines {prompt, model[, score]}")
    add_loading_args(parser)
    args = parser.parse_args(argv)
    try:
        from routerforge.errors import DataError
        from routerforge.eval.thresholds import read_prompts

        prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
        if not prompts:
            raise DataError("no prompt given: pass the text as an argument or --prompts FILE.")
        router = load_router_from_args(args)
        models, scores = router.route_with_scores(prompts, strong_share=args.strong_share, threshold=args.threshold,
                                                  cost_weight=args.cost_weight, strong=args.strong, weak=args.weak,
                                                  router_pair=args.router_pair)
        score_name = "score" if args.strong_share is not None or args.threshold is not None else "utility"
        for i, (prompt, model) in enumerate(zip(prompts, models, strict=True)):
            if args.json:
                print(json.dumps({"prompt": prompt, "model": model, score_name: float(scores[i])}))
            else:
                shown = prompt if len(prompt) <= 70 else prompt[:67] + "..."
                print(f"{model}\t{shown!r}  ({score_name} {scores[i]:.4f})")
    except RouterForgeError as err:
        return fail(err)
    return 0
