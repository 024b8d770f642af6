"""Long outcome table -> wide matrices: JSONL and CSV, missing cells, errors naming file and line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from routerforge.errors import DataError
from routerforge.eval.binary import binary_report
from routerforge.eval.outcome_table import (
    complete_subtable,
    describe_missing,
    load_outcome_table,
    model_index,
    strong_weak_columns,
)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"prompt_id": "p1", "prompt": "What is 2+2?", "model": "weak", "score": 1, "cost": 0.001},
    {"prompt_id": "p1", "prompt": "What is 2+2?", "model": "strong", "score": 1, "cost": 0.01},
    {"prompt_id": "p2", "prompt": "Prove Fermat.", "model": "weak", "score": 0, "cost": 0.002},
    {"prompt_id": "p2", "prompt": "Prove Fermat.", "model": "strong", "score": 0.5, "cost": 0.03},
    {"prompt_id": "p3", "prompt": "Name a prime.", "model": "strong", "score": True},
]


def test_jsonl_to_wide_with_missing_cells(tmp_path):
    table = load_outcome_table(_write_jsonl(tmp_path / "o.jsonl", ROWS))
    assert table.prompt_ids == ("p1", "p2", "p3")
    assert table.models == ("weak", "strong")
    np.testing.assert_array_equal(table.scores, [[1, 1], [0, 0.5], [np.nan, 1]])
    np.testing.assert_allclose(table.costs[:2], [[0.001, 0.01], [0.002, 0.03]])
    assert np.isnan(table.costs[2]).all()  # p3 has no cost, p3/weak no row
    assert table.missing_cells == (("p3", "weak"),)
    assert not table.has_costs
    assert describe_missing(table) == "1 of 6 (prompt, model) cells missing (weak: 1)"
    assert not table.scores.flags.writeable


def test_strong_weak_columns_drop_incomplete_prompts(tmp_path):
    table = load_outcome_table(_write_jsonl(tmp_path / "o.jsonl", ROWS))
    cols = strong_weak_columns(table, strong="strong", weak="weak")
    assert cols.prompt_ids == ("p1", "p2") and cols.dropped_prompt_ids == ("p3",)
    np.testing.assert_array_equal(cols.weak_scores, [1, 0])
    np.testing.assert_array_equal(cols.strong_scores, [1, 0.5])
    assert cols.prompts == ("What is 2+2?", "Prove Fermat.")
    sub = complete_subtable(table, require_costs=True)
    assert sub.prompt_ids == ("p1", "p2") and sub.has_costs and sub.missing_cells == ()


def test_csv_with_bool_scores_multiline_prompt_and_empty_cost(tmp_path):
    path = tmp_path / "o.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt_id", "prompt", "model", "score", "cost"])
        w.writerow(["a", "line one\nline two", "m1", "True", "0.5"])
        w.writerow(["a", "line one\nline two", "m2", "false", ""])
        w.writerow(["b", "x", "m1", "0.25", "1e-3"])
    table = load_outcome_table(path)
    np.testing.assert_array_equal(table.scores, [[1, 0], [0.25, np.nan]])
    assert np.isnan(table.costs[0, 1]) and table.costs[1, 0] == pytest.approx(0.001)
    assert table.prompts[0] == "line one\nline two"


def test_prompt_id_derived_from_prompt_when_absent(tmp_path):
    from routerforge.data.records import prompt_id_for

    rows = [{"prompt": "Hello  World", "model": "m", "score": 0.5}, {"prompt": "hello world", "model": "n", "score": 1}]
    table = load_outcome_table(_write_jsonl(tmp_path / "o.jsonl", rows))
    # Same normalised text -> same prompt id, so both models land on one prompt.
    assert table.prompt_ids == (prompt_id_for("Hello  World"),)
    np.testing.assert_array_equal(table.scores, [[0.5, 1.0]])


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"prompt_id": "p", "model": "m", "score": 0.5}', "{not json"], r"o.jsonl:2: invalid_json"),
        (['{"prompt_id": "p", "model": "m", "score": 1.5}'], r"o.jsonl:1: field 'score': score_out_of_range"),
        (['{"prompt_id": "p", "model": "m", "score": "high"}'], r"o.jsonl:1: field 'score': wrong_type"),
        (['{"prompt_id": "p", "model": "m"}'], r"o.jsonl:1: field 'score': missing_field"),
        (['{"prompt_id": "p", "score": 1}'], r"o.jsonl:1: field 'model': missing_field"),
        (['{"model": "m", "score": 1}'], r"o.jsonl:1: field 'prompt_id': missing_field"),
        (['{"prompt_id": "p", "model": "m", "score": 1, "cost": -2}'], r"o.jsonl:1: field 'cost': wrong_type"),
        (['{"prompt_id": "p", "model": "m", "score": 1}', "", '{"prompt_id": "p", "model": "m", "score": 0}'],
         r"o.jsonl:3: field 'prompt_id': duplicate_id: .*already at line 1"),
        (["[1, 2]"], r"o.jsonl:1: not_an_object"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, lines, match):
    path = tmp_path / "o.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_outcome_table(path)


def test_error_counts_all_bad_rows_and_shows_the_first(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text('{"prompt_id": "p", "model": "m", "score": 0.5}\n{bad\n'
                    '{"prompt_id": "q", "model": "m", "score": 7}\n')
    with pytest.raises(DataError, match=r"o.jsonl:2: invalid_json.*\(2 malformed rows in all; the first is shown\)"):
        load_outcome_table(path)


def test_whole_file_errors(tmp_path):
    with pytest.raises(DataError, match="outcome table not found"):
        load_outcome_table(tmp_path / "nope.jsonl")
    (tmp_path / "o.parquet").write_text("x")
    with pytest.raises(DataError, match="unsupported outcome table format '.parquet'"):
        load_outcome_table(tmp_path / "o.parquet")
    (tmp_path / "h.csv").write_text("id,model,score\n1,m,0.5\n")
    with pytest.raises(DataError, match=r"h.csv:1: CSV header needs a 'prompt_id' or a 'prompt' column"):
        load_outcome_table(tmp_path / "h.csv")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_outcome_table(tmp_path / "e.jsonl")
    (tmp_path / "bad.csv").write_text("prompt_id,model,score\np,m,0.5,extra\n")
    with pytest.raises(DataError, match=r"bad.csv:2: invalid_csv"):
        load_outcome_table(tmp_path / "bad.csv")


def test_unknown_model_suggests_a_close_name(tmp_path):
    table = load_outcome_table(_write_jsonl(tmp_path / "o.jsonl", ROWS))
    with pytest.raises(DataError, match=r"model 'strnog' is not in the outcome table. Did you mean 'strong'"):
        model_index(table, "strnog")
    with pytest.raises(DataError, match="pick two different models"):
        strong_weak_columns(table, "weak", "weak")


def test_require_costs_names_the_cell_without_cost(tmp_path):
    rows = [*ROWS, {"prompt_id": "p3", "prompt": "Name a prime.", "model": "weak", "score": 0, "cost": 0.001}]
    table = load_outcome_table(_write_jsonl(tmp_path / "o.jsonl", rows))
    assert table.missing_cells == ()
    assert complete_subtable(table).prompt_ids == ("p1", "p2", "p3")  # costs not required by default
    with pytest.raises(DataError, match=r"prompt_id 'p3' with model 'strong' has no cost"):
        complete_subtable(table, require_costs=True)
    only_weak = complete_subtable(table, models=["weak"], require_costs=True)
    assert only_weak.models == ("weak",) and only_weak.has_costs


def test_real_routellm_gsm8k_as_a_long_table(tmp_path, data_dir):
    # Convert RouteLLM's wide GSM8K file (real outcomes) to the long format users bring, load it back,
    # and evaluate: always-weak/strong accuracies must match the source columns.
    src = data_dir / "routellm" / "gsm8k" / "gsm8k_responses.csv"
    csv.field_size_limit(2**31 - 1)
    weak_name, strong_name = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
    with open(src, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[:300]
    long_path = tmp_path / "gsm8k_long.csv"
    with open(long_path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt_id", "prompt", "model", "score"])
        for i, r in enumerate(rows):
            for m in (weak_name, strong_name):
                w.writerow([f"gsm8k-{i}", r["prompt"], m, r[m]])
    table = load_outcome_table(long_path)
    cols = strong_weak_columns(table, strong=strong_name, weak=weak_name)
    assert len(cols.prompt_ids) == 300 and not cols.dropped_prompt_ids
    assert cols.weak_scores.mean() == pytest.approx(np.mean([r[weak_name] == "True" for r in rows]))
    rep = binary_report(np.zeros(300), cols.weak_scores, cols.strong_scores, n_bootstrap=0)
    assert rep.router.apgr == pytest.approx(0.5)  # a constant router is the random line
    assert rep.oracle.apgr > 0.9
