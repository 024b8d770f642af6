"""`routerforge eval` and `calibrate`: each parses its own arguments and returns an exit code.

    routerforge eval CHECKPOINT --outcomes FILE [--strong NAME --weak NAME] [--router-pair S W] [--map T=R ...]
                     [--json OUT.json] [--plot OUT.png] [--save [SET]] [--gate] [--n-bootstrap N]
    routerforge calibrate CHECKPOINT --prompts FILE --strong-share 0.2 0.5 [--strong NAME --weak NAME]
                     [--router-pair S W] [--holdout-fraction 0.25] [--dry-run]

CHECKPOINT is a version directory (checkpoints/mf/1.0.0), a router directory (checkpoints/mf: its LATEST) or,
for eval, a Hub id ORG/NAME with --revision v1.0.0. A user error prints one line on stderr and
exits 2. routerforge/cli.py hands `routerforge <command> ...` to these functions.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from routerforge.config import doc
from routerforge.errors import RouterForgeError
from routerforge.router_cli import add_loading_args, fail, load_router_from_args

# The commands import what they run inside their functions (torch, datasets, transformers come with it), so
# `--help` and every other command start without them: start-up cost, not a hidden cycle
# (tests/unit/test_import_layering.py checks those imports point down the layers too).


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
    parser.add_argument("--n-bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the CIs (count; 0: none)")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI coverage (fraction)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    add_loading_args(parser)
    args = parser.parse_args(argv)
    try:
        from routerforge.config import load_config
        from routerforge.errors import ConfigError
        from routerforge.eval.report import (
            evaluate_router,
            format_table,
            render_plot,
            summary_json,
        )
        from routerforge.registry.register import save_evaluation

        if args.n_bootstrap < 0 or not 0 < args.confidence < 1:
            raise ConfigError("--n-bootstrap must be >= 0 and --confidence in (0, 1).")
        if args.gate and args.save is None:
            raise ConfigError("--gate needs --save (the gate is recorded in the checkpoint's manifest).")
        mapping = load_config(ModelMappingConfig, args.config) if args.config else ModelMappingConfig()
        model_map = {**mapping.model_map, **_parse_map(args.map)}
        router_pair = args.router_pair or mapping.router_pair
        router = load_router_from_args(args)
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
        return fail(err)
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
    add_loading_args(parser, hub=False)
    args = parser.parse_args(argv)
    try:
        from routerforge.eval.thresholds import calibrate_router, read_prompts
        from routerforge.registry.register import write_calibration

        prompts = read_prompts(args.prompts)
        router = load_router_from_args(args)
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
        return fail(err)
    return 0
