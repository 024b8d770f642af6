"""Chatbot Arena votes in the lmarena "arena-human-preference" schemas (100k and 140k releases).

What the dataset cards and files say (looked up for this reader; the files are Parquet on the Hub,
and a JSON-lines export — e.g. `datasets.Dataset.to_json` — carries the same fields):

* **lmarena-ai/arena-human-preference-100k** (`data/arena-explorer-preference-100k.parquet`, votes
  of Jun-Aug 2024): `question_id`, `model_a`, `model_b`, `winner` (model_a | model_b | tie |
  tie (bothbad)), `conversation_a` / `conversation_b` (lists of ``{role, content}`` with `content` a
  string), `turn`, `anony`, `language` (e.g. "English"), `tstamp` (Unix seconds), `conv_metadata`,
  `is_code`, `is_refusal`, `dedup_tag`, `category_tag`, `judge_hash`.
* **lmarena-ai/arena-human-preference-140k** (text arena, 2025): `id` (a UUID), `model_a`,
  `model_b`, `winner` (model_a | model_b | tie | both_bad), `evaluation_session_id`,
  `evaluation_order`, `conversation_a` / `conversation_b` (lists of ``{role, content}`` where
  `content` is a list of parts ``{type, text, image, mimeType}``), `full_conversation`,
  `conv_metadata`, `category_tag`, `language` (e.g. "en"), `is_code`, `timestamp` (ISO string).
  There is no `anony` column.

Mapping to a preference pair:

* the original id is `id` when the row has one, else `question_id`;
* prompt = the first user message of `conversation_a` (both sides share it): its string content, or
  the text parts of a multi-part content joined by newlines (image parts are skipped; a first
  message without any text is `empty_prompt`);
* winner: "tie (bothbad)" (100k) and "both_bad" (140k) both become `tie_bothbad`;
* `anony_only`: keeps rows whose `anony` is true; rows without the field (all of 140k) cannot be
  shown to be anonymous and are dropped as `not_anonymous`;
* source_line is the physical line for JSON lines and the 1-based row number for Parquet (Parquet
  has no lines); a repeated id in a file is `duplicate_id`. Self-battles and exact duplicate rows are
  left to the clean stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from routerforge.data.config import SourceConfig
from routerforge.data.readers._io import data_suffix, is_gzip, iter_jsonl, read_bytes, source_inputs
from routerforge.data.readers.arena_kaggle import utf8_encodable
from routerforge.data.records import make_pair
from routerforge.data.report import Ledger
from routerforge.errors import DataError

HP_WINNERS = {"model_a": "model_a", "model_b": "model_b", "tie": "tie", "tie (bothbad)": "tie_bothbad",
              "both_bad": "tie_bothbad"}
# Columns read from Parquet (the others — responses, metadata, embeddings — are never loaded).
_WANTED = ["id", "question_id", "model_a", "model_b", "winner", "conversation_a", "language", "anony"]
_PARQUET_BATCH_ROWS = 512


def first_user_text(conversation: object) -> str | None:
    """Text of the first user message; None when `conversation` is not a list of {role, content} dicts."""
    if not isinstance(conversation, list):
        return None
    for message in conversation:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [part["text"] for part in content
                     if isinstance(part, dict) and part.get("type", "text") == "text"
                     and isinstance(part.get("text"), str)]
            return "\n".join(texts)
        return None
    return None


def _iter_parquet(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row) of a Parquet file, reading only the columns this reader needs."""
    import pyarrow as pa  # a dependency of `datasets`; imported here so JSONL users never load it
    import pyarrow.parquet as pq

    try:
        # Parquet needs random access: a gzipped file is decompressed into memory first.
        pf = pq.ParquetFile(pa.BufferReader(read_bytes(path)) if is_gzip(path) else path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({exc}); source '{source}'.") from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in ("model_a", "model_b", "winner", "conversation_a") if c not in names]
    if not ({"id", "question_id"} & names):
        missing.insert(0, "id (or question_id)")
    if missing:
        raise DataError(f"{path}: Parquet file lacks column(s) {', '.join(missing)}; source '{source}' "
                        f"expects the lmarena arena-human-preference schema.")
    columns = [c for c in _WANTED if c in names]
    row_no = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row


def read_arena_hp(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        rows = _iter_parquet(path, src.name) if data_suffix(path) == ".parquet" else iter_jsonl(path, src.name, ledger)
        seen_ids: set[str] = set()
        for line_no, obj in rows:

            def bad(reason: str, detail: str, field: str | None = None, _f: str = file, _l: int = line_no) -> None:
                ledger.bad(src.name, _f, _l, reason, detail, field)

            id_field = "id" if obj.get("id") is not None else "question_id"
            missing = [k for k in (id_field, "model_a", "model_b", "winner", "conversation_a") if obj.get(k) is None]
            if missing:
                bad("missing_field", f"missing {', '.join(missing)}", missing[0])
                continue
            row_id, model_a, model_b, winner = obj[id_field], obj["model_a"], obj["model_b"], obj["winner"]
            if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
                bad("wrong_type", f"{id_field} must be a string, got {type(row_id).__name__}", id_field)
                continue
            if not isinstance(model_a, str) or not isinstance(model_b, str):
                bad("wrong_type", "model_a and model_b must be strings", "model_a")
                continue
            if winner not in HP_WINNERS:
                bad("unknown_winner", f"winner {winner!r}", "winner")
                continue
            prompt = first_user_text(obj["conversation_a"])
            if prompt is None:
                bad("wrong_type", "conversation_a must be a list of {role, content} messages with a user message",
                    "conversation_a")
                continue
            if not prompt.strip():
                bad("empty_prompt", "the first user message has no text", "conversation_a")
                continue
            if not utf8_encodable(prompt):
                bad("not_utf8", "the prompt holds a lone UTF-16 surrogate escape", "conversation_a")
                continue
            if str(row_id) in seen_ids:
                bad("duplicate_id", f"{id_field} {row_id} repeated", id_field)
                continue
            seen_ids.add(str(row_id))
            if src.anony_only and obj.get("anony") is not True:
                ledger.count(src.name, "read", dropped={"not_anonymous": 1})
                continue
            ledger.count(src.name, "read", kept=1)
            language = obj.get("language") if isinstance(obj.get("language"), str) else None
            yield make_pair(prompt=prompt, model_a=model_a, model_b=model_b, winner=HP_WINNERS[winner],
                            source=src.name, kind="arena", weight=src.weight, language=language,
                            source_file=file, source_line=line_no, source_id=str(row_id))
            n_valid += 1
            if src.max_rows is not None and n_valid >= src.max_rows:
                return
