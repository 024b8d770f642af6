"""Line-exact file iteration shared by the readers.

Each helper yields ``(line_number, record)`` with 1-based physical line numbers and reports rows it
cannot parse (invalid JSON, non-UTF-8 bytes, a CSV row with the wrong columns) to the ledger with
their file and line, instead of raising. Whole-file problems (missing file, empty glob, unreadable
header) raise `DataError` with a one-line fix.

Gzip: a file whose name ends in ``.gz`` is decompressed on the fly by every helper here (``x.jsonl.gz``
reads as ``x.jsonl``; line numbers are those of the decompressed text). `data_suffix` gives the format
suffix without the ``.gz`` and `data_stem` the name without both, for readers that dispatch on them.

Hub datasets: `source_inputs` gives a source's inputs, local files or one pinned Hub split
(`routerforge.data.hub_source.HubInput`); every helper here takes either. A Hub split's rows come
from `datasets` already parsed (typed values, no lines): the row number stands in for the line, and
`iter_csv` turns values back into CSV cell text so the CSV readers validate them the same way.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from routerforge.data.hub_source import HubInput, resolve_hub_source
from routerforge.data.report import Ledger
from routerforge.errors import DataError

# Kaggle / RouteLLM CSVs carry full model responses; the default 128 KiB field limit is too small.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def expand_paths(pattern: str, source: str) -> list[Path]:
    """Sorted files matching `pattern` (a path or glob); DataError if none."""
    matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not matches:
        hint = "check the path (relative to the working directory)" if not glob.has_magic(pattern) else \
            "the glob matched no file"
        raise DataError(f"source '{source}': no file at '{pattern}': {hint}.")
    return matches


def source_inputs(src) -> list[Path | HubInput]:
    """The inputs of a `SourceConfig`: its files (sorted; DataError if none) or its pinned Hub split."""
    if src.hub:
        return [resolve_hub_source(src)]
    return expand_paths(src.path, src.name)


def _csv_cell(value: object) -> str:
    """A parsed value as the CSV cell it was read from (None: an empty cell)."""
    return "" if value is None else str(value)


def is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def data_suffix(path: Path) -> str:
    """The format suffix, ignoring a trailing .gz: 'x.jsonl.gz' -> '.jsonl'."""
    return Path(path.stem).suffix if is_gzip(path) else path.suffix


def data_stem(path: Path) -> str:
    """The name without its format suffix and a trailing .gz: 'mmlu_anatomy.csv.gz' -> 'mmlu_anatomy'."""
    return Path(path.stem).stem if is_gzip(path) else path.stem


def open_bytes(path: Path) -> BinaryIO:
    """The file's (decompressed, for .gz) bytes as a binary stream."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def read_bytes(path: Path) -> bytes:
    """All (decompressed, for .gz) bytes; a corrupt gzip stream is a DataError naming the file."""
    try:
        with open_bytes(path) as fh:
            return fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read the file ({exc}); check that it is complete"
                        + (" and a valid gzip file" if is_gzip(path) else "") + ".") from None


def _decoded_lines(path: Path, source: str, ledger: Ledger) -> Iterator[tuple[int, str]]:
    """Yield (line_no, text) of each non-blank line; lines that are not UTF-8 are reported and skipped."""
    with open_bytes(path) as fh:
        lines = enumerate(fh, start=1)
        line_no = 0
        while True:
            try:
                line_no, raw = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
                raise DataError(f"{path}:{line_no + 1}: cannot read past line {line_no} ({exc}); the gzip "
                                f"file is truncated or corrupt: download or compress it again.") from None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                ledger.bad(source, str(path), line_no, "not_utf8", f"byte {exc.start}: {exc.reason}")
                continue
            if text.strip():
                yield line_no, text


def iter_jsonl(path: Path, source: str, ledger: Ledger) -> Iterator[tuple[int, dict]]:
    """Yield (line_no, object) of a JSON-lines file; bad lines are reported, not raised."""
    if isinstance(path, HubInput):
        yield from path.rows()
        return
    for line_no, text in _decoded_lines(path, source, ledger):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            ledger.bad(source, str(path), line_no, "invalid_json", exc.msg + f" at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            ledger.bad(source, str(path), line_no, "not_an_object", f"got {type(obj).__name__}")
            continue
        if "\\ud" in text.lower() and not _utf8_encodable(obj):
            # A lone surrogate escape ("\ud800") parses as JSON but cannot be written as UTF-8 (Arrow).
            ledger.bad(source, str(path), line_no, "not_utf8", "lone UTF-16 surrogate escape in a string")
            continue
        yield line_no, obj


def _utf8_encodable(obj: object) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_json(path: Path, source: str) -> object:
    """A whole-file JSON document (LLMRouter, ZeroEval, price tables); DataError with the position if invalid.

    A Hub split is its list of rows (what a JSON array of objects becomes on the Hub)."""
    if isinstance(path, HubInput):
        return [row for _, row in path.rows()]
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 at byte {exc.start}; re-encode the file as UTF-8.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
                        f"source '{source}' expects one JSON document.") from None


def iter_csv(path: Path, source: str, ledger: Ledger, required: list[str] | None = None
             ) -> Iterator[tuple[int, dict]]:
    """Yield (line_no, row) of a CSV with a header; `line_no` is the physical line the row starts on.

    Quoted fields may span lines (RouteLLM prompts do), so the line number is tracked from the
    reader's position rather than by counting rows. Rows with a wrong number of columns and
    non-UTF-8 files are reported.
    """
    if isinstance(path, HubInput):
        yield from _hub_csv_rows(path, required)
        return
    raw = read_bytes(path)
    bad_lines: set[int] = set()
    try:
        text = raw.decode("utf-8-sig")  # -sig: Excel writes a byte-order mark before the header
    except UnicodeDecodeError:
        # Find every line with invalid bytes; the rows spanning them are reported below and skipped,
        # never yielded with replacement characters.
        for n, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines.add(n)
        text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty CSV file; source '{source}' needs a header row.") from None
    missing = [c for c in (required or []) if c not in header]
    if missing:
        raise DataError(f"{path}:1: CSV header lacks column(s) {', '.join(missing)}; header is {header}.")
    prev_end = reader.line_num
    for row in reader:
        start = prev_end + 1
        prev_end = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        spanned = sorted(b for b in bad_lines if start <= b <= prev_end)
        if spanned:
            ledger.bad(source, str(path), start, "not_utf8", f"invalid UTF-8 on line {spanned[0]}")
            continue
        if len(row) != len(header):
            ledger.bad(source, str(path), start, "invalid_csv", f"{len(row)} columns, header has {len(header)}")
            continue
        yield start, dict(zip(header, row, strict=True))


_WS_CHARS = " \t\r\n"


def iter_json_array(path: Path, source: str) -> Iterator[tuple[int, object]]:
    """Yield (line_no, item) of a file holding one JSON array, line_no = the line the item starts on.

    `json.load` would give the items but not where they are; decoding them one by one with
    `JSONDecoder.raw_decode` keeps each item's offset, so a bad item is reported at its real line
    (pretty-printed arrays such as AlpacaEval's annotations put one field per line). A file that is not
    one valid JSON array is a DataError at the position where parsing stopped: nothing after a syntax
    error can be told apart reliably. A Hub split yields its rows.
    """
    if isinstance(path, HubInput):
        yield from path.rows()
        return
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 at byte {exc.start}; re-encode the file as UTF-8.") from None
    decoder = json.JSONDecoder()

    def fail(pos: int, what: str) -> DataError:
        line = text.count("\n", 0, pos) + 1
        return DataError(f"{path}:{line}: {what}; source '{source}' expects one JSON array of objects.")

    pos = len(text) - len(text.lstrip(_WS_CHARS + "\ufeff"))
    if not text.startswith("[", pos):
        raise fail(pos, "the file does not start with '['")
    pos += 1
    line, counted_to = 1, 0
    while True:
        while pos < len(text) and text[pos] in _WS_CHARS:
            pos += 1
        if text.startswith("]", pos):
            return
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, f"invalid JSON ({exc.msg})") from None
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        yield line, item
        pos = end
        while pos < len(text) and text[pos] in _WS_CHARS:
            pos += 1
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            raise fail(pos, "expected ',' or ']' after an array item")


def _hub_csv_rows(hub: HubInput, required: list[str] | None) -> Iterator[tuple[int, dict]]:
    for row_no, row in hub.rows():
        if row_no == 1:
            missing = [c for c in (required or []) if c not in row]
            if missing:
                raise DataError(f"{hub}: the dataset lacks column(s) {', '.join(missing)}; it has {list(row)}.")
        yield row_no, {k: _csv_cell(v) for k, v in row.items()}
