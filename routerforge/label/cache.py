"""The call cache: every finished call, keyed by what determines its answer.

Key: sha256 over (endpoint kind, model id [+ local model fingerprint], messages, generation params,
template version). A re-run with the same key reads the stored reply and calls nothing; a changed
prompt, sampling setting, model or template misses. The endpoint URL is not in the key (the same
model behind another URL, e.g. a restarted local server, is the same model), and the API key never
is: only the request content and the reply are stored.

SQLite in WAL mode with `synchronous=FULL`: each reply is committed (fsynced) before it counts, so
a SIGKILL loses at most the calls that were in flight, never a recorded one, and never leaves a torn
row (group commit, see `CallCache`). We use SQLite (stdlib) rather than an append-only JSONL so that
lookups by key stay O(log n) and a partial last write cannot exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
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
    """A SQLite file of finished calls.

    Reads run on the caller's thread; writes go to one writer thread with its own connection and are
    group-committed: the replies that arrive while a commit is being fsynced are committed together
    in the next transaction (one fsync for the batch), and `put` returns only once its row is durable.
    One fsync per call would cap a run at ~200 calls/s on a typical disk and stall the event loop.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-cache")
        self._writer_db: sqlite3.Connection | None = None  # created on the writer thread
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._flushing: asyncio.Task | None = None

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a usable label cache ({exc}); point cache_path at a new file.") from None
        return db

    def get(self, key: str) -> CachedReply | None:
        row = self._db.execute("SELECT text, input_tokens, output_tokens, created FROM calls WHERE key = ?",
                               (key,)).fetchone()
        return None if row is None else CachedReply(*row)

    def _write_batch(self, rows: list[tuple]) -> list[CachedReply]:
        """On the writer thread: one transaction for the batch, then the stored rows (first reply wins)."""
        if self._writer_db is None:
            self._writer_db = self._connect()
        db = self._writer_db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [CachedReply(*db.execute("SELECT text, input_tokens, output_tokens, created FROM calls "
                                        "WHERE key = ?", (row[0],)).fetchone()) for row in rows]

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                stored = await loop.run_in_executor(self._writer, self._write_batch, [row for row, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting put
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), reply in zip(batch, stored, strict=True):
                future.set_result(reply)

    async def put(self, key: str, model_id: str, template_version: str, text: str, input_tokens: int,
                  output_tokens: int) -> CachedReply:
        """Record a reply; returns once it is committed (a concurrent duplicate key keeps the first reply)."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((key, model_id, template_version, text, input_tokens, output_tokens,
                               round(time.time(), 3)), future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())
        return await future

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        def close_writer() -> None:
            if self._writer_db is not None:
                self._writer_db.close()

        self._writer.submit(close_writer).result()
        self._writer.shutdown()
        self._db.close()
