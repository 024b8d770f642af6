"""Bad-row reports and per-stage accounting.

Two promises to the user, both kept here:

* every malformed row is reported with its file, line, field and reason, and a hint how to fix it;
* every row that enters a stage is either kept or dropped for a named reason, so for each source and
  stage ``kept + sum(dropped.values()) == input`` holds exactly (`Ledger.check` asserts it).

A reader gets a `Ledger` and calls `ledger.bad(...)` for a malformed row; stages call
`ledger.count(...)`. The ledger writes `bad_rows.jsonl` and the `stats.json` counts.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

# Reason codes for malformed rows (the `reason` field of a BadRow) and the hint shown with each.
BAD_ROW_HINTS: dict[str, str] = {
    "invalid_json": "each line must be one JSON object; fix or remove the line",
    "invalid_csv": "the row does not parse as CSV with the header's columns",
    "not_utf8": "the file must be UTF-8; re-encode it (e.g. iconv -f latin1 -t utf-8)",
    "missing_field": "add the field, or map your column to it",
    "wrong_type": "the field has the wrong type; see the schema in the README",
    "unknown_winner": "winner must be one of model_a, model_b, tie, tie (bothbad) (or the format's one-hot columns)",
    "unknown_model": "the model is not in the source's model list or price table",
    "self_battle": "model_a and model_b are the same model; such a battle carries no preference",
    "empty_prompt": "the prompt is empty or white space only",
    "duplicate_id": "the id appeared earlier in the same file; ids must be unique",
    "unparseable_score": "the judge score is missing or not a number in the judge's range (e.g. [[7]])",
    "score_out_of_range": "scores must lie in [0, 1] (outcomes) or the judge's scale",
    "inconsistent_verdict": "the two answer orders of a pairwise judgement disagree",
    "not_an_object": "each record must be a JSON object",
}


@dataclass(frozen=True)
class BadRow:
    """One malformed input row: where it is, which field, what is wrong."""

    source: str
    file: str
    line: int
    field: str | None
    reason: str
    detail: str

    def format(self) -> str:
        where = f"{self.file}:{self.line}"
        field = f" field '{self.field}':" if self.field else ""
        hint = BAD_ROW_HINTS.get(self.reason, "")
        return f"{where}:{field} {self.reason}: {self.detail}" + (f" (fix: {hint})" if hint else "")


@dataclass
class StageCount:
    input: int = 0
    kept: int = 0
    dropped: Counter | None = None
    made: int = 0  # rows produced by a conversion stage (e.g. pairs made from outcomes)

    def __post_init__(self) -> None:
        if self.dropped is None:
            self.dropped = Counter()

    def as_dict(self) -> dict:
        out = {"input": self.input, "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}
        if self.made:
            out["made"] = self.made
        return out


class Ledger:
    """Accounting for one data-prep run: bad rows plus per (source, stage) counts."""

    def __init__(self, echo: TextIO | None = sys.stderr, echo_limit: int = 20) -> None:
        self.bad_rows: list[BadRow] = []
        self.counts: dict[str, dict[str, StageCount]] = defaultdict(dict)
        self._echo = echo
        self._echo_limit = echo_limit

    # -- malformed rows ----------------------------------------------------------------------
    def bad(self, source: str, file: str, line: int, reason: str, detail: str, field: str | None = None,
            stage: str = "read") -> None:
        """Report a malformed row; it also counts as dropped (reason = `reason`) in `stage`."""
        self.count(source, stage, dropped={reason: 1})
        row = BadRow(source=source, file=str(file), line=int(line), field=field, reason=reason, detail=detail)
        self.bad_rows.append(row)
        if self._echo is not None and len(self.bad_rows) <= self._echo_limit:
            print(f"bad row: {row.format()}", file=self._echo)
        elif self._echo is not None and len(self.bad_rows) == self._echo_limit + 1:
            print("bad row: ... (further bad rows only in bad_rows.jsonl)", file=self._echo)

    # -- stage accounting --------------------------------------------------------------------
    def stage(self, source: str, stage: str) -> StageCount:
        return self.counts[source].setdefault(stage, StageCount())

    def count(self, source: str, stage: str, *, kept: int = 0, dropped: dict[str, int] | None = None,
              made: int = 0) -> None:
        """Record `kept` rows and `dropped` rows by reason; input grows by their sum."""
        sc = self.stage(source, stage)
        n_dropped = sum((dropped or {}).values())
        sc.input += kept + n_dropped
        sc.kept += kept
        sc.made += made
        for reason, n in (dropped or {}).items():
            if n:
                sc.dropped[reason] += n

    def check(self) -> None:
        """Assert kept + dropped == input for every source and stage (a bug here is ours, not the user's)."""
        for source, stages in self.counts.items():
            for stage, sc in stages.items():
                total = sc.kept + sum(sc.dropped.values())
                if total != sc.input:
                    raise AssertionError(f"ledger mismatch for {source}/{stage}: {total} != {sc.input}")

    def bad_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = defaultdict(Counter)
        for row in self.bad_rows:
            out[row.source][row.reason] += 1
        return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}

    def stats(self) -> dict:
        self.check()
        return {
            "per_source": {
                source: {stage: sc.as_dict() for stage, sc in stages.items()}
                for source, stages in sorted(self.counts.items())
            },
            "bad_rows": self.bad_counts(),
            "n_bad_rows": len(self.bad_rows),
        }

    def write_bad_rows(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for row in self.bad_rows:
                fh.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")

    # -- persistence between resumable stages --------------------------------------------------
    def to_json(self) -> dict:
        return {
            "bad_rows": [asdict(r) for r in self.bad_rows],
            "counts": {s: {st: {"input": c.input, "kept": c.kept, "made": c.made, "dropped": dict(c.dropped)}
                           for st, c in stages.items()} for s, stages in self.counts.items()},
        }

    @classmethod
    def from_json(cls, data: dict, echo: TextIO | None = sys.stderr) -> Ledger:
        ledger = cls(echo=echo)
        ledger.bad_rows = [BadRow(**r) for r in data["bad_rows"]]
        for source, stages in data["counts"].items():
            for stage, c in stages.items():
                ledger.counts[source][stage] = StageCount(input=c["input"], kept=c["kept"], made=c["made"],
                                                          dropped=Counter(c["dropped"]))
        return ledger
