"""Load a long outcome table (JSONL or CSV) into a wide prompts x models score and cost matrix.

The long table is the format a user brings to ``routerforge eval`` (ARCHITECTURE.md, "Canonical
records"): one row per (prompt, model) with

    prompt_id  (string; if absent or empty, derived from `prompt` with `records.prompt_id_for`)
    prompt     (string; optional when prompt_id is given)
    model      (string, required)
    score      (number in [0, 1], required; JSON true/false and CSV True/False/true/false read as 1/0)
    cost       (USD per answer, >= 0, optional; empty / null means unknown)

Evaluation is strict where data prep is lenient: metrics computed on a silently thinned table would
be wrong without anyone noticing, so any malformed row raises `DataError` whose one line names the
file and line of the first problem (and how many rows are bad). A (prompt, model) pair that appears
twice is an error too (we would otherwise have to guess which score counts). A (prompt, model) cell
that never appears is not an error: the table records it in `missing_cells`, and the helpers here
drop such prompts explicitly and say how many.

Prompts and models keep the order of their first appearance in the file.
"""

from __future__ import annotations

import csv
import difflib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routerforge.data.readers._io import iter_csv, iter_jsonl
from routerforge.data.report import BadRow, Ledger
from routerforge.errors import DataError

_SOURCE = "outcome_table"
_TRUE = {"true": 1.0, "false": 0.0}


@dataclass(frozen=True, eq=False)
class OutcomeTable:
    """A wide outcome table: `scores[i, j]` / `costs[i, j]` for prompt i and model j (NaN where absent).

    `costs` is NaN where the cell is missing or its cost was not given; `missing_cells` lists the
    (prompt_id, model) pairs with no row. Arrays are read-only.
    """

    path: str
    prompt_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    models: tuple[str, ...]
    scores: np.ndarray
    costs: np.ndarray
    missing_cells: tuple[tuple[str, str], ...]

    @property
    def has_costs(self) -> bool:
        """True when every present cell has a cost."""
        present = ~np.isnan(self.scores)
        return bool(np.all(~np.isnan(self.costs[present])))


@dataclass(frozen=True, eq=False)
class StrongWeakColumns:
    """Per-prompt weak and strong scores for binary routing, on prompts that have both."""

    prompt_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    weak_scores: np.ndarray
    strong_scores: np.ndarray
    dropped_prompt_ids: tuple[str, ...]


def _bad(path: Path, line: int, reason: str, detail: str, field: str | None = None) -> BadRow:
    return BadRow(source=_SOURCE, file=str(path), line=line, field=field, reason=reason, detail=detail)


def _iter_rows(path: Path, ledger: Ledger) -> Iterator[tuple[int, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from iter_jsonl(path, _SOURCE, ledger)
    elif suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            header = next(csv.reader(fh), [])
        if "prompt_id" not in header and "prompt" not in header:
            raise DataError(f"{path}:1: CSV header needs a 'prompt_id' or a 'prompt' column; header is {header}.")
        yield from iter_csv(path, _SOURCE, ledger, required=["model", "score"])
    else:
        raise DataError(f"{path}: unsupported outcome table format '{suffix or '(none)'}'; "
                        f"use .jsonl (one JSON object per line) or .csv with a header.")


def _parse_number(value: object, allow_bool: bool) -> float | None:
    """A finite float, or None if `value` is not a number."""
    if isinstance(value, bool):
        return float(value) if allow_bool else None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if allow_bool and text.lower() in _TRUE:
            return _TRUE[text.lower()]
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _prompt_id_for(text: str) -> str:
    # Imported lazily: records.py imports `datasets`, which is slow to import and rarely needed here.
    from routerforge.data.records import prompt_id_for

    return prompt_id_for(text)


def load_outcome_table(path: str | Path) -> OutcomeTable:
    """Read a long outcome table; DataError naming file:line for the first malformed row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"outcome table not found: {path}. Pass an existing .jsonl or .csv file.")
    ledger = Ledger(echo=None)
    bad: list[BadRow] = []
    cells: dict[tuple[str, str], tuple[float, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    prompt_text: dict[str, str] = {}
    model_order: dict[str, None] = {}

    for line, row in _iter_rows(path, ledger):
        model = row.get("model")
        if not isinstance(model, str) or not model.strip():
            bad.append(_bad(path, line, "missing_field", "no model name", "model"))
            continue
        model = model.strip()
        prompt = row.get("prompt")
        prompt = prompt if isinstance(prompt, str) else None
        pid = row.get("prompt_id")
        pid = str(pid).strip() if pid is not None and not isinstance(pid, (dict, list)) else ""
        if not pid:
            if prompt is None or not prompt.strip():
                bad.append(_bad(path, line, "missing_field", "neither prompt_id nor prompt is given", "prompt_id"))
                continue
            pid = _prompt_id_for(prompt)
        if "score" not in row or row["score"] is None or row["score"] == "":
            bad.append(_bad(path, line, "missing_field", "no score", "score"))
            continue
        score = _parse_number(row["score"], allow_bool=True)
        if score is None:
            bad.append(_bad(path, line, "wrong_type", f"score {row['score']!r} is not a number", "score"))
            continue
        if not 0.0 <= score <= 1.0:
            bad.append(_bad(path, line, "score_out_of_range", f"score {score} is not in [0, 1]", "score"))
            continue
        raw_cost = row.get("cost")
        cost = float("nan")
        if raw_cost is not None and raw_cost != "":
            parsed = _parse_number(raw_cost, allow_bool=False)
            if parsed is None or parsed < 0:
                bad.append(_bad(path, line, "wrong_type", f"cost {raw_cost!r} is not a number >= 0 (USD)", "cost"))
                continue
            cost = parsed
        key = (pid, model)
        if key in cells:
            bad.append(_bad(path, line, "duplicate_id",
                            f"prompt_id {pid!r} with model {model!r} already at line {first_line[key]}",
                            "prompt_id"))
            continue
        cells[key] = (score, cost)
        first_line[key] = line
        if not prompt_text.get(pid):  # keep the first non-empty text seen for this prompt_id
            prompt_text[pid] = prompt or ""
        model_order.setdefault(model, None)

    all_bad = sorted(ledger.bad_rows + bad, key=lambda r: r.line)
    if all_bad:
        more = f" ({len(all_bad)} malformed rows in all; the first is shown)" if len(all_bad) > 1 else ""
        raise DataError(f"{all_bad[0].format()}{more}")
    if not cells:
        raise DataError(f"{path}: the outcome table has no rows; it needs one row per (prompt, model).")

    prompt_ids = tuple(prompt_text)
    models = tuple(model_order)
    p_index = {p: i for i, p in enumerate(prompt_ids)}
    m_index = {m: j for j, m in enumerate(models)}
    scores = np.full((len(prompt_ids), len(models)), np.nan)
    costs = np.full_like(scores, np.nan)
    for (pid, model), (score, cost) in cells.items():
        scores[p_index[pid], m_index[model]] = score
        costs[p_index[pid], m_index[model]] = cost
    missing = tuple((prompt_ids[i], models[j]) for i, j in np.argwhere(np.isnan(scores)))
    scores.setflags(write=False)
    costs.setflags(write=False)
    return OutcomeTable(path=str(path), prompt_ids=prompt_ids, prompts=tuple(prompt_text.values()),
                        models=models, scores=scores, costs=costs, missing_cells=missing)


def model_index(table: OutcomeTable, model: str) -> int:
    """Column of `model`; DataError listing the table's models (with a close match) if absent."""
    if model in table.models:
        return table.models.index(model)
    close = difflib.get_close_matches(model, table.models, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DataError(f"{table.path}: model '{model}' is not in the outcome table.{hint} "
                    f"Models: {', '.join(table.models)}.")


def describe_missing(table: OutcomeTable) -> str:
    """One line: how many (prompt, model) cells are missing, per model."""
    if not table.missing_cells:
        return f"all {table.scores.size} (prompt, model) cells present"
    per_model = np.isnan(table.scores).sum(axis=0)
    parts = ", ".join(f"{m}: {int(c)}" for m, c in zip(table.models, per_model, strict=True) if c)
    return f"{len(table.missing_cells)} of {table.scores.size} (prompt, model) cells missing ({parts})"


def strong_weak_columns(table: OutcomeTable, strong: str, weak: str) -> StrongWeakColumns:
    """Weak and strong scores on the prompts that have both; prompts missing either are listed as dropped."""
    if strong == weak:
        raise DataError(f"strong and weak model are both '{strong}'; pick two different models.")
    s, w = model_index(table, strong), model_index(table, weak)
    keep = ~np.isnan(table.scores[:, s]) & ~np.isnan(table.scores[:, w])
    if not keep.any():
        raise DataError(f"{table.path}: no prompt has scores for both '{strong}' and '{weak}'.")
    ids = np.array(table.prompt_ids, dtype=object)
    texts = np.array(table.prompts, dtype=object)
    return StrongWeakColumns(
        prompt_ids=tuple(ids[keep]),
        prompts=tuple(texts[keep]),
        weak_scores=np.array(table.scores[keep, w]),
        strong_scores=np.array(table.scores[keep, s]),
        dropped_prompt_ids=tuple(ids[~keep]),
    )


def complete_subtable(table: OutcomeTable, models: Sequence[str] | None = None,
                      require_costs: bool = False) -> OutcomeTable:
    """The table restricted to `models` (default: all) and to prompts with every such cell present.

    With `require_costs`, a present cell without a cost is a DataError (multi-model metrics need them).
    The dropped cells are not "missing" in the result; compare `len(prompt_ids)` to know how many went.
    """
    names = list(table.models if models is None else models)
    cols = [model_index(table, m) for m in names]
    scores = table.scores[:, cols]
    costs = table.costs[:, cols]
    keep = ~np.isnan(scores).any(axis=1)
    if not keep.any():
        raise DataError(f"{table.path}: no prompt has scores for all of {', '.join(names)}; {describe_missing(table)}.")
    if require_costs and np.isnan(costs[keep]).any():
        i, j = (int(x) for x in np.argwhere(np.isnan(costs[keep]))[0])
        pid = np.array(table.prompt_ids, dtype=object)[keep][i]
        raise DataError(f"{table.path}: prompt_id {pid!r} with model '{names[j]}' has no cost; "
                        f"add a 'cost' (USD) to every row, or pass per-model prices.")
    ids = np.array(table.prompt_ids, dtype=object)[keep]
    texts = np.array(table.prompts, dtype=object)[keep]
    sub_scores, sub_costs = np.array(scores[keep]), np.array(costs[keep])
    sub_scores.setflags(write=False)
    sub_costs.setflags(write=False)
    return OutcomeTable(path=table.path, prompt_ids=tuple(ids), prompts=tuple(texts), models=tuple(names),
                        scores=sub_scores, costs=sub_costs, missing_cells=())
