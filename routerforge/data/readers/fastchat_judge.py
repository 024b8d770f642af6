"""LLM-judge labels in FastChat's llm_judge formats (lm-sys/FastChat `fastchat/llm_judge`).

**Single-answer grading** (`model_judgment/<judge>_single.jsonl`, arena-hard-auto's
`data/arena-bench-v1/model_judgment/<model>.jsonl`, RouteLLM's `mt_bench/judgements.jsonl`), one
JSON object per line:

    question_id, model, judge ([judge model, prompt name], optional), user_prompt, judgment,
    score (1-10; FastChat writes -1 when it could not parse one), turn (1 or 2, optional), tstamp

Yields judge-score records (`make_judge_score`):

* score: the `score` field when it is a number in [1, 10]. When it is missing, null or -1 (real
  case: arena-bench-v1 has null scores), the first ``[[N]]`` / ``[[N.N]]`` in `judgment` is used —
  FastChat's own `one_score_pattern` (common.py). FastChat's fallback single-bracket pattern
  ``[N]`` is deliberately not used: it matches list indices in the code answers being judged
  (arena-bench-v1 gpt-4-turbo.jsonl line 288 would score ``[0]``). No rating found:
  `unparseable_score`; a rating outside 1-10: `score_out_of_range`.
* prompt: the question's first turn from `src.questions_path` (FastChat question.jsonl:
  `question_id`, `turns`). Without a questions file it is cut out of `user_prompt`, which FastChat
  fills from its judge templates: ``[Question]\\n{question}\\n\\n[The Start of ...`` (single-v1,
  single-math-v1), ``[User Question]\\n{question}\\n\\n[The Start of ...`` (pair-v2, pair-math-v1) or
  ``### User:\\n{question_1}\\n\\n### Assistant A:`` / ``### Reference answer:`` (multi-turn
  templates). On the bundled arena-bench-v1 and MT-Bench judgements the cut-out text equals the
  question file's first turn for every row. Turn-2 judgements keep the first turn as their prompt
  and carry ``turn=2``; the convert stage uses turn 1 only.
* judge: ``"<model>/<prompt name>"`` from a `[name, template]` list, the string itself, or "unknown".
* model names as in the file; duplicate (question_id, model, turn, judge) rows are `duplicate_id`.

**Pairwise** (`model_judgment/gpt-4_pair.jsonl`), written by FastChat's `play_a_match_pair`:

    question_id, model_1, model_2, g1_winner, g2_winner, judge, g1_user_prompt, g1_judgment,
    g2_user_prompt, g2_judgment, turn, tstamp

Game 1 shows model_1's answer first, game 2 swaps the order; both winners are already mapped back
to model_1 / model_2 / tie, or "error" when the judge gave no verdict. Yields pairs (kind "judge")
with model_a = model_1, model_b = model_2:

* both games agree: that verdict;
* either game is "error": `unparseable_score` (no verdict to use);
* the games disagree (position bias, FastChat's "inconsistent"): with ``convert.inconsistent: drop``
  the row is reported as `inconsistent_verdict` (a bad row, so it is listed with file and line and
  `--strict` flags it); with ``convert.inconsistent: tie`` it becomes a tie — the rule FastChat's
  agreement analysis uses;
* prompt as for single grading (from `questions_path`, else from `g1_user_prompt`);
* turn-2 verdicts (multi-turn templates) are dropped as `later_turn`: a pair carries no turn and the
  router routes on the first user turn;
* a repeated (question_id, model_1, model_2, turn, judge) is `duplicate_id`; self-battles are left to
  the clean stage.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

from routerforge.data.config import SourceConfig
from routerforge.data.readers._io import iter_jsonl, open_bytes, source_inputs
from routerforge.data.records import make_judge_score, make_pair
from routerforge.data.report import Ledger
from routerforge.errors import DataError

# FastChat llm_judge/common.py `one_score_pattern`: the judge is told to answer "Rating: [[5]]".
RATING_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
JUDGE_SCALE = (1.0, 10.0)

# Where FastChat's judge templates put the (first) question, and what follows it.
_QUESTION_TEMPLATES = (
    ("[Question]\n", ("\n\n[The Start of ",)),
    ("[User Question]\n", ("\n\n[The Start of ",)),
    ("### User:\n", ("\n\n### Assistant A:\n", "\n\n### Reference answer:\n")),
)

PAIR_VERDICTS = {"model_1": "model_a", "model_2": "model_b", "tie": "tie"}


def question_from_user_prompt(user_prompt: str) -> str | None:
    """The question FastChat substituted into a judge template, or None if no template matches."""
    found: list[tuple[int, str]] = []
    for opener, closers in _QUESTION_TEMPLATES:
        start = user_prompt.find(opener)
        if start < 0:
            continue
        body = start + len(opener)
        ends = [e for e in (user_prompt.find(c, body) for c in closers) if e >= 0]
        if ends:
            found.append((start, user_prompt[body:min(ends)]))
    # The template text itself comes first, so the earliest opener is the template's, not the question's.
    return min(found)[1] if found else None


def load_questions(path_str: str, source: str) -> dict[str, str]:
    """question_id (as a string) -> first turn, from a FastChat question.jsonl. Whole-file DataError if unusable."""
    path = Path(path_str)
    if not path.is_file():
        raise DataError(f"source '{source}': questions_path '{path}' is not a file; point it at the "
                        f"FastChat question.jsonl of the judged benchmark.")
    questions: dict[str, str] = {}
    with open_bytes(path) as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}:{line_no}: not a UTF-8 JSON object ({exc}); the questions file must be "
                                f"valid JSON lines.") from None
            turns = obj.get("turns") if isinstance(obj, dict) else None
            if not isinstance(obj, dict) or "question_id" not in obj or not isinstance(turns, list) or not turns \
                    or not isinstance(turns[0], str):
                raise DataError(f"{path}:{line_no}: a question needs `question_id` and `turns` (a list of strings).")
            qid = str(obj["question_id"])
            if qid in questions:
                raise DataError(f"{path}:{line_no}: question_id {qid} repeated; question ids must be unique.")
            questions[qid] = turns[0]
    return questions


def judge_name(value: object) -> str | None:
    """"model/template" from FastChat's [model, template] pair, a string as is, "unknown" when absent."""
    if value is None:
        return "unknown"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "/".join(value)
    return None


def _turn(value: object) -> int | None:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) not in (1.0, 2.0):
        return None
    return int(value)  # arena-bench-v1 writes turn as 1.0


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _resolve_prompt(obj: dict, questions: dict[str, str] | None, prompt_field: str
                    ) -> tuple[str | None, str, str]:
    """(prompt, field, detail): the prompt or None with the field and reason it is missing."""
    qid = str(obj["question_id"])
    if questions is not None:
        if qid not in questions:
            return None, "question_id", f"question_id {qid} is not in the questions file"
        return questions[qid], "question_id", ""
    user_prompt = obj.get(prompt_field)
    if not isinstance(user_prompt, str):
        return None, prompt_field, f"no {prompt_field} to take the question from; set questions_path"
    prompt = question_from_user_prompt(user_prompt)
    if prompt is None:
        return None, prompt_field, (f"{prompt_field} follows no FastChat judge template ([Question] / "
                                    f"[User Question] / ### User:); set questions_path")
    return prompt, prompt_field, ""


def read_fastchat_single_judge(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    questions = load_questions(src.questions_path, src.name) if src.questions_path else None
    lo, hi = JUDGE_SCALE
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        seen: set[tuple] = set()
        for line_no, obj in iter_jsonl(path, src.name, ledger):

            def bad(reason: str, detail: str, field: str | None = None, _f: str = file, _l: int = line_no) -> None:
                ledger.bad(src.name, _f, _l, reason, detail, field)

            missing = [k for k in ("question_id", "model") if obj.get(k) is None]
            if missing:
                bad("missing_field", f"missing {', '.join(missing)}", missing[0])
                continue
            model = obj["model"]
            if not isinstance(model, str) or not model.strip():
                bad("wrong_type", "model must be a non-empty string", "model")
                continue
            turn = _turn(obj.get("turn"))
            if turn is None:
                bad("wrong_type", f"turn must be 1 or 2, got {obj.get('turn')!r}", "turn")
                continue
            judge = judge_name(obj.get("judge"))
            if judge is None:
                bad("wrong_type", "judge must be a [model, template] list or a string", "judge")
                continue
            # Score: the recorded number, else the judge's own [[rating]] in the judgment text.
            raw_score = obj.get("score")
            score = _number(raw_score)
            if raw_score is not None and score is None:
                bad("wrong_type", f"score must be a number, got {raw_score!r}", "score")
                continue
            if score is not None and score != -1:
                if not lo <= score <= hi:
                    bad("score_out_of_range", f"score {raw_score} is outside the judge's 1-10 scale", "score")
                    continue
            else:
                judgment = obj.get("judgment")
                match = RATING_PATTERN.search(judgment) if isinstance(judgment, str) else None
                if match is None:
                    bad("unparseable_score", f"score is {raw_score!r} and the judgment holds no [[rating]]", "score")
                    continue
                score = float(match.group(1))
                if not lo <= score <= hi:
                    bad("score_out_of_range", f"judgment rating [[{match.group(1)}]] is outside 1-10", "judgment")
                    continue
            prompt, field, detail = _resolve_prompt(obj, questions, "user_prompt")
            if prompt is None:
                bad("missing_field", detail, field)
                continue
            if not prompt.strip():
                bad("empty_prompt", f"question {obj['question_id']} has an empty first turn", field)
                continue
            key = (str(obj["question_id"]), model, turn, judge)
            if key in seen:
                bad("duplicate_id", f"question {key[0]}, model {model}, turn {turn}, judge {judge} repeated",
                    "question_id")
                continue
            seen.add(key)
            ledger.count(src.name, "read", kept=1)
            yield make_judge_score(prompt=prompt, model=model, judge_score=score, turn=turn, judge=judge,
                                   source=src.name, source_file=file, source_line=line_no,
                                   source_id=str(obj["question_id"]))
            n_valid += 1
            if src.max_rows is not None and n_valid >= src.max_rows:
                return


def read_fastchat_pair_judge(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    questions = load_questions(src.questions_path, src.name) if src.questions_path else None
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        seen: set[tuple] = set()
        for line_no, obj in iter_jsonl(path, src.name, ledger):

            def bad(reason: str, detail: str, field: str | None = None, _f: str = file, _l: int = line_no) -> None:
                ledger.bad(src.name, _f, _l, reason, detail, field)

            missing = [k for k in ("question_id", "model_1", "model_2", "g1_winner", "g2_winner") if obj.get(k) is None]
            if missing:
                bad("missing_field", f"missing {', '.join(missing)}", missing[0])
                continue
            model_1, model_2, g1, g2 = obj["model_1"], obj["model_2"], obj["g1_winner"], obj["g2_winner"]
            if not isinstance(model_1, str) or not isinstance(model_2, str) or not model_1 or not model_2:
                bad("wrong_type", "model_1 and model_2 must be non-empty strings", "model_1")
                continue
            turn = _turn(obj.get("turn"))
            if turn is None:
                bad("wrong_type", f"turn must be 1 or 2, got {obj.get('turn')!r}", "turn")
                continue
            judge = judge_name(obj.get("judge"))
            if judge is None:
                bad("wrong_type", "judge must be a [model, template] list or a string", "judge")
                continue
            if turn != 1:
                # A turn-2 verdict judges the answers to the second question; a pair has no turn, and the
                # router sees the first user turn only (as in the convert stage's judge rules).
                ledger.count(src.name, "read", dropped={"later_turn": 1})
                continue
            unknown = [(f, v) for f, v in (("g1_winner", g1), ("g2_winner", g2)) if v not in (*PAIR_VERDICTS, "error")]
            if unknown:
                bad("unknown_winner", f"{unknown[0][0]} {unknown[0][1]!r}, expected model_1, model_2, tie or error",
                    unknown[0][0])
                continue
            errors = [f for f, v in (("g1_winner", g1), ("g2_winner", g2)) if v == "error"]
            if errors:
                bad("unparseable_score", f"the judge gave no verdict ({errors[0]} is 'error')", errors[0])
                continue
            if g1 == g2:
                winner = PAIR_VERDICTS[g1]
            elif src.convert.inconsistent == "tie":
                winner = "tie"
            else:
                bad("inconsistent_verdict", f"g1_winner {g1} but g2_winner {g2} with the answer order swapped",
                    "g2_winner")
                continue
            prompt, field, detail = _resolve_prompt(obj, questions, "g1_user_prompt")
            if prompt is None:
                bad("missing_field", detail, field)
                continue
            if not prompt.strip():
                bad("empty_prompt", f"question {obj['question_id']} has an empty first turn", field)
                continue
            key = (str(obj["question_id"]), model_1, model_2, turn, judge)
            if key in seen:
                bad("duplicate_id", f"question {key[0]}, {model_1} vs {model_2}, turn {turn}, judge {judge} "
                    "repeated", "question_id")
                continue
            seen.add(key)
            ledger.count(src.name, "read", kept=1)
            yield make_pair(prompt=prompt, model_a=model_1, model_b=model_2, winner=winner, source=src.name,
                            kind="judge", weight=src.weight, language=None, source_file=file,
                            source_line=line_no, source_id=str(obj["question_id"]))
            n_valid += 1
            if src.max_rows is not None and n_valid >= src.max_rows:
                return
