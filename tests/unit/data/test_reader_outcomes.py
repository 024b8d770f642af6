"""Outcome-table readers and price tables, on the real files bundled under data/.

RouteLLM CSVs (data/routellm), LLMRouter dcrouter samples (data/llmrouter), ZeroEval task summaries
(data/zeroeval), the generic long table (built from real RouteLLM rows), and the RouterArena / LLMRouter
price tables. The read stage counts one input per (prompt, model) cell (see outcome_tables.py).
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter

import pytest
from readers_testlib import DATA, copy_lines, edit_jsonl_line, non_blank_lines, read, read_input, where

from routerforge.data.readers.prices import attach_cost, attach_costs, load_price_table
from routerforge.data.records import prompt_id_for
from routerforge.errors import DataError

MMLU = DATA / "routellm" / "mmlu"
GSM8K = DATA / "routellm" / "gsm8k" / "gsm8k_responses.csv"
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
LLMROUTER = DATA / "llmrouter"
ZEROEVAL = DATA / "zeroeval"


# -- RouteLLM CSVs --------------------------------------------------------------------------------


def test_routellm_mmlu_rows_start_on_their_first_physical_line():
    path = MMLU / "mmlu_anatomy.csv"
    outcomes, ledger = read("routellm_csv", path)
    assert len(outcomes) == 2 * 135 and ledger.bad_rows == [] and read_input(ledger) == 270
    # Prompts span 6 lines (question, 4 choices, "Answer:"), so rows start at lines 2, 8, ...
    assert [o["source_line"] for o in outcomes[:4]] == [2, 2, 8, 8]
    assert outcomes[-1]["source_line"] == 806 and outcomes[-1]["source_id"] == "134"
    # Independent check: the physical line each outcome points at opens its quoted prompt.
    physical = path.read_text(encoding="utf-8").split("\n")
    for o in outcomes:
        first_line = o["prompt"].split("\n")[0].replace('"', '""')
        assert physical[o["source_line"] - 1].startswith('"' + first_line)
    assert {o["task"] for o in outcomes} == {"mmlu/anatomy"}
    assert Counter((o["model"], o["score"]) for o in outcomes) == {
        (STRONG, 1.0): 110,
        (STRONG, 0.0): 25,
        (WEAK, 1.0): 89,
        (WEAK, 0.0): 46,
    }


def test_routellm_gsm8k_skips_response_columns():
    outcomes, ledger = read("routellm_csv", GSM8K)
    assert {o["model"] for o in outcomes} == {WEAK, STRONG}  # not the <model>_response text columns
    assert {o["task"] for o in outcomes} == {"gsm8k"}
    assert len(outcomes) == 2 * 1319 and read_input(ledger) == 2638
    first = outcomes[0]
    assert (first["source_line"], first["source_id"], first["score"]) == (2, "0", 1.0)
    assert first["prompt"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first["prompt_id"] == prompt_id_for(first["prompt"])
    assert sum(o["score"] for o in outcomes if o["model"] == STRONG) == 1130


def test_routellm_task_override():
    outcomes, ledger = read("routellm_csv", MMLU / "mmlu_anatomy.csv", task="medicine")
    assert {o["task"] for o in outcomes} == {"medicine"} and read_input(ledger) == 270


def test_routellm_repeated_questions_are_passed_on():
    """Real MMLU test repeats 11 college_physics questions verbatim; with no id column they are not
    malformed rows, so the reader yields them and the clean stage drops the repeats as duplicate_row."""
    outcomes, ledger = read("routellm_csv", MMLU / "mmlu_college_physics.csv")
    assert ledger.bad_rows == [] and len(outcomes) == 2 * 102 and read_input(ledger) == 204
    first_line: dict[str, int] = {}
    repeats = []
    for o in outcomes:
        if o["model"] == STRONG:
            if o["prompt_id"] in first_line:
                repeats.append(o["source_line"])
            first_line.setdefault(o["prompt_id"], o["source_line"])
    assert repeats == [98, 308, 350, 356, 398, 458, 464, 536, 542, 560, 584]


def test_routellm_all_bundled_csvs():
    files = sorted((DATA / "routellm").glob("*/*.csv"))
    n_rows = sum(sum(1 for _ in csv.reader(open(f, newline="", encoding="utf-8"))) - 1 for f in files)
    assert n_rows == 14042 + 1319
    outcomes, ledger = read("routellm_csv", DATA / "routellm" / "*" / "*.csv")
    assert ledger.bad_rows == [] and read_input(ledger) == 2 * n_rows and len(outcomes) == 2 * n_rows
    # 27 rows repeat an earlier question of the same file (left to the clean stage's duplicate_row).
    distinct = {(o["source_file"], o["prompt_id"], o["model"]) for o in outcomes}
    assert len(outcomes) - len(distinct) == 2 * 27
    assert len({o["task"] for o in outcomes}) == 58  # 57 MMLU subjects + gsm8k


def test_routellm_non_boolean_cell(tmp_path):
    path = tmp_path / "mmlu_anatomy.csv"
    lines = (MMLU / "mmlu_anatomy.csv").read_text(encoding="utf-8").split("\n")
    assert lines[6] == 'Answer:",True,True'  # the end of the first row (lines 2-7)
    lines[6] = 'Answer:",Maybe,True'
    path.write_text("\n".join(lines), encoding="utf-8")
    outcomes, ledger = read("routellm_csv", path)
    assert where(ledger.bad_rows) == [("mmlu_anatomy.csv", 2, WEAK, "wrong_type")]
    assert (outcomes[0]["model"], outcomes[0]["source_line"]) == (STRONG, 2)
    assert len(outcomes) == 269 and read_input(ledger) == 270


# -- LLMRouter dcrouter JSON ----------------------------------------------------------------------


def test_llmrouter_samples():
    train = LLMROUTER / "dcrouter_train_sample.json"
    outcomes, ledger = read("llmrouter_json", train)
    items = json.loads(train.read_text(encoding="utf-8"))
    assert len(items) == 400 and len(outcomes) == 400 * 9 and read_input(ledger) == 3600
    # A JSON array has no lines: source_line is the 1-based item position, source_id the 0-based index.
    seventh = [o for o in outcomes if o["source_id"] == "6"]
    assert {o["source_line"] for o in seventh} == {7}
    assert {o["model"]: o["score"] for o in seventh} == items[6]["scores"]
    assert {o["prompt"] for o in seventh} == {items[6]["question"]}
    assert {o["task"] for o in outcomes} == {None}
    test_outcomes, _ = read("llmrouter_json", LLMROUTER / "dcrouter_test_sample.json", task="dcrouter")
    assert len(test_outcomes) == 100 * 9 and {o["task"] for o in test_outcomes} == {"dcrouter"}


def test_llmrouter_bad_items(tmp_path):
    items = json.loads((LLMROUTER / "dcrouter_test_sample.json").read_text(encoding="utf-8"))[:5]
    first_model = next(iter(items[1]["scores"]))
    items[1]["scores"][first_model] = 2.0
    items[2]["question"] = "   "
    items[3] = ["not", "an", "object"]
    path = tmp_path / "dcrouter.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    outcomes, ledger = read("llmrouter_json", path)
    assert where(ledger.bad_rows) == [
        ("dcrouter.json", 2, f"scores.{first_model}", "score_out_of_range"),
        ("dcrouter.json", 3, "question", "empty_prompt"),
        ("dcrouter.json", 4, None, "not_an_object"),
    ]
    assert len(outcomes) == 9 + 8 + 9
    assert read_input(ledger) == 9 * 4 + 1  # item 4 is one unreadable input, not 9 cells


def test_llmrouter_invalid_json_document(tmp_path):
    path = tmp_path / "dcrouter.json"
    path.write_text('[{"question": "q", "scores": {"m": 1.0}},\n{"question": ', encoding="utf-8")
    with pytest.raises(DataError, match=r"dcrouter\.json:2: invalid JSON"):
        read("llmrouter_json", path)


# -- ZeroEval task summaries ----------------------------------------------------------------------


def test_zeroeval_gsm_summary():
    path = ZEROEVAL / "task_summary_gsm_sample.json"
    outcomes, ledger = read("zeroeval_summary", path, questions_path=str(ZEROEVAL / "prompts_sample.jsonl"))
    summary = json.loads(path.read_text(encoding="utf-8"))
    n_cells = sum(
        len([m for m in v[f].split("|") if m])
        for v in summary.values()
        for f in ("correct_models", "incorrect_models")
    )
    assert ledger.bad_rows == [] and len(outcomes) == n_cells and read_input(ledger) == n_cells
    first = [o for o in outcomes if o["source_id"] == "gsm8k-main-test-#403"]
    assert (
        len(first) == 45 and {o["score"] for o in first} == {0.0} and {o["source_line"] for o in first} == {1}
    )
    assert {o["task"] for o in outcomes} == {"gsm"}
    correct = Counter(o["source_id"] for o in outcomes if o["score"] == 1.0)
    assert all(
        correct[k] == len([m for m in v["correct_models"].split("|") if m]) for k, v in summary.items()
    )


def test_zeroeval_items_without_prompt_are_missing_field():
    path = ZEROEVAL / "task_summary_mmlu-redux_sample.json"
    outcomes, ledger = read("zeroeval_summary", path, questions_path=str(ZEROEVAL / "prompts_sample.jsonl"))
    summary = json.loads(path.read_text(encoding="utf-8"))
    prompts = {
        json.loads(line)["session_id"] for line in (ZEROEVAL / "prompts_sample.jsonl").open(encoding="utf-8")
    }
    unprompted = [i for i, k in enumerate(summary, start=1) if k not in prompts]
    assert len(unprompted) == 174  # the sample ships the prompts ZeroEval publishes, not all items'
    missing = [r for r in ledger.bad_rows if r.reason == "missing_field"]
    assert [(r.line, r.field) for r in missing] == [(n, "prompt") for n in unprompted]
    assert len(missing) == len(ledger.bad_rows)
    assert ledger.stage("src", "read").dropped == {
        "missing_field": 9418
    }  # all model cells of those 174 items
    n_cells = sum(
        len([m for m in v[f].split("|") if m])
        for v in summary.values()
        for f in ("correct_models", "incorrect_models")
    )
    assert read_input(ledger) == n_cells and len(outcomes) == n_cells - 9418 == 6830
    # Three items (lines 21, 284, 285) repeat an earlier item's prompt: passed on for the clean stage.
    items_by_prompt = Counter(p for p, _ in {(o["prompt_id"], o["source_id"]) for o in outcomes})
    assert sum(n - 1 for n in items_by_prompt.values()) == 3


def test_zeroeval_needs_questions_path():
    with pytest.raises(DataError, match="zeroeval_summary needs questions_path"):
        read("zeroeval_summary", ZEROEVAL / "task_summary_gsm_sample.json")


# -- the generic long table ----------------------------------------------------------------------


def _gsm8k_rows(n: int) -> list[dict]:
    """A long table built from the first `n` real GSM8K rows: one row per (question, model)."""
    reader = csv.DictReader(open(GSM8K, newline="", encoding="utf-8"))
    rows = []
    for i, r in itertools.islice(enumerate(reader), n):
        for model in (WEAK, STRONG):
            rows.append(
                {
                    "prompt_id": f"gsm8k-{i}",
                    "prompt": r["prompt"],
                    "model": model,
                    "score": 1.0 if r[model] == "True" else 0.0,
                    "cost": 0.00042 if model == STRONG else None,
                    "input_tokens": 61,
                    "output_tokens": len(r[f"{model}_response"]) // 4,
                    "task": "gsm8k",
                }
            )
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_outcomes_jsonl_and_csv_agree(tmp_path):
    rows = _gsm8k_rows(4)
    _write_jsonl(tmp_path / "outcomes.jsonl", rows)
    with open(tmp_path / "outcomes.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    from_jsonl, ledger_j = read("outcomes", tmp_path / "outcomes.jsonl")
    from_csv, ledger_c = read("outcomes", tmp_path / "outcomes.csv")
    assert len(from_jsonl) == 8 and read_input(ledger_j) == non_blank_lines(tmp_path / "outcomes.jsonl") == 8
    assert read_input(ledger_c) == 8 and ledger_j.bad_rows == ledger_c.bad_rows == []
    first = from_jsonl[1]
    assert (first["model"], first["source_id"], first["cost"], first["input_tokens"], first["task"]) == (
        STRONG,
        "gsm8k-0",
        0.00042,
        61,
        "gsm8k",
    )
    assert from_jsonl[0]["cost"] is None
    keep = (
        "prompt_id",
        "prompt",
        "model",
        "score",
        "cost",
        "input_tokens",
        "output_tokens",
        "task",
        "source_id",
    )
    assert [{k: o[k] for k in keep} for o in from_csv] == [{k: o[k] for k in keep} for o in from_jsonl]
    assert [o["source_line"] for o in from_csv] == list(range(2, 10))
    from datasets import Dataset

    from routerforge.data.records import OUTCOME_FEATURES

    assert Dataset.from_list(from_csv, features=OUTCOME_FEATURES)["cost"][:2] == [None, 0.00042]


def test_outcomes_csv_multiline_prompts(tmp_path):
    """MMLU prompts span 6 lines: each long-table row is recorded at the line it starts on."""
    reader = csv.DictReader(open(MMLU / "mmlu_anatomy.csv", newline="", encoding="utf-8"))
    rows = [
        {
            "prompt_id": f"anatomy-{i}",
            "prompt": r["prompt"],
            "model": STRONG,
            "score": int(r[STRONG] == "True"),
        }
        for i, r in itertools.islice(enumerate(reader), 3)
    ]
    with open(tmp_path / "outcomes.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    outcomes, ledger = read("outcomes", tmp_path / "outcomes.csv")
    assert [o["source_line"] for o in outcomes] == [2, 8, 14]
    assert [o["prompt"] for o in outcomes] == [r["prompt"] for r in rows]
    assert read_input(ledger) == 3


def test_outcomes_bad_rows(tmp_path):
    rows = _gsm8k_rows(5)  # 10 rows
    rows[1]["score"] = 1.5
    rows[2]["score"] = "high"
    del rows[3]["model"]
    rows[4]["prompt"] = " \n "
    rows[5]["output_tokens"] = -3
    rows[6]["cost"] = "cheap"
    rows[8] = dict(rows[7])  # same prompt_id and model as the row before
    path = tmp_path / "outcomes.jsonl"
    _write_jsonl(path, rows)
    outcomes, ledger = read("outcomes", path)
    assert where(ledger.bad_rows) == [
        ("outcomes.jsonl", 2, "score", "score_out_of_range"),
        ("outcomes.jsonl", 3, "score", "wrong_type"),
        ("outcomes.jsonl", 4, "model", "missing_field"),
        ("outcomes.jsonl", 5, "prompt", "empty_prompt"),
        ("outcomes.jsonl", 6, "output_tokens", "wrong_type"),
        ("outcomes.jsonl", 7, "cost", "wrong_type"),
        ("outcomes.jsonl", 9, "prompt_id", "duplicate_id"),
    ]
    assert [o["source_line"] for o in outcomes] == [1, 8, 10]
    assert read_input(ledger) == non_blank_lines(path) == 10


def test_outcomes_csv_missing_column_and_bad_extension(tmp_path):
    path = tmp_path / "outcomes.csv"
    path.write_text("prompt_id,prompt,score\n1,hi,0.5\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"outcomes\.csv:1: CSV header lacks column\(s\) model"):
        read("outcomes", path)
    (tmp_path / "outcomes.parquet").write_bytes(b"x")
    with pytest.raises(DataError, match=r"outcomes\.parquet: outcome tables are JSON lines"):
        read("outcomes", tmp_path / "outcomes.parquet")


def test_outcomes_copy_of_real_lines_with_score_out_of_range(tmp_path):
    good = tmp_path / "good.jsonl"
    _write_jsonl(good, _gsm8k_rows(2))
    path = tmp_path / "outcomes.jsonl"
    copy_lines(good, path, 4)
    edit_jsonl_line(path, 3, lambda o: {**o, "score": -0.1})
    outcomes, ledger = read("outcomes", path)
    assert where(ledger.bad_rows) == [("outcomes.jsonl", 3, "score", "score_out_of_range")]
    assert len(outcomes) == 3 and read_input(ledger) == 4


# -- price tables and costs -------------------------------------------------------------------------


def test_price_tables_both_formats():
    arena = load_price_table(DATA / "prices" / "routerarena" / "model_cost" / "cost.json")
    assert len(arena) == 45
    assert arena["gpt-4-1106-preview"] == (10.0, 30.0) and arena["gpt-4o-mini"] == (0.15, 0.6)
    llmrouter = load_price_table(LLMROUTER / "default_llm.json")
    table = json.loads((LLMROUTER / "default_llm.json").read_text(encoding="utf-8"))
    assert len(llmrouter) == 2 * len(table)  # each entry under its key and its provider/model id
    assert llmrouter["qwen2.5-7b-instruct"] == llmrouter["qwen/qwen2.5-7b-instruct"] == (0.2, 0.2)
    assert llmrouter["mixtral-8x22b-instruct-v0.1"] == (1.2, 1.2)


def test_price_table_errors(tmp_path):
    odd = tmp_path / "prices.json"
    odd.write_text(json.dumps({"gpt-4": {"prompt_cost": 1, "completion_cost": 2}}), encoding="utf-8")
    with pytest.raises(DataError, match=r"prices\.json: unknown price-table format"):
        load_price_table(odd)
    negative = tmp_path / "negative.json"
    negative.write_text(json.dumps({"m": {"input_price": -1, "output_price": 2}}), encoding="utf-8")
    with pytest.raises(DataError, match=r"negative\.json: model 'm': input_price must be"):
        load_price_table(negative)
    with pytest.raises(DataError, match="nope.json"):
        load_price_table(tmp_path / "nope.json")


def test_attach_cost_on_real_outcomes():
    prices = load_price_table(DATA / "prices" / "routerarena" / "model_cost" / "cost.json")
    outcomes, _ = read("routellm_csv", GSM8K, max_rows=2)  # first question: Mixtral then GPT-4
    strong = outcomes[1]
    assert strong["model"] == STRONG and strong["input_tokens"] is None
    costed = attach_cost({**strong, "input_tokens": 1000, "output_tokens": 500}, prices)
    assert costed["cost"] == pytest.approx((1000 * 10 + 500 * 30) / 1e6)
    # No input count: estimated from the prompt's characters; the count itself stays unknown.
    estimated = attach_cost(strong, prices, chars_per_token=4.0, assumed_output_tokens=200)
    assert estimated["cost"] == pytest.approx((len(strong["prompt"]) / 4.0 * 10 + 200 * 30) / 1e6)
    assert estimated["input_tokens"] is None and strong["cost"] is None  # the input record is not mutated
    assert attach_cost({**strong, "cost": 0.5}, prices)["cost"] == 0.5  # a reported cost is kept
    with pytest.raises(DataError, match="has no output_tokens"):
        attach_cost(strong, prices)
    with pytest.raises(DataError, match=f"no price for model '{WEAK}'"):
        list(attach_costs(outcomes, prices, assumed_output_tokens=200))
