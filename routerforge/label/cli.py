"""`routerforge label`: answers and LLM-judge labels for your own prompts, as a versioned label set.

    routerforge label --config configs/label/example.yaml [key=value ...]

Exit codes: 0 label set written; 2 bad config or input; 3 the spend cap stopped the run (finished
calls are cached; re-run with a higher spend_cap_usd to continue).
"""

from __future__ import annotations

import argparse
import json
import sys

from routerforge.errors import RouterForgeError
from routerforge.io.names import MANIFEST_FILE

DESCRIPTION = ("Answer a prompts file with every candidate model and label the answers with an LLM judge "
               "(single grade, pairwise, or reference match), writing a versioned label set that "
               "`routerforge prep` reads.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routerforge label", description=DESCRIPTION,
                                     epilog="Calls are cached (cache_path): a re-run, or a run after a kill or a "
                                            "spend-cap stop, calls nothing twice. API keys are read from the "
                                            "environment variables the config names and are never written.")
    parser.add_argument("--config", required=True, help="label config YAML (see configs/label/example.yaml)")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. spend_cap_usd=20)")
    return parser


def label_main(argv: list[str]) -> int:
    from routerforge.config import load_config
    from routerforge.label.config import LabelConfig
    from routerforge.label.run import run_label

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(LabelConfig, args.config, list(args.overrides))
        path, stats = run_label(cfg)
    except RouterForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    counts = manifest["counts"]
    print(f"label set {manifest['name']} {manifest['version']} ({manifest['mode']}, "
          f"{manifest['template_version']}): {counts['outcomes']} outcomes, {counts['judge_rows']} judge rows, "
          f"{counts['unparseable_judgments']} unparseable judge outputs, {counts['failed_calls']} failed calls")
    print(f"this run: {stats.new_calls} calls made, {stats.cached_calls} from the cache, {stats.retries} retries, "
          f"${stats.new_spent_usd:.4f} spent (label set total ${stats.spent_usd:.4f}) in {stats.elapsed_s:.1f} s")
    if stats.failures:
        print(f"warning: {len(stats.failures)} calls failed (listed in report.json); re-run to retry them",
              file=sys.stderr)
    print(f"label set written to {path}")
    return 0
