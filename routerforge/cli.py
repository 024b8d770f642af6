"""RouterForge: prepare router data, train, evaluate, calibrate, publish and use LLM routers.

    routerforge prep --config configs/data/demo.yaml [--stage STAGE] [--strict] [--force] [key=value ...]
    routerforge demo
    routerforge train RECIPE --config FILE|RECIPE/NAME [key=value ...]   (`routerforge train --help` lists the recipes)
    routerforge label --config configs/label/example.yaml [key=value ...]
    routerforge eval CHECKPOINT --outcomes FILE [--strong NAME --weak NAME] [--router-pair S W] [--json OUT]
        [--plot OUT.png]
    routerforge calibrate CHECKPOINT --prompts FILE --strong-share 0.2 0.5 ...
    routerforge route CHECKPOINT "prompt" [...]
    routerforge serve CHECKPOINT [--strong-share 0.3 | --threshold T] --config serve.yaml [key=value ...]
    routerforge list [ROOT] [--router NAME] [--verify]
    routerforge publish CHECKPOINT --repo ORG/NAME [--force] [--private] [--branch B]
    routerforge eval-router-r1 --export DIR [--export DIR ...] [--alphas 0,0.3,0.6] [--max-tasks N] --out DIR

Errors caused by user input (`RouterForgeError`) print one line and exit 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from routerforge.errors import RouterForgeError

# The commands import what they run inside their functions (torch, datasets, transformers come with it), so
# `--help` and every other command start without them: start-up cost, not a hidden cycle
# (tests/unit/test_import_layering.py checks those imports point down the layers too).


def _prep(args: argparse.Namespace) -> int:
    from routerforge.config import load_config
    from routerforge.data.config import PrepConfig
    from routerforge.data.pipeline import run_pipeline
    from routerforge.data.summary import dataset_summary

    overrides = list(args.overrides) + (["strict=true"] if args.strict else [])
    cfg = load_config(PrepConfig, args.config, overrides)
    accelerator = None
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_world > 1:  # launched with accelerate launch / torchrun: split the embedding work
        import torch
        from accelerate import Accelerator

        # cpu=True on a machine without an accelerator forms a real gloo world (ARCHITECTURE.md, traps).
        from routerforge.train.accelerator_setup import check_launched_world

        accelerator = Accelerator(cpu=not torch.accelerator.is_available())
        check_launched_world(accelerator.num_processes)
        if accelerator.is_main_process:
            print(f"distributed prep: world_size={accelerator.num_processes}", file=sys.stderr)
    path = run_pipeline(cfg, until=args.stage, force=args.force, accelerator=accelerator, keep_work=args.keep_work)
    if path is not None:
        print(dataset_summary(path))
        print(f"dataset written to {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from routerforge.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routerforge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prep", help="build a versioned, embedded router dataset from a data config")
    prep.add_argument("--config", required=True, help="data config YAML (see configs/data/)")
    prep.add_argument("--stage", default="embed",
                      choices=["ingest", "convert", "decontaminate", "split", "embed"],
                      help="run up to and including this stage (finished stages are resumed, not redone)")
    prep.add_argument("--strict", action="store_true", help="any malformed row fails the run (exit 2)")
    prep.add_argument("--force", action="store_true", help="rebuild even if this version exists")
    prep.add_argument("--keep-work", action="store_true", help="keep the per-stage work directory")
    prep.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. split.seed=1)")
    prep.set_defaults(func=_prep)

    demo = sub.add_parser("demo", help="the end-to-end demo on the bundled real data")
    demo.set_defaults(func=_demo)
    for name, (_target, summary) in DELEGATED.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


# Subcommands that own their argument parsing; `routerforge X ...` hands everything after X to them.
DELEGATED = {
    "train": ("routerforge.recipes:train_main",
              "train a router: a recipe of training/ (mf, difficulty, cluster, ...) with a config"),
    "label": ("routerforge.label.cli:label_main",
              "answers and LLM-judge labels for your own prompts, as a versioned label set"),
    "eval": ("routerforge.eval.cli:eval_main",
             "evaluate a checkpoint on an outcome table (APGR, CPT, AUC or AIQ, with intervals and a plot)"),
    "calibrate": ("routerforge.eval.cli:calibrate_main",
                  "calibrate routing thresholds for strong-model shares on your own prompts"),
    "route": ("routerforge.router_cli:route_main", "route prompts with a checkpoint: the model chosen per prompt"),
    "serve": ("routerforge.serve.cli:serve_main",
              "serve a router as an OpenAI-compatible proxy that forwards each request to the chosen model"),
    "list": ("routerforge.registry.cli:list_main", "list the versions in a checkpoint registry (and verify them)"),
    "publish": ("routerforge.registry.publish:publish_main",
                "publish a checkpoint to the Hugging Face Hub as tag v<version>; main follows the newest"),
    "eval-router-r1": ("routerforge.rl.evaluate:eval_router_r1_main",
                       "evaluate Router-R1 exports on multi-hop QA across cost weights"),
}


def main(argv: list[str] | None = None) -> int:
    exit_code = _run(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched as several processes (distributed prep, hidden
        # states): end like the recipes do, without interpreter teardown of the gloo group (it can abort;
        # routerforge/train/entrypoint.py explains)
        from routerforge.train.entrypoint import exit_without_interpreter_teardown

        exit_without_interpreter_teardown(exit_code)
    return exit_code


def _run(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        module, func = DELEGATED[argv[0]][0].split(":")
        return getattr(importlib.import_module(module), func)(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RouterForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
