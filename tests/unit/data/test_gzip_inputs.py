"""Every reader reads gzipped inputs as they are; bad rows keep their file and line.

Inputs are real rows (the bundled MMLU-Pro outcome sample, RouteLLM MMLU, the Arena battles, the LLMRouter
sample) and the reader fixtures, gzipped in the test; each compressed read must equal the plain read row
for row.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from readers_testlib import DATA, FIXTURES, copy_lines, edit_jsonl_line, read, read_input, where

from routerforge.errors import DataError

MMLU_PRO = Path("/work/shared/data/mmlu_pro/outcomes_ori_mmlu.jsonl.gz")
_SAMPLE_MMLU_PRO = DATA / "mmlu_pro" / "outcomes_ori_mmlu_sample.jsonl.gz"


def gzip_copy(src: Path, dst: Path) -> Path:
    with open(src, "rb") as fin, gzip.open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return dst


def without_file(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "source_file"} for r in rows]


def test_gzipped_outcomes_jsonl_reads_like_the_plain_file_and_reports_the_bad_row(tmp_path):
    plain = tmp_path / "outcomes.jsonl"
    copy_lines(mmlu_pro_sample_plain(tmp_path), plain, 40)
    edit_jsonl_line(plain, 3, lambda o: {**o, "score": 1.5})  # a bad row on line 3
    packed = gzip_copy(plain, tmp_path / "outcomes.jsonl.gz")
    rows_plain, ledger_plain = read("outcomes", plain)
    rows_gz, ledger_gz = read("outcomes", packed)
    assert len(rows_gz) == 39 and without_file(rows_gz) == without_file(rows_plain)
    assert {r["source_file"] for r in rows_gz} == {str(packed)}
    assert where(ledger_gz.bad_rows) == [("outcomes.jsonl.gz", 3, "score", "score_out_of_range")]
    assert read_input(ledger_gz) == read_input(ledger_plain) == 40


def mmlu_pro_sample_plain(tmp_path: Path) -> Path:
    """The bundled MMLU-Pro sample, decompressed (to edit lines of it)."""
    out = tmp_path / "mmlu_pro_sample.jsonl"
    out.write_bytes(gzip.decompress(_SAMPLE_MMLU_PRO.read_bytes()))
    return out


def test_gzipped_csv_keeps_task_from_the_name_and_bad_row_lines(tmp_path):
    src = DATA / "routellm" / "mmlu" / "mmlu_anatomy.csv"
    plain = tmp_path / "mmlu_anatomy.csv"
    text = src.read_text(encoding="utf-8").split("\n")
    # Line 8 opens the second question; make its strong-model cell unparseable.
    assert text[7].startswith('"')
    lines = text[:19]  # three questions (lines 2-7, 8-13, 14-19)
    last = lines[12].rsplit(",", 1)
    lines[12] = last[0] + ",Maybe"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    packed = gzip_copy(plain, tmp_path / "mmlu_anatomy.csv.gz")
    rows_plain, _ = read("routellm_csv", plain)
    rows_gz, ledger = read("routellm_csv", packed)
    assert without_file(rows_gz) == without_file(rows_plain) and len(rows_gz) == 5
    assert {r["task"] for r in rows_gz} == {"mmlu/anatomy"}  # not "mmlu/anatomy.csv"
    assert where(ledger.bad_rows) == [("mmlu_anatomy.csv.gz", 8, "gpt-4-1106-preview", "wrong_type")]


def test_gzipped_json_documents_and_other_formats(tmp_path):
    for kind, src in (("llmrouter_json", DATA / "llmrouter" / "dcrouter_test_sample.json"),
                      ("arena_kaggle", FIXTURES / "arena_kaggle_55k_sample.csv"),
                      ("arena_hp", FIXTURES / "arena_hp_100k_sample.jsonl"),
                      ("arena_conversations", DATA / "chatbot_arena" / "arena_battles_1k.jsonl")):
        kw = {"max_rows": 50} if kind == "arena_conversations" else {}
        rows_plain, _ = read(kind, src, **kw)
        rows_gz, ledger = read(kind, gzip_copy(src, tmp_path / (src.name + ".gz")), **kw)
        assert rows_gz and without_file(rows_gz) == without_file(rows_plain), kind
        assert ledger.bad_rows == [], kind


def test_truncated_gzip_is_one_clear_error(tmp_path):
    packed = gzip_copy(FIXTURES / "arena_hp_100k_sample.jsonl", tmp_path / "hp.jsonl.gz")
    packed.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"hp\.jsonl\.gz:\d+: .*truncated or corrupt"):
        read("arena_hp", packed)
    csv_gz = gzip_copy(FIXTURES / "arena_kaggle_55k_sample.csv", tmp_path / "k.csv.gz")
    csv_gz.write_bytes(csv_gz.read_bytes()[:200])
    with pytest.raises(DataError, match=r"k\.csv\.gz: cannot read the file"):
        read("arena_kaggle", csv_gz)


def test_mmlu_pro_sample_is_the_head_of_the_published_table():
    rows, ledger = read("outcomes", _SAMPLE_MMLU_PRO)
    assert ledger.bad_rows == [] and len(rows) == 31 * 10
    assert len({r["model"] for r in rows}) == 31 and len({r["source_id"] for r in rows}) == 10
    assert all(r["task"].startswith("mmlu-pro/") for r in rows)
    if MMLU_PRO.is_file():  # the full table, where the machine has it: the sample is its first 310 lines
        head, _ = read("outcomes", MMLU_PRO, max_rows=310)
        assert without_file(head) == without_file(rows)
        assert json.loads(gzip.decompress(_SAMPLE_MMLU_PRO.read_bytes()).split(b"\n")[0])["prompt_id"] \
            == head[0]["source_id"]
