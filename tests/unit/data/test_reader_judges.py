"""FastChat llm_judge readers: single-answer grades on real judgements, pairwise verdicts on a schema fixture.

Real data: data/arena_bench_v1 (arena-hard-auto arena-bench-v1: question.jsonl + GPT-4 judgements of 6
models) and data/routellm/mt_bench (MT-Bench questions + GPT-4 judgements, turns 1 and 2).
Fixture: tests/fixtures/fastchat_gpt-4_pair_sample.jsonl (FastChat gpt-4_pair.jsonl schema, see
tests/fixtures/reader_fixtures.md).
"""

from __future__ import annotations

import json
from collections import Counter

from readers_testlib import (
    DATA,
    FIXTURES,
    copy_lines,
    edit_jsonl_line,
    non_blank_lines,
    read,
    read_input,
    where,
)

from routerforge.data.readers.fastchat_judge import RATING_PATTERN, question_from_user_prompt

BENCH = DATA / "arena_bench_v1"
JUDGMENTS = BENCH / "model_judgment"
MT = DATA / "routellm" / "mt_bench"
PAIRS = FIXTURES / "fastchat_gpt-4_pair_sample.jsonl"


def _first_turns(path) -> dict[str, str]:
    return {
        str(q["question_id"]): q["turns"][0]
        for q in map(json.loads, path.read_text(encoding="utf-8").splitlines())
    }


def test_gpt35_1106_has_one_null_score_and_it_is_unparseable():
    path = JUDGMENTS / "gpt-3.5-turbo-1106.jsonl"
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    null_lines = [i for i, o in enumerate(raw, start=1) if o["score"] is None]
    assert null_lines == [1]  # the judgment text is cut off at "Rating: [[1"
    assert RATING_PATTERN.search(raw[0]["judgment"]) is None
    scores, ledger = read("fastchat_single_judge", path, questions_path=str(BENCH / "question.jsonl"))
    assert where(ledger.bad_rows) == [("gpt-3.5-turbo-1106.jsonl", 1, "score", "unparseable_score")]
    assert len(scores) == 299 and read_input(ledger) == non_blank_lines(path) == 300
    assert {s["model"] for s in scores} == {"gpt-3.5-turbo-1106"}


def test_arena_bench_judgements_all_files():
    files = sorted(JUDGMENTS.glob("*.jsonl"))
    scores, ledger = read(
        "fastchat_single_judge", JUDGMENTS / "*.jsonl", questions_path=str(BENCH / "question.jsonl")
    )
    # 11 rows have a null score: 3 carry a [[rating]] in the judgment text, 8 do not.
    assert sorted(where(ledger.bad_rows)) == sorted(
        [
            ("Llama-2-70b-chat.jsonl", 292, "score", "unparseable_score"),
            ("Mixtral-8x7B-Instruct-v0.1.jsonl", 87, "score", "unparseable_score"),
            ("Mixtral-8x7B-Instruct-v0.1.jsonl", 170, "score", "unparseable_score"),
            ("claude-2.jsonl", 153, "score", "unparseable_score"),
            ("gpt-3.5-turbo-1106.jsonl", 1, "score", "unparseable_score"),
            ("gpt-3.5-turbo.jsonl", 298, "score", "unparseable_score"),
            ("gpt-4-turbo.jsonl", 236, "score", "unparseable_score"),
            ("gpt-4-turbo.jsonl", 288, "score", "unparseable_score"),
        ]
    )
    assert len(scores) == 1792 and read_input(ledger) == non_blank_lines(*files) == 1800
    recovered = {
        (s["source_file"].rsplit("/", 1)[1], s["source_line"]): s["judge_score"]
        for s in scores
        if (s["source_file"].endswith("Mixtral-8x7B-Instruct-v0.1.jsonl") and s["source_line"] in (196, 242))
        or (s["source_file"].endswith("gpt-4-turbo.jsonl") and s["source_line"] == 137)
    }
    assert recovered == {
        ("Mixtral-8x7B-Instruct-v0.1.jsonl", 196): 9.5,
        ("Mixtral-8x7B-Instruct-v0.1.jsonl", 242): 7.5,
        ("gpt-4-turbo.jsonl", 137): 9.5,
    }
    assert all(1 <= s["judge_score"] <= 10 for s in scores)
    # Model names as in the files; gpt-3.5-turbo.jsonl writes turn as 1.0, read as turn 1.
    assert {s["model"] for s in scores} >= {"gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"}
    assert {s["turn"] for s in scores} == {1} and {s["judge"] for s in scores} == {"unknown"}


def test_question_file_and_user_prompt_give_the_same_prompts():
    with_file, _ = read(
        "fastchat_single_judge", JUDGMENTS / "*.jsonl", questions_path=str(BENCH / "question.jsonl")
    )
    from_template, ledger = read("fastchat_single_judge", JUDGMENTS / "*.jsonl")
    assert [s["prompt"] for s in from_template] == [s["prompt"] for s in with_file]
    questions = _first_turns(BENCH / "question.jsonl")
    assert all(s["prompt"] == questions[s["source_id"]] for s in with_file)
    assert read_input(ledger) == 1800


def test_mt_bench_judgements_turns_and_judges():
    scores, ledger = read(
        "fastchat_single_judge", MT / "judgements.jsonl", questions_path=str(MT / "question.jsonl")
    )
    assert len(scores) == 320 and ledger.bad_rows == [] and read_input(ledger) == 320
    assert Counter((s["judge"], s["turn"]) for s in scores) == {
        ("gpt-4/single-v1", 1): 100,
        ("gpt-4/single-math-v1", 1): 60,
        ("gpt-4/single-v1-multi-turn", 2): 100,
        ("gpt-4/single-math-v1-multi-turn", 2): 60,
    }
    first = scores[0]  # line 1: question 141, gpt-4-1106-preview, turn 2, score 10
    assert (
        first["source_line"],
        first["source_id"],
        first["model"],
        first["turn"],
        first["judge_score"],
    ) == (1, "141", "gpt-4-1106-preview", 2, 10.0)
    questions = _first_turns(MT / "question.jsonl")
    assert first["prompt"] == questions["141"]  # a turn-2 judgement keeps the first turn as its prompt
    # Without the question file, multi-turn templates ("### User:") give the same first turn.
    from_template, _ = read("fastchat_single_judge", MT / "judgements.jsonl")
    assert [s["prompt"] for s in from_template] == [s["prompt"] for s in scores]


def test_single_judge_bad_scores(tmp_path):
    path = tmp_path / "judgments.jsonl"
    copy_lines(MT / "judgements.jsonl", path, 6)
    edit_jsonl_line(path, 2, lambda o: {**o, "score": -1, "judgment": "A fine answer, Rating: [[8]]"})
    edit_jsonl_line(path, 3, lambda o: {**o, "score": None, "judgment": "The answer is good."})
    edit_jsonl_line(path, 4, lambda o: {**o, "score": 11})
    edit_jsonl_line(path, 5, lambda o: {**o, "score": "8"})
    edit_jsonl_line(path, 6, lambda o: {**o, "score": -1, "judgment": "Rating: [[0]]"})
    scores, ledger = read("fastchat_single_judge", path, questions_path=str(MT / "question.jsonl"))
    assert where(ledger.bad_rows) == [
        ("judgments.jsonl", 3, "score", "unparseable_score"),
        ("judgments.jsonl", 4, "score", "score_out_of_range"),
        ("judgments.jsonl", 5, "score", "wrong_type"),
        ("judgments.jsonl", 6, "judgment", "score_out_of_range"),
    ]
    assert [(s["source_line"], s["judge_score"]) for s in scores] == [(1, 10.0), (2, 8.0)]
    assert read_input(ledger) == non_blank_lines(path) == 6


def test_single_judge_unknown_question_and_duplicate(tmp_path):
    path = tmp_path / "judgments.jsonl"
    lines = copy_lines(MT / "judgements.jsonl", path, 3)
    path.write_text("\n".join(lines + [lines[0]]) + "\n", encoding="utf-8")
    edit_jsonl_line(path, 2, lambda o: {**o, "question_id": 9999})
    scores, ledger = read("fastchat_single_judge", path, questions_path=str(MT / "question.jsonl"))
    assert where(ledger.bad_rows) == [
        ("judgments.jsonl", 2, "question_id", "missing_field"),
        ("judgments.jsonl", 4, "question_id", "duplicate_id"),
    ]
    assert len(scores) == 2 and read_input(ledger) == 4


def test_user_prompt_extraction_templates():
    assert (
        question_from_user_prompt(
            "[Instruction]\nRate it.\n\n[Question]\nWhat is 2+2?\n\n"
            "[The Start of Assistant's Answer]\n4\n[The End of Assistant's Answer]"
        )
        == "What is 2+2?"
    )
    assert (
        question_from_user_prompt(
            "<|The Start of Reference Answer|>\n\n### User:\nQ1\n\n### Reference answer:\nR1\n\n### User:\nQ2"
        )
        == "Q1"
    )
    assert question_from_user_prompt("no template here") is None


# -- pairwise (gpt-4_pair.jsonl schema fixture) ---------------------------------------------------


def test_pair_judge_drop_inconsistent():
    pairs, ledger = read("fastchat_pair_judge", PAIRS)
    assert [(p["source_line"], p["model_a"], p["model_b"], p["winner"]) for p in pairs] == [
        (1, "gpt-4", "llama-13b", "model_a"),
        (2, "alpaca-13b", "gpt-4", "model_b"),
        (3, "claude-v1", "gpt-3.5-turbo", "tie"),
        (6, "gpt-4", "llama-13b", "model_a"),
    ]
    assert where(ledger.bad_rows) == [
        ("fastchat_gpt-4_pair_sample.jsonl", 4, "g2_winner", "inconsistent_verdict"),
        ("fastchat_gpt-4_pair_sample.jsonl", 5, "g2_winner", "inconsistent_verdict"),
        ("fastchat_gpt-4_pair_sample.jsonl", 7, "g1_winner", "unparseable_score"),
    ]
    assert ledger.stage("src", "read").dropped == {
        "inconsistent_verdict": 2,
        "unparseable_score": 1,
        "later_turn": 1,
    }
    assert {p["kind"] for p in pairs} == {"judge"}
    assert read_input(ledger) == non_blank_lines(PAIRS) == 8


def test_pair_judge_inconsistent_as_tie_and_prompts():
    pairs, ledger = read(
        "fastchat_pair_judge", PAIRS, inconsistent="tie", questions_path=str(MT / "question.jsonl")
    )
    assert [(p["source_line"], p["winner"]) for p in pairs] == [
        (1, "model_a"),
        (2, "model_b"),
        (3, "tie"),
        (4, "tie"),
        (5, "tie"),
        (6, "model_a"),
    ]
    assert where(ledger.bad_rows) == [
        ("fastchat_gpt-4_pair_sample.jsonl", 7, "g1_winner", "unparseable_score")
    ]
    questions = _first_turns(MT / "question.jsonl")
    assert all(p["prompt"] == questions[p["source_id"]] for p in pairs)
    # Without questions_path the question comes out of g1_user_prompt (pair-v2 and pair-math-v1 templates).
    from_template, _ = read("fastchat_pair_judge", PAIRS, inconsistent="tie")
    assert [p["prompt"] for p in from_template] == [p["prompt"] for p in pairs]
    assert read_input(ledger) == 8


def test_pair_judge_unknown_verdict_wrong_turn_duplicate(tmp_path):
    path = tmp_path / "gpt-4_pair.jsonl"
    lines = copy_lines(PAIRS, path, 3)
    path.write_text("\n".join(lines + [lines[2]]) + "\n", encoding="utf-8")
    edit_jsonl_line(path, 1, lambda o: {**o, "g1_winner": "A"})
    edit_jsonl_line(path, 2, lambda o: {**o, "turn": "first"})
    pairs, ledger = read("fastchat_pair_judge", path)
    assert where(ledger.bad_rows) == [
        ("gpt-4_pair.jsonl", 1, "g1_winner", "unknown_winner"),
        ("gpt-4_pair.jsonl", 2, "turn", "wrong_type"),
        ("gpt-4_pair.jsonl", 4, "question_id", "duplicate_id"),
    ]
    assert [p["source_line"] for p in pairs] == [3] and read_input(ledger) == non_blank_lines(path) == 4
