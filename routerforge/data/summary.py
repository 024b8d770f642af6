"""The plain-text summary `routerforge prep` (and `make demo`) print of a prepared dataset version."""

from __future__ import annotations

import json
from pathlib import Path


def dataset_summary(version_dir: str | Path) -> str:
    """`format_summary` of the manifest.json and stats.json a prep run wrote into `version_dir`."""
    version_dir = Path(version_dir)
    stats = json.loads((version_dir / "stats.json").read_text())
    manifest = json.loads((version_dir / "manifest.json").read_text())
    return format_summary(manifest, stats)


def format_summary(manifest: dict, stats: dict) -> str:
    """A plain-text table of what a prepared dataset holds and what was dropped where."""
    lines = [f"dataset {manifest['name']} version {manifest['version']} "
             f"(content fingerprint {manifest['content_fingerprint'][:16]})",
             f"encoder {manifest['encoder']['id']} dim {manifest['encoder']['dim']}; "
             f"{len(manifest['models'])} models", ""]
    lines.append(f"{'table':<10}{'train':>9}{'valid':>9}{'test':>9}")
    for table, c in manifest["counts"].items():
        lines.append(f"{table:<10}{c['train']:>9}{c['validation']:>9}{c['test']:>9}")
    lines += ["", f"{'source':<22}{'stage':<24}{'input':>9}{'kept':>9}  dropped"]
    for source, stages in stats["per_source"].items():
        for stage, c in stages.items():
            dropped = ", ".join(f"{k}={v}" for k, v in c["dropped"].items()) or "-"
            made = f" (made {c['made']} pairs)" if c.get("made") else ""
            lines.append(f"{source:<22}{stage:<24}{c['input']:>9}{c['kept']:>9}  {dropped}{made}")
    if manifest["eval_sets"]:
        lines += ["", "evaluation sets: " + ", ".join(f"{k} ({v['prompts']} prompts)"
                                                      for k, v in manifest["eval_sets"].items())]
    return "\n".join(lines)
