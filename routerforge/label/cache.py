"""The call cache: every finished call, keyed by what determines its answer.

Key: sha256 over (endpoint kind, model id [+ local model fingerprint], messages, generation params,
template version). A re-run with the same key reads the stored reply and calls nothing; a changed
prompt, sampling setting, model or template misses. The endpoint URL is not in the key (the same
model behind another URL, e.g. a restarted local server, is the same model), and the API key never
is: only the request content and the reply are stored.

SQLite in WAL mode with `synchronous=FULL`: each reply is committed (fsynced) before it counts, so
a SIGKILL loses at most the calls that were in flight, never a recorded one, and never leaves a torn
row. We use SQLite (stdlib) rather than an append-only JSONL so that lookups by key stay O(log n)
and a partial last write cannot exist.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from routerforge.errors import DataError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    template_version TEXT NOT NULL,
    text TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class CachedReply:
    text: str
    input_tokens: int
    output_tokens: int
    created: float  # unix seconds of the original call (FastChat files' tstamp)


def call_key(kind: str, model_id: str, messages: list[dict], generation: dict, template_version: str) -> str:
    material = json.dumps({"kind": kind, "model": model_id, "messages": messages, "generation": generation,
                           "template": template_version}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class CallCache:
    """A SQLite file of finished calls (one writer: the labeling process's event loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a usable label cache ({exc}); point cache_path at a new file.") from None

    def get(self, key: str) -> CachedReply | None:
        row = self._db.execute("SELECT text, input_tokens, output_tokens, created FROM calls WHERE key = ?",
                               (key,)).fetchone()
        return None if row is None else CachedReply(*row)

    def put(self, key: str, model_id: str, template_version: str, text: str, input_tokens: int,
            output_tokens: int) -> CachedReply:
        created = round(time.time(), 3)
        # INSERT OR IGNORE: a key is answered once; a concurrent duplicate keeps the first reply.
        self._db.execute("INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (key, model_id, template_version, text, input_tokens, output_tokens, created))
        return self.get(key)  # type: ignore[return-value]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self._db.close()
