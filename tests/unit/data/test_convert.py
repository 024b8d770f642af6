"""Conversions to pairs, on real RouteLLM outcome rows and hand-checked cases."""

import csv

from routerforge.data.config import ConvertConfig, SourceConfig
from routerforge.data.convert import (
    groups_by_prompt,
    judge_score_pairs,
    outcome_pairs,
    routellm_threshold_pairs,
)
from routerforge.data.records import make_judge_score, make_outcome
from routerforge.data.report import Ledger

WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def _src(**convert):
    return SourceConfig(name="s", kind="routellm_csv", path="x", weight=0.5,
                        convert=ConvertConfig(rule="outcome_pairs", **convert))


def _outcome(prompt, model, score, line=1):
    return make_outcome(prompt=prompt, model=model, score=score, source="s", source_file="f.csv",
                        source_line=line, source_id=str(line))


def test_outcome_pairs_on_real_mmlu_rows(data_dir):
    rows = list(csv.DictReader(open(data_dir / "routellm/mmlu/mmlu_college_physics.csv", encoding="utf-8")))[:40]
    outcomes = []
    for i, row in enumerate(rows):
        for model in (WEAK, STRONG):
            outcomes.append(_outcome(row["prompt"], model, float(row[model] == "True"), line=i + 2))
    outcomes.sort(key=lambda r: r["prompt_id"])
    ledger = Ledger(echo=None)
    pairs = list(outcome_pairs(groups_by_prompt(outcomes), _src(), ledger))
    # one pair per distinct prompt: MMLU repeats one of these 40 questions verbatim
    assert len(pairs) == 39
    by_prompt = {r["prompt"]: r for r in rows}
    for pair in pairs:
        src_row = by_prompt[pair["prompt"]]
        a_ok = src_row[pair["model_a"]] == "True"
        b_ok = src_row[pair["model_b"]] == "True"
        expected = ("tie" if a_ok else "tie_bothbad") if a_ok == b_ok else ("model_a" if a_ok else "model_b")
        assert pair["winner"] == expected
        assert pair["weight"] == 0.5 and pair["kind"] == "gold"
    stats = ledger.stats()["per_source"]["s"]
    assert stats["convert"] == {"input": 80, "kept": 78, "dropped": {"duplicate_row": 2}, "made": 39}
    assert stats["pairs"]["kept"] == 39


def test_ties_dropped_and_single_model_counted():
    outcomes = [_outcome("q1", "a", 1.0), _outcome("q1", "b", 1.0), _outcome("q2", "a", 0.0),
                _outcome("q3", "a", 0.9), _outcome("q3", "b", 0.2), _outcome("q3", "c", 0.85)]
    outcomes.sort(key=lambda r: r["prompt_id"])
    ledger = Ledger(echo=None)
    pairs = list(outcome_pairs(groups_by_prompt(outcomes), _src(ties="drop", margin=0.1), ledger))
    # q1: a=b -> tie dropped; q2: one model -> dropped; q3: a>b, |a-c|<=0.1 tie dropped, c>b
    assert sorted((p["model_a"], p["model_b"], p["winner"]) for p in pairs) == [
        ("a", "b", "model_a"), ("b", "c", "model_b")]
    c = ledger.stats()["per_source"]["s"]
    assert c["convert"]["dropped"] == {"single_model": 1}
    assert c["pairs"] == {"input": 4, "kept": 2, "dropped": {"tie": 2}}


def _judge(prompt, model, score, turn=1):
    return make_judge_score(prompt=prompt, model=model, judge_score=score, turn=turn, judge="gpt-4",
                            source="j", source_file="j.jsonl", source_line=1, source_id="1")


def test_routellm_threshold_rule():
    src = SourceConfig(name="j", kind="fastchat_single_judge", path="x",
                       convert=ConvertConfig(rule="routellm_threshold", strong=STRONG, weak=WEAK, threshold=8))
    rows = [_judge("p1", WEAK, 8), _judge("p1", STRONG, 10), _judge("p2", WEAK, 7.5),
            _judge("p2", WEAK, 9, turn=2), _judge("p3", STRONG, 3)]
    rows.sort(key=lambda r: r["prompt_id"])
    ledger = Ledger(echo=None)
    pairs = {p["prompt"]: p for p in routellm_threshold_pairs(groups_by_prompt(rows), src, ledger)}
    assert set(pairs) == {"p1", "p2"}  # p3 has no weak-model grade
    assert (pairs["p1"]["model_a"], pairs["p1"]["model_b"], pairs["p1"]["winner"]) == (STRONG, WEAK, "model_b")
    assert pairs["p2"]["winner"] == "model_a"  # 7.5 < 8: the strong model wins
    c = ledger.stats()["per_source"]["j"]["convert"]
    assert c == {"input": 5, "kept": 2, "dropped": {"later_turn": 1, "not_in_pair": 2}, "made": 2}


def test_judge_score_pairs_bothbad():
    src = SourceConfig(name="j", kind="fastchat_single_judge", path="x",
                       convert=ConvertConfig(rule="judge_score_pairs"))
    rows = sorted([_judge("p", "a", 1), _judge("p", "b", 1), _judge("p", "c", 6)], key=lambda r: r["model"])
    pairs = list(judge_score_pairs(groups_by_prompt(rows), src, Ledger(echo=None)))
    assert [(p["model_a"], p["model_b"], p["winner"]) for p in pairs] == [
        ("a", "b", "tie_bothbad"), ("a", "c", "model_b"), ("b", "c", "model_b")]
