"""Arena-style readers on real and schema fixtures, plus the bad-input matrix every reader shares.

Real data: data/chatbot_arena/arena_battles_1k.jsonl (FastChat arena_hard_1k question_original.jsonl).
Schema fixtures (tests/fixtures, see reader_fixtures.md): Kaggle 55k CSV rows and lmarena 100k/140k rows.
Bad inputs are built by copying real lines into tmp_path and corrupting named lines; every test also
checks the ledger: it balances and the read stage saw exactly one input per non-blank line.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from readers_testlib import (
    DATA,
    FIXTURES,
    copy_lines,
    edit_jsonl_line,
    non_blank_lines,
    read,
    read_input,
    source,
    where,
)

from routerforge.data.readers import READERS, read_source
from routerforge.data.records import prompt_id_for
from routerforge.data.report import Ledger
from routerforge.errors import DataError

ARENA = DATA / "chatbot_arena" / "arena_battles_1k.jsonl"
KAGGLE = FIXTURES / "arena_kaggle_55k_sample.csv"
HP100 = FIXTURES / "arena_hp_100k_sample.jsonl"
HP140 = FIXTURES / "arena_hp_140k_sample.jsonl"


# -- Chatbot Arena conversation schema (arena.py), real data ---------------------------------------


def test_arena_battles_real_counts_and_winners():
    pairs, ledger = read("arena_conversations", ARENA)
    assert len(pairs) == 1135
    assert Counter(p["winner"] for p in pairs) == {
        "model_b": 406,
        "model_a": 369,
        "tie_bothbad": 254,
        "tie": 106,
    }
    assert ledger.bad_rows == []
    assert read_input(ledger) == non_blank_lines(ARENA) == 1135
    assert {p["kind"] for p in pairs} == {"arena"}
    assert (
        len({p["model_a"] for p in pairs} | {p["model_b"] for p in pairs}) == 29
    )  # data/README.md: 29 models


def test_arena_battles_provenance_of_a_known_row():
    pairs, _ = read("arena_conversations", ARENA)
    row = next(p for p in pairs if p["source_id"] == "8ba072e0c1014799b386d62eb3d36305")
    assert row["source_file"] == str(ARENA) and row["source_line"] == 8
    assert (row["model_a"], row["model_b"], row["winner"]) == ("vicuna-13b", "llama-13b", "model_a")
    assert row["prompt"] == "Explain quantum computing like I\u2019m a six grader"
    assert row["prompt_id"] == prompt_id_for(row["prompt"]) and row["language"] == "English"
    # The same line read straight from the file agrees.
    raw = json.loads(ARENA.read_text(encoding="utf-8").splitlines()[7])
    assert raw["question_id"] == row["source_id"] and raw["turns"][0] == row["prompt"]


def test_arena_battles_max_rows_stops_early():
    pairs, ledger = read("arena_conversations", ARENA, max_rows=10)
    assert [p["source_line"] for p in pairs] == list(range(1, 11))
    assert read_input(ledger) == 10


# -- Kaggle 55k CSV schema (arena_kaggle.py) ------------------------------------------------------


def test_kaggle_fixture_pairs():
    pairs, ledger = read("arena_kaggle", KAGGLE)
    assert [(p["source_line"], p["source_id"], p["winner"]) for p in pairs] == [
        (2, "1095203", "model_a"),
        (3, "1126380", "model_b"),
        (4, "1202441", "tie"),
        (5, "1245337", "model_b"),
        (6, "1308713", "tie"),
    ]
    # JSON-encoded list: \u2019 decoded, and only the first turn of the two-turn prompt is the prompt.
    assert pairs[0]["prompt"] == "Explain quantum computing like I\u2019m a six grader"
    assert pairs[3]["prompt"] == "how can you explain incompleteness  theorem to a five year old kid?"
    assert (pairs[1]["model_a"], pairs[1]["model_b"]) == ("koala-13b", "vicuna-13b")
    assert {p["language"] for p in pairs} == {None}
    assert read_input(ledger) == 5 and ledger.bad_rows == []


def _kaggle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "train.csv"
    dst.write_bytes(KAGGLE.read_bytes())
    return dst


def _replace_line(path: Path, line_no: int, old: str, new: str) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert old in lines[line_no - 1]
    lines[line_no - 1] = lines[line_no - 1].replace(old, new, 1)
    path.write_text("\n".join(lines), encoding="utf-8")


def test_kaggle_one_hot_errors(tmp_path):
    path = _kaggle_copy(tmp_path)
    _replace_line(path, 2, ",1,0,0", ",1,1,0")  # two winners
    _replace_line(path, 3, ",0,1,0", ",0,2,0")  # not a 0/1 cell
    _replace_line(path, 4, ",0,0,1", ",0,0,0")  # no winner
    pairs, ledger = read("arena_kaggle", path)
    assert where(ledger.bad_rows) == [
        ("train.csv", 2, "winner_model_a", "unknown_winner"),
        ("train.csv", 3, "winner_model_b", "wrong_type"),
        ("train.csv", 4, "winner_model_a", "unknown_winner"),
    ]
    assert [p["source_line"] for p in pairs] == [5, 6]
    assert read_input(ledger) == 5


def test_kaggle_prompt_not_json_and_duplicate_id(tmp_path):
    path = _kaggle_copy(tmp_path)
    _replace_line(path, 3, '"[""I have 100', '"[""I have 100""""')  # breaks the JSON list inside the cell
    _replace_line(path, 6, "1308713,", "1095203,")  # id of line 2
    pairs, ledger = read("arena_kaggle", path)
    assert where(ledger.bad_rows) == [
        ("train.csv", 3, "prompt", "invalid_json"),
        ("train.csv", 6, "id", "duplicate_id"),
    ]
    assert len(pairs) == 3 and read_input(ledger) == 5


def test_kaggle_missing_column_is_a_data_error(tmp_path):
    path = tmp_path / "test.csv"  # Kaggle's test.csv has no model or winner columns
    path.write_text('id,prompt,response_a,response_b\n1,"[""hi""]","[""a""]","[""b""]"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.csv:1: CSV header lacks column\(s\) model_a"):
        read("arena_kaggle", path)


# -- lmarena arena-human-preference 100k / 140k (arena_hp.py) ------------------------------------


def test_arena_hp_100k_and_140k_fixtures():
    pairs, ledger = read("arena_hp", FIXTURES / "arena_hp_1*_sample.jsonl")
    assert [(Path(p["source_file"]).name, p["source_line"], p["winner"]) for p in pairs] == [
        ("arena_hp_100k_sample.jsonl", 1, "model_a"),
        ("arena_hp_100k_sample.jsonl", 2, "tie_bothbad"),
        ("arena_hp_100k_sample.jsonl", 3, "model_b"),
        ("arena_hp_100k_sample.jsonl", 4, "tie"),
        ("arena_hp_140k_sample.jsonl", 1, "model_a"),
        ("arena_hp_140k_sample.jsonl", 2, "tie_bothbad"),
        ("arena_hp_140k_sample.jsonl", 3, "tie"),
        ("arena_hp_140k_sample.jsonl", 4, "model_b"),
    ]
    by_id = {p["source_id"]: p for p in pairs}
    # 100k: question_id, string content, "tie (bothbad)"; 140k: id, content parts, "both_bad".
    assert (
        by_id["c2d3e4f5a6b74c8d9e0f1a2b3c4d5e6f"]["prompt"]
        == "Wie viele Buchstaben hat das Wort \u201eStra\u00dfe\u201c?"
    )
    assert by_id["c2d3e4f5a6b74c8d9e0f1a2b3c4d5e6f"]["language"] == "German"
    assert by_id["1a4c9d2f-3b5e-4f70-9b2c-4d6e8f0a2b3c"]["language"] == "pt"
    # Text parts of a multi-part user message are joined; the image part is skipped.
    assert (
        by_id["2b5d0e3a-4c6f-4081-8c3d-5e7f9a1b3c4d"]["prompt"]
        == "What is in this picture?\nAnswer in one word."
    )
    # Multi-turn: the first user turn only.
    assert by_id["d3e4f5a6b7c84d9e0f1a2b3c4d5e6f70"]["prompt"] == "Give me a haiku about rain."
    assert by_id["3c6e1f4b-5d70-4192-9d4e-6f8a0b2c4d5e"]["prompt"] == "Explain recursion briefly."
    assert read_input(ledger) == non_blank_lines(HP100, HP140) == 8


def test_arena_hp_anony_only_drops_non_anonymous_and_unknown():
    pairs, ledger = read("arena_hp", FIXTURES / "arena_hp_1*_sample.jsonl", anony_only=True)
    # 100k line 4 has anony false; 140k rows carry no anony field at all.
    assert [p["source_line"] for p in pairs] == [1, 2, 3]
    assert ledger.stage("src", "read").dropped == {"not_anonymous": 5}
    assert read_input(ledger) == 8


def _to_parquet(jsonl: Path, dst: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), dst)
    return dst


@pytest.mark.parametrize("jsonl", [HP100, HP140], ids=["100k", "140k"])
def test_arena_hp_parquet_matches_jsonl(tmp_path, jsonl):
    from_jsonl, _ = read("arena_hp", jsonl)
    parquet = _to_parquet(jsonl, tmp_path / "arena.parquet")
    from_parquet, ledger = read("arena_hp", parquet)
    drop_file = [{k: v for k, v in p.items() if k != "source_file"} for p in from_parquet]
    assert drop_file == [{k: v for k, v in p.items() if k != "source_file"} for p in from_jsonl]
    assert {p["source_file"] for p in from_parquet} == {str(parquet)}
    assert read_input(ledger) == 4


def test_arena_hp_parquet_without_winner_column_is_a_data_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "votes.parquet"
    pq.write_table(pa.table({"id": ["x"], "model_a": ["a"], "model_b": ["b"]}), path)
    with pytest.raises(
        DataError, match=r"votes\.parquet: Parquet file lacks column\(s\) winner, conversation_a"
    ):
        read("arena_hp", path)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        read("arena_hp", tmp_path / "junk.parquet")


def test_arena_hp_bad_rows(tmp_path):
    path = tmp_path / "hp.jsonl"
    copy_lines(HP140, path, 4)
    edit_jsonl_line(path, 1, lambda o: {**o, "winner": "model_c"})
    edit_jsonl_line(
        path,
        2,
        lambda o: {
            **o,
            "conversation_a": [
                {
                    "role": "user",
                    "content": [{"type": "image", "text": None, "image": "x.png", "mimeType": "image/png"}],
                }
            ],
        },
    )
    edit_jsonl_line(path, 3, lambda o: {**o, "conversation_a": "What is in this picture?"})
    pairs, ledger = read("arena_hp", path)
    assert where(ledger.bad_rows) == [
        ("hp.jsonl", 1, "winner", "unknown_winner"),
        ("hp.jsonl", 2, "conversation_a", "empty_prompt"),
        ("hp.jsonl", 3, "conversation_a", "wrong_type"),
    ]
    assert [p["source_line"] for p in pairs] == [4] and read_input(ledger) == 4


# -- the bad-input matrix (each kind: file, line and field asserted) --------------------------------


def test_invalid_json_line(tmp_path):
    path = tmp_path / "battles.jsonl"
    lines = copy_lines(ARENA, path, 5)
    lines[2] = lines[2][: len(lines[2]) // 2]  # truncated mid-object
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs, ledger = read("arena_conversations", path)
    assert where(ledger.bad_rows) == [("battles.jsonl", 3, None, "invalid_json")]
    assert [p["source_line"] for p in pairs] == [1, 2, 4, 5]
    assert read_input(ledger) == non_blank_lines(path) == 5


def test_missing_field(tmp_path):
    path = tmp_path / "battles.jsonl"
    copy_lines(ARENA, path, 5)
    edit_jsonl_line(path, 2, lambda o: {k: v for k, v in o.items() if k != "winner"})
    pairs, ledger = read("arena_conversations", path)
    assert where(ledger.bad_rows) == [("battles.jsonl", 2, "winner", "missing_field")]
    assert len(pairs) == 4 and read_input(ledger) == 5


def test_unknown_winner(tmp_path):
    path = tmp_path / "battles.jsonl"
    copy_lines(ARENA, path, 5)
    edit_jsonl_line(path, 4, lambda o: {**o, "winner": "model_c"})
    pairs, ledger = read("arena_conversations", path)
    assert where(ledger.bad_rows) == [("battles.jsonl", 4, "winner", "unknown_winner")]
    assert "model_c" in ledger.bad_rows[0].detail
    assert len(pairs) == 4 and read_input(ledger) == 5


def test_non_utf8_bytes_in_jsonl(tmp_path):
    real = DATA / "arena_bench_v1" / "model_judgment" / "gpt-4-turbo.jsonl"
    path = tmp_path / "judgment.jsonl"
    raw = real.read_bytes().split(b"\n")[:6]
    assert b"assistant" in raw[3]
    raw[3] = raw[3].replace(b"assistant", b"assist\xe9nt", 1)  # a latin-1 e-acute
    path.write_bytes(b"\n".join(raw) + b"\n")
    scores, ledger = read("fastchat_single_judge", path)
    assert where(ledger.bad_rows) == [("judgment.jsonl", 4, None, "not_utf8")]
    assert [s["source_line"] for s in scores] == [1, 2, 3, 5, 6]
    assert read_input(ledger) == non_blank_lines(path) == 6


def test_non_utf8_bytes_in_csv(tmp_path):
    real = DATA / "routellm" / "mmlu" / "mmlu_anatomy.csv"
    path = tmp_path / "mmlu_anatomy.csv"
    raw = real.read_bytes().split(b"\n")
    assert raw[7].startswith(b'"A ""dished face"" profile')  # line 8 opens the second row
    raw[7] = raw[7].replace(b"profile", b"profil\xe9", 1)
    path.write_bytes(b"\n".join(raw))
    outcomes, ledger = read("routellm_csv", path)
    assert where(ledger.bad_rows) == [("mmlu_anatomy.csv", 8, None, "not_utf8")]
    assert not any("\ufffd" in o["prompt"] for o in outcomes)
    # one input per (question, model) cell of the 134 readable rows, plus the unreadable row counted once
    assert read_input(ledger) == 2 * 134 + 1


def test_wrong_types(tmp_path):
    path = tmp_path / "battles.jsonl"
    copy_lines(ARENA, path, 4)
    edit_jsonl_line(path, 2, lambda o: {**o, "model_a": 7})
    edit_jsonl_line(path, 3, lambda o: {**o, "turns": {"text": o["turns"][0]}})
    pairs, ledger = read("arena_conversations", path)
    assert where(ledger.bad_rows) == [
        ("battles.jsonl", 2, "model_a", "wrong_type"),
        ("battles.jsonl", 3, "turns", "wrong_type"),
    ]
    assert len(pairs) == 2 and read_input(ledger) == 4


def test_duplicate_ids(tmp_path):
    path = tmp_path / "battles.jsonl"
    lines = copy_lines(ARENA, path, 5)
    path.write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    pairs, ledger = read("arena_conversations", path)
    assert where(ledger.bad_rows) == [("battles.jsonl", 6, "question_id", "duplicate_id")]
    assert len(pairs) == 5 and read_input(ledger) == non_blank_lines(path) == 6


def test_blank_lines_are_not_rows(tmp_path):
    path = tmp_path / "battles.jsonl"
    lines = copy_lines(ARENA, path, 3)
    path.write_text(lines[0] + "\n\n   \n" + lines[1] + "\n" + lines[2] + "\n", encoding="utf-8")
    pairs, ledger = read("arena_conversations", path)
    assert [p["source_line"] for p in pairs] == [1, 4, 5]
    assert read_input(ledger) == non_blank_lines(path) == 3


# -- missing files: a DataError that names the path, for every reader ------------------------------

_SUFFIX = {
    "arena_kaggle": ".csv",
    "routellm_csv": ".csv",
    "llmrouter_json": ".json",
    "zeroeval_summary": ".json",
    "alpaca_eval_annotations": ".json",
}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_missing_file_names_the_path(tmp_path, kind):
    missing = tmp_path / f"no_such_file{_SUFFIX.get(kind, '.jsonl')}"
    kw = (
        {"questions_path": str(DATA / "zeroeval" / "prompts_sample.jsonl")}
        if kind == "zeroeval_summary"
        else {}
    )
    with pytest.raises(DataError) as err:
        list(read_source(source(kind, missing, **kw), Ledger(echo=None)))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["fastchat_single_judge", "fastchat_pair_judge", "zeroeval_summary"])
def test_missing_questions_file_names_the_path(tmp_path, kind):
    path = {"zeroeval_summary": DATA / "zeroeval" / "task_summary_gsm_sample.json"}.get(
        kind, DATA / "routellm" / "mt_bench" / "judgements.jsonl"
    )
    missing = tmp_path / "questions.jsonl"
    with pytest.raises(DataError, match="questions_path") as err:
        list(read_source(source(kind, path, questions_path=str(missing)), Ledger(echo=None)))
    assert str(missing) in str(err.value)


# -- every reader's records fit the canonical Arrow features -----------------------------------------

_SAMPLES = {
    "arena_conversations": (ARENA, {}),
    "arena_kaggle": (KAGGLE, {}),
    "arena_hp": (FIXTURES / "arena_hp_1*_sample.jsonl", {}),
    "fastchat_single_judge": (
        DATA / "routellm" / "mt_bench" / "judgements.jsonl",
        {"questions_path": str(DATA / "routellm" / "mt_bench" / "question.jsonl")},
    ),
    "fastchat_pair_judge": (FIXTURES / "fastchat_gpt-4_pair_sample.jsonl", {}),
    "alpaca_eval_annotations": (DATA / "alpaca_eval" / "annotations" / "*.json", {}),
    "routellm_gpt4_judge": (FIXTURES / "routellm_gpt4_dataset_sample.jsonl", {}),
    "routellm_csv": (DATA / "routellm" / "mmlu" / "mmlu_anatomy.csv", {}),
    "llmrouter_json": (DATA / "llmrouter" / "dcrouter_test_sample.json", {}),
    "zeroeval_summary": (
        DATA / "zeroeval" / "task_summary_gsm_sample.json",
        {"questions_path": str(DATA / "zeroeval" / "prompts_sample.jsonl")},
    ),
}


@pytest.mark.parametrize("kind", sorted(_SAMPLES))
def test_records_fit_the_arrow_features(kind):
    from datasets import Dataset

    from routerforge.data.config import SOURCE_KINDS
    from routerforge.data.records import JUDGE_SCORE_FEATURES, OUTCOME_FEATURES, PAIR_FEATURES

    features = {"pairs": PAIR_FEATURES, "outcomes": OUTCOME_FEATURES, "judge_scores": JUDGE_SCORE_FEATURES}[
        SOURCE_KINDS[kind]
    ]
    path, kw = _SAMPLES[kind]
    records, _ = read(kind, path, max_rows=50, **kw)
    assert records and all(set(r) == set(features) for r in records)
    table = Dataset.from_list(records, features=features)
    assert table.num_rows == len(records) and table.features == features
