"""Explicit conversions to preference pairs (the `convert` stage).

All conversions work on the records of one prompt at a time (`groups`: records sorted by prompt_id)
and report, per source, how many input rows they consumed (stage "convert": kept / dropped by reason,
`made` = pairs produced) and what happened to the pairs they made (stage "pairs": ties dropped or kept).

Rules (config `convert.rule`):

* ``outcome_pairs`` — every two models with an outcome on the same prompt make a pair; the higher
  score wins; a difference of at most `margin` is a tie (``tie_bothbad`` when both scored 0, as
  Arena labels two bad answers). Gold labels from benchmark outcomes (RouteLLM §3.2 augments Arena
  with MMLU-derived gold pairs the same way).
* ``routellm_threshold`` — RouteLLM's judge rule (arXiv 2406.18665, §3.2 "LLM judge"): only the weak
  model's judge score matters; at or above `threshold` the weak model wins the (strong, weak) pair,
  below it the strong model wins. Rows of other models are dropped as ``not_in_pair``.
* ``judge_score_pairs`` — like outcome_pairs on the judge's 1-10 score of every judged model.

Judge conversions use turn 1 only (the router routes on the first user turn); later turns are
counted as ``later_turn`` drops.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from routerforge.data.config import SourceConfig
from routerforge.data.records import make_pair
from routerforge.data.report import Ledger


def groups_by_prompt(records: Iterable[dict]) -> Iterator[list[dict]]:
    """Consecutive records with the same prompt_id (input must be sorted by prompt_id)."""
    for _, group in itertools.groupby(records, key=lambda r: r["prompt_id"]):
        yield list(group)


def _pair(first: dict, model_a: str, model_b: str, winner: str, src: SourceConfig, kind: str) -> dict:
    return make_pair(prompt=first["prompt"], model_a=model_a, model_b=model_b, winner=winner,
                     source=src.name, kind=kind, weight=src.weight, language=None,
                     source_file=first["source_file"], source_line=first["source_line"],
                     source_id=first["source_id"])


def _score_pairs(group: list[dict], field: str, src: SourceConfig, ledger: Ledger, kind: str,
                 zero: float) -> Iterator[dict]:
    """All-pairs comparison on `field`; `zero` is the scale's worst score (both at it -> tie_bothbad)."""
    # One row per model (the clean stage already drops duplicate (prompt, model) rows; this keeps the
    # conversion correct when it is called on uncleaned rows, e.g. MMLU repeats some questions).
    first_by_model: dict[str, dict] = {}
    for row in group:
        first_by_model.setdefault(row["model"], row)
    if len(first_by_model) != len(group):
        ledger.count(src.name, "convert", dropped={"duplicate_row": len(group) - len(first_by_model)})
    rows = sorted(first_by_model.values(), key=lambda r: r["model"])
    if len(rows) < 2:
        ledger.count(src.name, "convert", dropped={"single_model": len(rows)})
        return
    ledger.count(src.name, "convert", kept=len(rows))
    cfg = src.convert
    n_made = n_tie_dropped = 0
    for a, b in itertools.combinations(rows, 2):
        diff = a[field] - b[field]
        if abs(diff) <= cfg.margin:
            if cfg.ties == "drop":
                n_tie_dropped += 1
                continue
            winner = "tie_bothbad" if max(a[field], b[field]) <= zero else "tie"
        else:
            winner = "model_a" if diff > 0 else "model_b"
        n_made += 1
        yield _pair(a, a["model"], b["model"], winner, src, kind)
    ledger.count(src.name, "convert", made=n_made + n_tie_dropped)
    ledger.count(src.name, "pairs", kept=n_made, dropped={"tie": n_tie_dropped})


def outcome_pairs(groups: Iterable[list[dict]], src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    for group in groups:
        yield from _score_pairs(group, "score", src, ledger, "gold", zero=0.0)


def _first_turn(group: list[dict], src: SourceConfig, ledger: Ledger) -> list[dict]:
    first = [r for r in group if r["turn"] == 1]
    if len(first) != len(group):
        ledger.count(src.name, "convert", dropped={"later_turn": len(group) - len(first)})
    return first


def judge_score_pairs(groups: Iterable[list[dict]], src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    for group in groups:
        yield from _score_pairs(_first_turn(group, src, ledger), "judge_score", src, ledger, "judge", zero=1.0)


def routellm_threshold_pairs(groups: Iterable[list[dict]], src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    cfg = src.convert
    for group in groups:
        rows = _first_turn(group, src, ledger)
        weak = [r for r in rows if r["model"] == cfg.weak]
        others = len(rows) - len(weak)
        if others:
            ledger.count(src.name, "convert", dropped={"not_in_pair": others})
        if not weak:
            continue
        ledger.count(src.name, "convert", kept=1, made=1, dropped={"duplicate_judgement": len(weak) - 1})
        ledger.count(src.name, "pairs", kept=1)
        row = weak[0]
        winner = "model_b" if row["judge_score"] >= cfg.threshold else "model_a"
        yield _pair(row, cfg.strong, cfg.weak, winner, src, "judge")


CONVERTERS = {
    "outcome_pairs": outcome_pairs,
    "judge_score_pairs": judge_score_pairs,
    "routellm_threshold": routellm_threshold_pairs,
}
