"""The prompts file: JSONL or CSV with `prompt_id, prompt[, task, reference]`.

Bad rows (missing or empty prompt, repeated prompt_id, wrong types, no reference in reference mode)
are reported with file, line and field through the data-prep `Ledger` and counted by reason; they
are not labeled. A whole-file problem (missing file, unknown suffix, no usable row) is a `DataError`
with a one-line fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from routerforge.data.readers._io import iter_csv, iter_jsonl
from routerforge.data.readers.outcome_tables import prompt_problem
from routerforge.data.report import Ledger
from routerforge.errors import DataError

SOURCE = "prompts"


@dataclass(frozen=True)
class PromptRow:
    prompt_id: str
    prompt: str
    task: str | None
    reference: str | None


def _rows(path: Path, ledger: Ledger) -> Iterator[tuple[int, dict]]:
    if path.suffix == ".csv":
        for line_no, row in iter_csv(path, SOURCE, ledger, required=["prompt_id", "prompt"]):
            yield line_no, {k: (v if v.strip() else None) for k, v in row.items()}
    elif path.suffix in (".jsonl", ".ndjson"):
        yield from iter_jsonl(path, SOURCE, ledger)
    else:
        raise DataError(f"{path}: a prompts file is JSON lines (.jsonl) or CSV (.csv); got '{path.suffix}'.")


def _row_problem(obj: dict, need_reference: bool) -> tuple[str, str, str] | None:
    for name in ("prompt_id", "prompt"):
        if obj.get(name) is None:
            return "missing_field", f"missing {name}", name
    problem = prompt_problem(obj["prompt_id"], obj["prompt"])
    if problem is not None:
        return problem
    if obj.get("task") is not None and not isinstance(obj["task"], str):
        return "wrong_type", f"task must be a string, got {obj['task']!r}", "task"
    reference = obj.get("reference")
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, (str, int, float))):
        return "wrong_type", f"reference must be a string or a number, got {reference!r}", "reference"
    if need_reference and not str(reference or "").strip():
        return "missing_field", "judge.mode reference needs a `reference` for every prompt", "reference"
    return None


def read_prompts(path_str: str, ledger: Ledger, max_prompts: int | None = None,
                 need_reference: bool = False) -> list[PromptRow]:
    """The valid prompts in file order (the first `max_prompts` of them)."""
    path = Path(path_str)
    if not path.is_file():
        raise DataError(f"prompts file not found: {path}; set `prompts` to a JSONL or CSV file with "
                        f"prompt_id, prompt[, task, reference].")
    out: list[PromptRow] = []
    seen: set[str] = set()
    for line_no, obj in _rows(path, ledger):
        problem = _row_problem(obj, need_reference)
        if problem is None and str(obj["prompt_id"]) in seen:
            problem = ("duplicate_id", f"prompt_id {obj['prompt_id']} repeated", "prompt_id")
        if problem is not None:
            ledger.bad(SOURCE, str(path), line_no, *problem)
            continue
        seen.add(str(obj["prompt_id"]))
        ledger.count(SOURCE, "read", kept=1)
        reference = obj.get("reference")
        out.append(PromptRow(prompt_id=str(obj["prompt_id"]), prompt=obj["prompt"], task=obj.get("task"),
                             reference=None if reference is None else str(reference)))
        if max_prompts is not None and len(out) >= max_prompts:
            break
    if not out:
        raise DataError(f"{path}: no usable prompt (every row was reported above); each row needs a prompt_id "
                        f"and a non-empty prompt.")
    return out
