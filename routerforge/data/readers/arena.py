"""Chatbot Arena battles in the conversation schema (FastChat / arena_hard_1k question_original.jsonl).

One JSON object per line:
    question_id, model_a, model_b, winner (model_a | model_b | tie | tie (bothbad)), judge, turn,
    anony, language, tstamp, turns (list of the user's turns)
The router sees the first user turn (as RouteLLM does); the number of turns is kept in provenance only.
"""

from __future__ import annotations

from collections.abc import Iterator

from routerforge.data.config import SourceConfig
from routerforge.data.readers._io import iter_jsonl, source_inputs
from routerforge.data.records import make_pair
from routerforge.data.report import Ledger

ARENA_WINNERS = {"model_a": "model_a", "model_b": "model_b", "tie": "tie", "tie (bothbad)": "tie_bothbad",
                 "tie_bothbad": "tie_bothbad"}


def first_user_turn(turns: object) -> str | None:
    """The first user message of `turns`: a list of strings, or of {role, content} messages."""
    if isinstance(turns, str):
        return turns
    if not isinstance(turns, list) or not turns:
        return None
    for turn in turns:
        if isinstance(turn, str):
            return turn
        if isinstance(turn, dict) and turn.get("role", "user") == "user" and isinstance(turn.get("content"), str):
            return turn["content"]
    return None


def read_arena_conversations(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    n_valid = 0
    for path in source_inputs(src):
        seen_ids: set[str] = set()
        for line_no, obj in iter_jsonl(path, src.name, ledger):
            file = str(path)

            def bad(reason: str, detail: str, field: str | None = None, _l: int = line_no, _f: str = file) -> None:
                ledger.bad(src.name, _f, _l, reason, detail, field)

            missing = [k for k in ("question_id", "model_a", "model_b", "winner", "turns") if k not in obj]
            if missing:
                bad("missing_field", f"missing {', '.join(missing)}", missing[0])
                continue
            qid, model_a, model_b, winner = obj["question_id"], obj["model_a"], obj["model_b"], obj["winner"]
            if not isinstance(model_a, str) or not isinstance(model_b, str):
                bad("wrong_type", "model_a and model_b must be strings", "model_a")
                continue
            if winner not in ARENA_WINNERS:
                bad("unknown_winner", f"winner {winner!r}", "winner")
                continue
            prompt = first_user_turn(obj["turns"])
            if prompt is None:
                bad("wrong_type", "turns must be a non-empty list of strings or {role, content} messages", "turns")
                continue
            if str(qid) in seen_ids:
                bad("duplicate_id", f"question_id {qid} repeated", "question_id")
                continue
            seen_ids.add(str(qid))
            if src.anony_only and obj.get("anony") is not True:
                ledger.count(src.name, "read", dropped={"not_anonymous": 1})
                continue
            ledger.count(src.name, "read", kept=1)
            language = obj.get("language") if isinstance(obj.get("language"), str) else None
            yield make_pair(prompt=prompt, model_a=model_a, model_b=model_b, winner=ARENA_WINNERS[winner],
                            source=src.name, kind="arena", weight=src.weight, language=language,
                            source_file=file, source_line=line_no, source_id=str(qid))
            n_valid += 1
            if src.max_rows is not None and n_valid >= src.max_rows:
                return
