"""On-disk embedding cache: one SQLite file of float32 rows keyed by sha256(encoder id, revision, settings, text).

Why SQLite rather than our own shard files: a committed transaction is atomic and survives the
writer being killed at any instant (the journal rolls a half-written batch back on the next open),
WAL mode lets any number of readers run while one process writes, and a primary-key lookup of a
few thousand keys is milliseconds. Rows are raw little-endian float32 (4 bytes per dimension, the
size of a .npy row) in a WITHOUT ROWID table; each row also carries a CRC32 of key + bytes, so a
row damaged on disk is reported as a miss and re-embedded, never returned.

The cache is append-only (INSERT OR IGNORE): a key, once written, always maps to the same vector,
which is what lets a multi-process run trust that a hit seen by one rank is a hit for all ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routerforge.data.records import text_hash
from routerforge.encoders.base import EncoderError

logger = logging.getLogger(__name__)

DB_FILENAME = "embeddings.sqlite3"
SCHEMA_VERSION = "1"
_LOOKUP_CHUNK = 900  # keys per SELECT ... IN (...), under SQLite's historic 999-parameter limit
_BUSY_TIMEOUT_S = 120.0


def cache_key(encoder_id: str, revision: str | None, settings: str, text: str) -> str:
    """Hex sha256 of (encoder id, revision, settings, sha256 of the text): the cache's key for one text."""
    payload = json.dumps([encoder_id, revision, settings, text_hash(text)], ensure_ascii=True)
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def _row_crc(key: bytes, vector: bytes) -> int:
    return zlib.crc32(vector, zlib.crc32(key))


class EmbeddingCache:
    """`lookup(keys) -> {key: vector}` and `store(keys, matrix)` over `<cache_dir>/embeddings.sqlite3`."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / DB_FILENAME
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self.corrupt_rows_skipped = 0

    # -- connection -------------------------------------------------------------------------------
    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None  # a connection inherited through fork() must not be used (SQLite rule)
        if not create and not self.path.exists():
            return None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            self._set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: a killed process never corrupts the file
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, dim INTEGER NOT NULL, "
                         "crc32 INTEGER NOT NULL, vector BLOB NOT NULL) WITHOUT ROWID")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise EncoderError(f"embedding cache {self.path} is unreadable ({exc}); delete it (it is only a cache) "
                               "or point encoder.cache_dir elsewhere.") from None
        except OSError as exc:
            raise EncoderError(f"embedding cache directory {self.cache_dir} cannot be used ({exc}); set "
                               "encoder.cache_dir to a writable directory.") from None
        if version != SCHEMA_VERSION:
            conn.close()
            raise EncoderError(f"embedding cache {self.path} has schema version {version}, this RouterForge writes "
                               f"{SCHEMA_VERSION}; delete it or set encoder.cache_dir to a new directory.")
        self._conn, self._pid = conn, os.getpid()
        return conn

    @staticmethod
    def _set_wal(conn: sqlite3.Connection) -> None:
        # Switching the journal mode needs a moment of exclusive access, which the busy timeout does not
        # cover; two processes opening a fresh cache at once can collide, so retry briefly.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def create(self) -> None:
        """Create the cache file now (idempotent); `store` does this itself when needed."""
        self._connect(create=True)

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    # -- API --------------------------------------------------------------------------------------
    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `keys` (hex strings); missing or damaged rows are simply absent."""
        conn = self._connect(create=False)
        if conn is None or not keys:
            return {}
        hits: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = [bytes.fromhex(k) for k in unique[start:start + _LOOKUP_CHUNK]]
            marks = ",".join("?" * len(chunk))
            try:
                rows = conn.execute(f"SELECT key, dim, crc32, vector FROM embeddings WHERE key IN ({marks})",
                                    chunk).fetchall()
            except sqlite3.DatabaseError as exc:
                raise EncoderError(f"embedding cache {self.path} could not be read ({exc}); delete it (it is "
                                   "only a cache) or point encoder.cache_dir elsewhere.") from None
            for key, dim, crc, vector in rows:
                if len(vector) != 4 * dim or _row_crc(key, vector) != crc:
                    self.corrupt_rows_skipped += 1
                    logger.warning("embedding cache %s: damaged row %s ignored (it will be re-embedded)",
                                   self.path, key.hex()[:12])
                    continue
                hits[key.hex()] = np.frombuffer(vector, dtype="<f4")
        return hits

    def store(self, keys: Sequence[str], matrix: np.ndarray) -> None:
        """Add rows (row i under keys[i]) in one atomic transaction; keys already present are left as they are."""
        matrix = np.ascontiguousarray(matrix, dtype="<f4")
        if matrix.ndim != 2 or matrix.shape[0] != len(keys):
            raise ValueError(f"store: {len(keys)} keys but a matrix of shape {matrix.shape}")
        if not len(keys):
            return
        dim = int(matrix.shape[1])
        rows = []
        for key_hex, row in zip(keys, matrix, strict=True):
            key, vector = bytes.fromhex(key_hex), row.tobytes()
            rows.append((key, dim, _row_crc(key, vector), vector))
        conn = self._connect(create=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise EncoderError(f"embedding cache {self.path} could not be written ({exc}); check free disk space "
                               "and permissions, or set encoder.cache_dir elsewhere.") from None

    def __len__(self) -> int:
        conn = self._connect(create=False)
        return 0 if conn is None else int(conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
