"""Read the records of an offline W&B run file (`offline-run-*/run-<id>.wandb`) without a W&B server.

The file is W&B's append-only transaction log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
LevelDB-log-style 32 KiB blocks of chunks (crc32 u32, length u16, type u8: FULL=1 FIRST=2 MIDDLE=3
LAST=4); each complete record is a `wandb_internal_pb2.Record` protobuf. `wandb sync` uploads exactly
these records later, so reading the history from them checks that the metrics were kept locally.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_BYTES = 32 * 1024
CHUNK_HEADER_BYTES = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:7]!r})")
    records, pending, offset = [], b"", len(HEADER)
    while offset + CHUNK_HEADER_BYTES <= len(data):
        left_in_block = BLOCK_BYTES - offset % BLOCK_BYTES
        if left_in_block < CHUNK_HEADER_BYTES:  # block tail padding
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + CHUNK_HEADER_BYTES])
        payload = data[offset + CHUNK_HEADER_BYTES:offset + CHUNK_HEADER_BYTES + length]
        offset += CHUNK_HEADER_BYTES + length
        if kind == 0 and length == 0:  # zero padding at the end of the file
            break
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_rows(path: Path) -> list[dict]:
    """The logged rows ({key: value}), in order, e.g. {"train/loss": 0.69, "_step": 3, ...}."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows
