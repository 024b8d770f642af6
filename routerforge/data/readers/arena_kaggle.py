"""Chatbot Arena battles in the Kaggle "LMSYS - Chatbot Arena Human Preference Predictions" schema.

The public 55k training set (kaggle.com/competitions/lmsys-chatbot-arena, mirrored as
lmarena-ai/arena-human-preference-55k `train.csv`) is one CSV with a header:

    id, model_a, model_b, prompt, response_a, response_b, winner_model_a, winner_model_b, winner_tie

`prompt` / `response_a` / `response_b` are JSON-encoded lists of strings, one per conversation turn
(responses can hold ``null``). The three `winner_*` columns are one-hot 0/1 labels.

Mapping to a preference pair:

* prompt = the first element of the decoded `prompt` list (the router routes on the first user turn,
  as `arena.py` does); a list that is not valid JSON is `invalid_json`, one whose first element is
  not a string is `wrong_type`, a null or blank first turn is `empty_prompt`;
* winner = model_a / model_b / tie from the one column that is 1. The Kaggle labels fold Arena's
  "tie" and "tie (bothbad)" into the single `winner_tie` column, so `tie_bothbad` never comes out of
  this source. A cell other than 0 or 1 is `wrong_type`; zero or several 1s is `unknown_winner`;
* `id` is the original id (`duplicate_id` when it repeats in the same file). The CSV has no language
  column: `language` is None. Self-battles and exact duplicate rows are left to the clean stage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from routerforge.data.config import SourceConfig
from routerforge.data.readers._io import iter_csv, source_inputs
from routerforge.data.records import make_pair
from routerforge.data.report import Ledger

KAGGLE_COLUMNS = ["id", "model_a", "model_b", "prompt", "winner_model_a", "winner_model_b", "winner_tie"]
ONE_HOT_WINNERS = {"winner_model_a": "model_a", "winner_model_b": "model_b", "winner_tie": "tie"}


def utf8_encodable(text: str) -> bool:
    """False for text with lone surrogates (a JSON ``\\udXXX`` escape without its pair): Arrow can't store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_arena_kaggle(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        seen_ids: set[str] = set()
        for line_no, row in iter_csv(path, src.name, ledger, required=KAGGLE_COLUMNS):

            def bad(reason: str, detail: str, field: str | None = None, _f: str = file, _l: int = line_no) -> None:
                ledger.bad(src.name, _f, _l, reason, detail, field)

            row_id, model_a, model_b = row["id"].strip(), row["model_a"].strip(), row["model_b"].strip()
            if not row_id:
                bad("missing_field", "empty id", "id")
                continue
            if not model_a or not model_b:
                bad("missing_field", "empty model name", "model_a" if not model_a else "model_b")
                continue
            # One-hot label: every cell must be 0 or 1, and exactly one must be 1.
            cells = {col: row[col].strip() for col in ONE_HOT_WINNERS}
            not_binary = [col for col, v in cells.items() if v not in ("0", "1")]
            if not_binary:
                bad("wrong_type", f"{not_binary[0]} is {cells[not_binary[0]]!r}, expected 0 or 1", not_binary[0])
                continue
            ones = [col for col, v in cells.items() if v == "1"]
            if len(ones) != 1:
                bad("unknown_winner", f"{len(ones)} of winner_model_a/winner_model_b/winner_tie are 1, "
                    "expected exactly one", "winner_model_a")
                continue
            try:
                turns = json.loads(row["prompt"])
            except json.JSONDecodeError as exc:
                bad("invalid_json", f"prompt is not a JSON list: {exc.msg} at column {exc.colno}", "prompt")
                continue
            if not isinstance(turns, list) or not turns:
                bad("wrong_type", f"prompt must be a non-empty JSON list of strings, got {type(turns).__name__}",
                    "prompt")
                continue
            prompt = turns[0]
            if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
                bad("empty_prompt", "the first prompt turn is null or blank", "prompt")
                continue
            if not isinstance(prompt, str):
                bad("wrong_type", f"the first prompt turn is a {type(prompt).__name__}, expected a string", "prompt")
                continue
            if not utf8_encodable(prompt):
                bad("not_utf8", "the prompt holds a lone UTF-16 surrogate escape", "prompt")
                continue
            if row_id in seen_ids:
                bad("duplicate_id", f"id {row_id} repeated", "id")
                continue
            seen_ids.add(row_id)
            ledger.count(src.name, "read", kept=1)
            yield make_pair(prompt=prompt, model_a=model_a, model_b=model_b, winner=ONE_HOT_WINNERS[ones[0]],
                            source=src.name, kind="arena", weight=src.weight, language=None,
                            source_file=file, source_line=line_no, source_id=row_id)
            n_valid += 1
            if src.max_rows is not None and n_valid >= src.max_rows:
                return
