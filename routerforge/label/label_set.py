"""The label set: a versioned directory in formats `routerforge prep` already reads.

    <output_root>/<name>/LATEST
    <output_root>/<name>/<version>/
        outcomes.jsonl          long outcome table (source kind `outcomes`): prompt_id, prompt, model,
                                score in [0, 1], cost (USD of the answer), input_tokens, output_tokens, task
        judgments/single.jsonl  FastChat single-answer judgements (kind `fastchat_single_judge`), mode single
        judgments/pair.jsonl    FastChat pairwise judgements, both orders (kind `fastchat_pair_judge`), mode pairwise
        questions.jsonl         FastChat question file (question_id, turns) for the judge sources' questions_path
        answers.jsonl           every candidate answer with its token counts and cost
        report.json             bad prompt rows by reason, unparseable judge outputs (kept, with their text),
                                failed calls
        manifest.json           provenance: judge model, mode, template version, candidates (models, prices,
                                generation settings), prompts file, counts, cost; sha256 of every file.
                                Run settings (spend cap, cache path) are not label provenance and are not
                                written, so the same labels are the same bytes however they were reached
        COMPLETE

Outcome scores: `single` maps the judge's 1-10 grade linearly to [0, 1]; `reference` is 1 for a match
and 0 otherwise; `pairwise` is the model's mean points over its judged pairs on that prompt (win 1,
tie 0.5, loss 0; a verdict that flips with the answer order is a tie, or left out with
`judge.inconsistent: drop`; a game without a verdict leaves the pair out). Use either the outcome
table or the judge file of one label set as a training source, not both: they hold the same labels.

The directory is built aside and renamed into place (`write_dataset_dir`), and its content depends
only on the calls' replies, never on when or in how many runs they were made: a resumed run writes
the same bytes (so the FastChat files carry no `tstamp`; the readers do not need one).
"""

from __future__ import annotations

import json
from pathlib import Path

from routerforge.data.dataset_io import write_dataset_dir
from routerforge.data.report import Ledger
from routerforge.label import templates
from routerforge.label.config import LabelConfig
from routerforge.label.prompts import PromptRow
from routerforge.label.results import Results, RunStats

LABEL_FORMAT_VERSION = 1
PAIR_WINNERS = {1: {"A": "model_1", "B": "model_2", "C": "tie"}, 2: {"A": "model_2", "B": "model_1", "C": "tie"}}
FASTCHAT_TEMPLATE_NAMES = {"single": "single-v1", "pairwise": "pair-v2"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _outcome(row: PromptRow, model: str, score: float, cfg: LabelConfig, results: Results) -> dict:
    answer = results.answers[(row.prompt_id, model)]
    candidate = next(c for c in cfg.candidates if c.name == model)
    return {"prompt_id": row.prompt_id, "prompt": row.prompt, "model": model, "score": round(score, 6),
            "cost": candidate.cost_usd(answer.input_tokens, answer.output_tokens),
            "input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens, "task": row.task}


def build_rows(cfg: LabelConfig, prompts: list[PromptRow], results: Results) -> dict:
    """outcomes, judge rows and unparseable judge outputs, in prompt order then candidate order."""
    mode, names = cfg.judge.mode, [c.name for c in cfg.candidates]
    judge_name = [cfg.judge.endpoint.model or cfg.judge.endpoint.name, FASTCHAT_TEMPLATE_NAMES.get(mode, "")]
    outcomes, judge_rows, unparseable = [], [], []
    for row in prompts:
        if mode == "reference":
            for model in names:
                answer = results.answers.get((row.prompt_id, model))
                if answer is not None:
                    match = templates.reference_match(answer.text, row.reference or "", cfg.judge.numeric_tolerance)
                    outcomes.append(_outcome(row, model, float(match), cfg, results))
        elif mode == "single":
            for model in names:
                judged = results.judgments.get((row.prompt_id, model))
                if judged is None:
                    continue
                messages, reply = judged
                grade = templates.parse_grade(reply.text)
                if grade is None:
                    unparseable.append({"prompt_id": row.prompt_id, "model": model, "judgment": reply.text,
                                        "reason": "no [[rating]] between 1 and 10"})
                    continue
                outcomes.append(_outcome(row, model, templates.grade_to_score(grade), cfg, results))
                judge_rows.append({"question_id": row.prompt_id, "model": model, "judge": judge_name,
                                   "user_prompt": messages[-1]["content"], "judgment": reply.text, "score": grade,
                                   "turn": 1})
        else:
            points: dict[str, list[float]] = {}
            for i, first in enumerate(names):
                for second in names[i + 1:]:
                    games = [results.judgments.get((row.prompt_id, first, second, g)) for g in (1, 2)]
                    if any(g is None for g in games):
                        continue
                    winners = []
                    for game, (_, reply) in zip((1, 2), games, strict=True):
                        verdict = templates.parse_pair_verdict(reply.text)
                        if verdict == "error":
                            unparseable.append({"prompt_id": row.prompt_id, "model_1": first, "model_2": second,
                                                "game": game, "judgment": reply.text,
                                                "reason": "no [[A]], [[B]] or [[C]] verdict"})
                        winners.append(PAIR_WINNERS[game].get(verdict, "error"))
                    if "error" in winners:
                        continue
                    judge_rows.append({
                        "question_id": row.prompt_id, "model_1": first, "model_2": second,
                        "g1_winner": winners[0], "g2_winner": winners[1], "judge": judge_name,
                        "g1_user_prompt": games[0][0][-1]["content"], "g1_judgment": games[0][1].text,
                        "g2_user_prompt": games[1][0][-1]["content"], "g2_judgment": games[1][1].text,
                        "turn": 1})
                    if winners[0] != winners[1] and cfg.judge.inconsistent == "drop":
                        continue
                    winner = winners[0] if winners[0] == winners[1] else "tie"
                    first_points = {"model_1": 1.0, "model_2": 0.0, "tie": 0.5}[winner]
                    points.setdefault(first, []).append(first_points)
                    points.setdefault(second, []).append(1.0 - first_points)
            for model in names:
                if model in points:
                    outcomes.append(_outcome(row, model, sum(points[model]) / len(points[model]), cfg, results))
    return {"outcomes": outcomes, "judge_rows": judge_rows, "unparseable": unparseable}


def write_label_set(cfg: LabelConfig, version: str, prompts: list[PromptRow], results: Results,
                    stats: RunStats, ledger: Ledger) -> Path:
    rows = build_rows(cfg, prompts, results)
    mode = cfg.judge.mode
    answers = [{"prompt_id": row.prompt_id, "model": c.name, "answer": reply.text,
                "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                "cost": c.cost_usd(reply.input_tokens, reply.output_tokens)}
               for row in prompts for c in cfg.candidates
               if (reply := results.answers.get((row.prompt_id, c.name))) is not None]
    judge_cost = sum(cfg.judge.endpoint.cost_usd(reply.input_tokens, reply.output_tokens)
                     for _, reply in results.judgments.values())

    def fill(tmp: Path) -> dict:
        _write_jsonl(tmp / "outcomes.jsonl", rows["outcomes"])
        _write_jsonl(tmp / "answers.jsonl", answers)
        if mode != "reference":
            _write_jsonl(tmp / "judgments" / ("single.jsonl" if mode == "single" else "pair.jsonl"), rows["judge_rows"])
            _write_jsonl(tmp / "questions.jsonl", [{"question_id": r.prompt_id, "turns": [r.prompt]} for r in prompts])
        report = {"prompt_rows": ledger.stats(), "bad_prompt_rows": ledger.bad_counts(),
                  "bad_prompt_row_list": [bad.format() for bad in ledger.bad_rows],
                  "unparseable_judgments": len(rows["unparseable"]), "unparseable": rows["unparseable"],
                  "failed_calls": len(stats.failures), "failures": stats.failures}
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False),
                                         encoding="utf-8")
        judge = cfg.judge.endpoint
        return {
            "kind": "label_set", "format_version": LABEL_FORMAT_VERSION, "name": cfg.name, "version": version,
            "mode": mode, "template_version": templates.template_version(mode),
            "judge": None if mode == "reference" else {
                "name": judge.name, "kind": judge.kind, "model": judge.model or Path(judge.model_path).name,
                "fastchat_template": FASTCHAT_TEMPLATE_NAMES[mode], "generation": judge.generation.request_params()},
            "candidates": [{"name": c.name, "kind": c.kind, "model": c.model or Path(c.model_path).name,
                            "input_usd_per_m": c.input_usd_per_m, "output_usd_per_m": c.output_usd_per_m,
                            "generation": c.generation.request_params()} for c in cfg.candidates],
            "prompts": {"path": cfg.prompts, "count": len(prompts)},
            "counts": {"answers": len(answers), "outcomes": len(rows["outcomes"]),
                       "judge_rows": len(rows["judge_rows"]), "unparseable_judgments": len(rows["unparseable"]),
                       "failed_calls": len(stats.failures)},
            "cost_usd": {"answers": sum(a["cost"] for a in answers), "judge": judge_cost},
        }

    return write_dataset_dir(Path(cfg.output_root) / cfg.name, version, fill)
