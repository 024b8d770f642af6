"""The judge templates are FastChat's, byte for byte, and the parsers agree with the scores FastChat
recorded: checked on the real GPT-4 MT-Bench judgements bundled in data/routellm/mt_bench."""

from __future__ import annotations

import json
import re

import pytest

from routerforge.label import templates

_ANSWER = re.compile(r"\[Question\]\n(.*)\n\n\[The Start of Assistant's Answer\]\n(.*)"
                     r"\n\[The End of Assistant's Answer\]$", re.S)


def _mt_bench(data_dir, template: str) -> list[dict]:
    rows = [json.loads(line) for line in (data_dir / "routellm" / "mt_bench" / "judgements.jsonl").open()]
    return [r for r in rows if r["judge"] == ["gpt-4", template]]


def test_single_template_is_fastchat_single_v1(data_dir):
    rows = _mt_bench(data_dir, "single-v1")
    assert len(rows) == 100
    for row in rows:
        question, answer = _ANSWER.search(row["user_prompt"]).groups()
        assert templates.single_messages(question, answer)[-1]["content"] == row["user_prompt"]


def test_grade_parser_agrees_with_the_recorded_gpt4_scores(data_dir):
    rows = [r for t in ("single-v1", "single-math-v1", "single-v1-multi-turn") for r in _mt_bench(data_dir, t)]
    graded = [r for r in rows if r["score"] != -1]
    assert len(graded) >= 250
    assert [templates.parse_grade(r["judgment"]) for r in graded] == [float(r["score"]) for r in graded]
    assert templates.parse_grade("It is fine. Rating: [0]") is None  # FastChat's [N] fallback is not used
    assert templates.parse_grade("Rating: [[11]]") is None
    assert templates.grade_to_score(1.0) == 0.0 and templates.grade_to_score(10.0) == 1.0


@pytest.mark.parametrize(("judgment", "verdict"), [
    ("A is more accurate.\n\n[[A]]", "A"), ("Final verdict: [[B]]", "B"), ("Equally good. [[C]]", "C"),
    ("I prefer the first one.", "error"), ("[A] is better", "error")])
def test_pair_verdict_parser(judgment, verdict):
    assert templates.parse_pair_verdict(judgment) == verdict


@pytest.mark.parametrize(("answer", "reference", "match"), [
    ("She sold 48 + 24 = 72 clips in total.", "48/2 = 24\n48+24 = 72\n#### 72", True),
    ("The total is 1,250.", "#### 1250", True),
    ("So the answer is 71.", "#### 72", False),
    ("No number here.", "#### 72", False),
    ("Paris.", "paris", True),
    ("Lyon", "Paris", False),
])
def test_reference_match(answer, reference, match):
    assert templates.reference_match(answer, reference, tolerance=1e-6) is match
