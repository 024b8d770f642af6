"""Helpers shared by the reader tests: run a reader, check the ledger's accounting, edit copies of real files."""

from __future__ import annotations

import json
from pathlib import Path

from routerforge.data.config import ConvertConfig, SourceConfig
from routerforge.data.readers import read_source
from routerforge.data.report import BadRow, Ledger

REPO_ROOT = Path(__file__).resolve().parents[3]
DATA = REPO_ROOT / "data"
FIXTURES = REPO_ROOT / "tests" / "fixtures"

# The convert rule each record kind needs to pass SourceConfig validation (role=train).
_RULE_FOR_KIND = {
    "routellm_csv": "outcome_pairs",
    "llmrouter_json": "outcome_pairs",
    "zeroeval_summary": "outcome_pairs",
    "outcomes": "outcome_pairs",
    "fastchat_single_judge": "judge_score_pairs",
    "routellm_gpt4_judge": "judge_score_pairs",
}


def source(kind: str, path: Path | str, name: str = "src", inconsistent: str = "drop", **kw) -> SourceConfig:
    convert = ConvertConfig(rule=_RULE_FOR_KIND.get(kind, "none"), inconsistent=inconsistent)
    return SourceConfig(name=name, kind=kind, path=str(path), convert=convert, **kw)


def read(kind: str, path: Path | str, **kw) -> tuple[list[dict], Ledger]:
    ledger = Ledger(echo=None)
    src = source(kind, path, **kw)
    return list(read_source(src, ledger)), ledger


def read_input(ledger: Ledger, name: str = "src") -> int:
    """Rows that entered the read stage, from kept + dropped (after asserting the ledger balances)."""
    ledger.check()
    sc = ledger.stage(name, "read")
    return sc.kept + sum(sc.dropped.values())


def non_blank_lines(*paths: Path) -> int:
    return sum(1 for p in paths for line in p.read_bytes().splitlines() if line.strip())


def where(rows: list[BadRow]) -> list[tuple[str, int, str | None, str]]:
    """(file name, line, field, reason) of each bad row, for exact comparisons."""
    return [(Path(r.file).name, r.line, r.field, r.reason) for r in rows]


def copy_lines(src: Path, dst: Path, n: int) -> list[str]:
    """Copy the first `n` lines of a real JSON-lines file to `dst`; return them (without newlines)."""
    lines = src.read_text(encoding="utf-8").splitlines()[:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def edit_jsonl_line(path: Path, line_no: int, edit) -> None:
    """Apply `edit(obj) -> obj` to the JSON object on 1-based line `line_no` of `path`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line_no - 1] = json.dumps(edit(json.loads(lines[line_no - 1])), ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
