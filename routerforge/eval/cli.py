"""`routerforge eval`, `calibrate`, `route` and `list`: each parses its own arguments and returns an exit code.

    routerforge eval CHECKPOINT --outcomes FILE [--strong NAME --weak NAME] [--router-pair S W] [--map T=R ...]
                     [--json OUT.json] [--plot OUT.png] [--save [SET]] [--gate] [--n-bootstrap N]
    routerforge calibrate CHECKPOINT --prompts FILE --strong-share 0.2 0.5 [--strong NAME --weak NAME]
                     [--router-pair S W] [--holdout-fraction 0.25] [--dry-run]
    routerforge route CHECKPOINT "prompt" [...] [--strong-share S | --threshold T | --cost-weight λ]
    routerforge list [ROOT] [--router NAME] [--verify] [--json]

CHECKPOINT is a version directory (checkpoints/mf/1.0.0), a router directory (checkpoints/mf: its LATEST) or,
for eval and route, a Hub id ORG/NAME with --revision v1.0.0. A user error prints one line on stderr and
exits 2. routerforge/cli.py hands `routerforge <command> ...` to these functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from routerforge.config import doc
from routerforge.errors import RouterForgeError


@dataclass(frozen=True)
class ModelMappingConfig:
    """Which of the router's models stand in for the table's (`routerforge eval --config FILE.yaml`)."""

    router_pair: list[str] | None = doc("two of the router's own models scored in place of --strong and --weak, "
                                        "in that order (model names)", default=None)
    model_map: dict[str, str] = doc("table model -> router model, for models the router never saw (model names)",
                                    default_factory=dict)

    def __post_init__(self) -> None:
        if self.router_pair is not None and (len(self.router_pair) != 2 or len(set(self.router_pair)) != 2):
            raise ValueError(f"router_pair must name two different models, got {self.router_pair}")


def _fail(err: RouterForgeError) -> int:
    print(f"error: {err}", file=sys.stderr)
    return err.exit_code


def _add_loading_args(parser: argparse.ArgumentParser, hub: bool = True) -> None:
    if hub:
        parser.add_argument("--revision", default=None,
                            help="Hub revision of an ORG/NAME checkpoint (published versions are tags v<version>)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per encoder call (prompts)")
    parser.add_argument("--embedding-cache", default=None, metavar="DIR",
                        help="on-disk prompt-embedding cache to reuse (embedding routers); default: none")


def _load_router(args):
    from routerforge.router import Router

    return Router.from_pretrained(args.checkpoint, getattr(args, "revision", None), batch_size=args.batch_size,
                                  embedding_cache_dir=args.embedding_cache)


def _parse_map(items: Sequence[str] | None) -> dict[str, str]:
    from routerforge.errors import ConfigError

    out = {}
    for item in items or []:
        table_model, sep, router_model = item.partition("=")
        if not sep or not table_model or not router_model:
            raise ConfigError(f"--map {item!r}: write TABLE_MODEL=ROUTER_MODEL.")
        out[table_model] = router_model
    return out


# ---------------------------------------------------------------------------------------------------- eval
def eval_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="routerforge eval",
        description="Evaluate a router checkpoint on a long outcome table (JSONL/CSV: prompt_id, prompt, model, "
                    "score[, cost]): APGR/CPT/AUC for a strong/weak pair, AIQ for several models with costs.")
    parser.add_argument("checkpoint", help="checkpoint directory, checkpoints/<router> (LATEST) or Hub ORG/NAME")
    parser.add_argument("--outcomes", required=True, type=Path, help="long outcome table (.jsonl or .csv)")
    parser.add_argument("--strong", default=None, help="strong model (a model name of the table)")
    parser.add_argument("--weak", default=None, help="weak model (a model name of the table)")
    parser.add_argument("--router-pair", nargs=2, metavar=("STRONG", "WEAK"), default=None,
                        help="the router's own models that stand in for --strong and --weak")
    parser.add_argument("--map", action="append", metavar="TABLE=ROUTER",
                        help="map a table model to a router model (repeatable)")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML with router_pair and/or model_map (command-line flags win)")
    parser.add_argument("--models", nargs="+", default=None, help="multi-model: evaluate only these table models")
    parser.add_argument("--json", type=Path, default=None, dest="json_out", help="write the report JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the curve plot (PNG) here")
    parser.add_argument("--save", nargs="?", const="", default=None, metavar="SET",
                        help="also store report + plot in the checkpoint's eval/ as SET (default: the table's "
                             "file name)")
    parser.add_argument("--gate", action="store_true",
                        help="with --save: make this evaluation the checkpoint's promotion gate (metrics.gate)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (count; 0: none)")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI coverage (fraction)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    _add_loading_args(parser)
    args = parser.parse_args(argv)
    try:
        from routerforge.config import load_config
        from routerforge.errors import ConfigError
        from routerforge.eval.report import (
            evaluate_router,
            format_table,
            render_plot,
            save_evaluation,
            summary_json,
        )

        if args.n_bootstrap < 0 or not 0 < args.confidence < 1:
            raise ConfigError("--n-bootstrap must be >= 0 and --confidence in (0, 1).")
        if args.gate and args.save is None:
            raise ConfigError("--gate needs --save (the gate is recorded in the checkpoint's manifest).")
        mapping = load_config(ModelMappingConfig, args.config) if args.config else ModelMappingConfig()
        model_map = {**mapping.model_map, **_parse_map(args.map)}
        router_pair = args.router_pair or mapping.router_pair
        router = _load_router(args)
        result = evaluate_router(router, args.outcomes, strong=args.strong, weak=args.weak, router_pair=router_pair,
                                 model_map=model_map, models=args.models, n_bootstrap=args.n_bootstrap,
                                 confidence=args.confidence, seed=args.seed)
        print(format_table(result))
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_bytes(summary_json(result))
            print(f"report: {args.json_out}")
        if args.plot:
            print(f"plot: {render_plot(result, args.plot)}")
        if args.save is not None:
            set_name = args.save or args.outcomes.stem
            save_evaluation(router.path, result, set_name, gate=args.gate)
            print(f"saved in {router.path}/eval/{set_name}.json (+ .png); manifest and card updated"
                  + ("; promotion gate set" if args.gate else ""))
    except RouterForgeError as err:
        return _fail(err)
    return 0


# ---------------------------------------------------------------------------------------------------- calibrate
def calibrate_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="routerforge calibrate",
        description="Set the thresholds that send the given shares of YOUR prompts to the strong model; store "
                    "them in the checkpoint's calibration.json with the prompts' fingerprint.")
    parser.add_argument("checkpoint", help="local checkpoint directory (or checkpoints/<router> for its LATEST)")
    parser.add_argument("--prompts", required=True, type=Path,
                        help="your traffic: .jsonl ({\"prompt\": ...}), .csv (prompt column) or .txt (one per line)")
    parser.add_argument("--strong-share", type=float, nargs="+", required=True,
                        help="fractions of prompts to send to the strong model, e.g. 0.2 0.5")
    parser.add_argument("--strong", default=None, help="strong model name (what routing returns)")
    parser.add_argument("--weak", default=None, help="weak model name")
    parser.add_argument("--router-pair", nargs=2, metavar=("STRONG", "WEAK"), default=None,
                        help="the router's own models that stand in for --strong and --weak")
    parser.add_argument("--holdout-fraction", type=float, default=0.25,
                        help="share of prompts held out to report the achieved share (fraction in [0, 1))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--dry-run", action="store_true", help="report only; do not write calibration.json")
    parser.add_argument("--json", type=Path, default=None, dest="json_out", help="also write the entry here")
    _add_loading_args(parser, hub=False)
    args = parser.parse_args(argv)
    try:
        from routerforge.eval.calibrate import calibrate_router, read_prompts
        from routerforge.registry.register import write_calibration

        prompts = read_prompts(args.prompts)
        router = _load_router(args)
        entry = calibrate_router(router, prompts, args.strong_share, strong=args.strong, weak=args.weak,
                                 router_pair=args.router_pair, holdout_fraction=args.holdout_fraction,
                                 seed=args.seed, source=args.prompts)
        data = entry["data"]
        print(f"{router.name} {router.version or ''}: {entry['strong']} over {entry['weak']}; score: "
              f"{entry['score']['rule']}")
        print(f"{data['calibration_prompts']} prompts to calibrate, {data['holdout_prompts']} held out "
              f"(fingerprint {data['prompts_fingerprint'][:16]})\n")
        print(f"{'strong share':>12}{'threshold':>14}{'tie fraction':>14}{'calibration':>13}{'held out [95% CI]':>28}")
        for row in entry["thresholds"]:
            held = ("-" if row["holdout_share"] is None else
                    f"{row['holdout_share']:.4f} [{row['holdout_ci95'][0]:.4f}, {row['holdout_ci95'][1]:.4f}]")
            print(f"{row['strong_share']:>12g}{row['threshold']:>14.6g}{row['tie_fraction']:>14.4f}"
                  f"{row['calibration_share']:>13.4f}{held:>28}")
        if args.json_out:
            args.json_out.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
        if not args.dry_run:
            write_calibration(router.path, entry)
            print(f"\nwritten to {router.path}/calibration.json (manifest and card updated)")
    except RouterForgeError as err:
        return _fail(err)
    return 0


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
    _add_loading_args(parser)
    args = parser.parse_args(argv)
    try:
        from routerforge.errors import DataError
        from routerforge.eval.calibrate import read_prompts

        prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
        if not prompts:
            raise DataError("no prompt given: pass the text as an argument or --prompts FILE.")
        router = _load_router(args)
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
        return _fail(err)
    return 0


# ---------------------------------------------------------------------------------------------------- list
def list_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="routerforge list",
                                     description="List the versioned router checkpoints under a registry root.")
    parser.add_argument("root", nargs="?", default="checkpoints", type=Path, help="registry root (default checkpoints)")
    parser.add_argument("--router", default=None, help="only this router")
    parser.add_argument("--verify", action="store_true", help="check every file's sha256 against its manifest")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        from routerforge.errors import CheckpointError
        from routerforge.registry.versions import list_versions, read_latest, read_manifest

        if not args.root.is_dir():
            raise CheckpointError(f"registry root {args.root} does not exist; export a router first.")
        routers = sorted(p for p in args.root.iterdir() if p.is_dir() and (args.router is None or p.name == args.router))
        rows = []
        for router_dir in routers:
            latest = read_latest(router_dir)
            for version in list_versions(router_dir):
                directory = router_dir / version
                manifest = read_manifest(directory)
                row = {"router": router_dir.name, "version": version, "latest": version == latest,
                       "router_type": manifest.get("router_type"), "models": len(manifest.get("model_pool", [])),
                       "created_at": manifest.get("created_at"), "path": str(directory),
                       "calibrated": (manifest.get("calibration") or {}).get("pairs", []),
                       "evaluations": sorted(manifest.get("evaluations") or {}),
                       "gate": (manifest.get("metrics") or {}).get("gate")}
                if args.verify:
                    from routerforge.registry.load import verify_checkpoint

                    try:
                        verify_checkpoint(directory)
                        row["verified"] = "ok"
                    except CheckpointError as err:
                        row["verified"] = f"FAILED: {err}"
                rows.append(row)
        if args.router is not None and not rows:
            raise CheckpointError(f"{args.root / args.router}: no versions.")
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print(f"no versioned checkpoints under {args.root}")
            return 0
        print(f"{'router':<16}{'version':<10}{'':<8}{'type':<12}{'models':>7}  {'created':<26}{'gate':<22}calibrated")
        for r in rows:
            gate = f"{r['gate']['metric']}={r['gate']['value']:.4f}" if isinstance(r["gate"], dict) else "-"
            print(f"{r['router']:<16}{r['version']:<10}{'latest' if r['latest'] else '':<8}{r['router_type'] or '?':<12}"
                  f"{r['models']:>7}  {r['created_at'] or '?':<26}{gate:<22}{', '.join(r['calibrated']) or '-'}")
            if "verified" in r:
                print(f"{'':<16}verify: {r['verified']}")
    except RouterForgeError as err:
        return _fail(err)
    return 0
