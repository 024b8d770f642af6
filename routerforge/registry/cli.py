"""`routerforge list`: the versioned router checkpoints under a registry root, optionally verified.

    routerforge list [ROOT] [--router NAME] [--verify] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from routerforge.errors import RouterForgeError
from routerforge.router_cli import fail

# The commands import what they run inside their functions (torch, datasets, transformers come with it), so
# `--help` and every other command start without them: start-up cost, not a hidden cycle
# (tests/unit/test_import_layering.py checks those imports point down the layers too).


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
        routers = sorted(p for p in args.root.iterdir()
                         if p.is_dir() and (args.router is None or p.name == args.router))
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
            print(f"{r['router']:<16}{r['version']:<10}{'latest' if r['latest'] else '':<8}"
                  f"{r['router_type'] or '?':<12}{r['models']:>7}  {r['created_at'] or '?':<26}{gate:<22}"
                  f"{', '.join(r['calibrated']) or '-'}")
            if "verified" in r:
                print(f"{'':<16}verify: {r['verified']}")
    except RouterForgeError as err:
        return fail(err)
    return 0
