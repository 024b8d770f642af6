"""RouteLLM's GPT-4-judge dataset (Hub: routellm/gpt4_dataset; Ong et al. 2024, RouteLLM, section 3.2).

JSON lines (or the Hub dataset: splits train, 109,101 rows, and validation, 10,000), one prompt per row:

    prompt, source (the instruction set it came from), gpt4_response, mixtral_response,
    mixtral_score (1-5: GPT-4's grade of Mixtral-8x7B's answer)

Only the weak model's answer is graded, so each row yields one judge-score record for the weak model
(`convert.weak`, default mistralai/Mixtral-8x7B-Instruct-v0.1) at turn 1 with judge "gpt-4". RouteLLM
turns these into (strong, weak) pairs with its threshold rule: a grade of 4 or 5 is a weak win
(``convert: {rule: routellm_threshold, strong: gpt-4-1106-preview, weak: ..., threshold: 4}``).

There is no id column: source_id is the 0-based row index (line - 1 in a file, row - 1 on the Hub). A
missing prompt or grade is `missing_field`, a grade that is not a number is `wrong_type`, one outside
1-5 `score_out_of_range`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from routerforge.data.config import SourceConfig
from routerforge.data.readers._io import iter_jsonl, source_inputs
from routerforge.data.records import make_judge_score
from routerforge.data.report import Ledger

DEFAULT_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
GRADE_SCALE = (1.0, 5.0)


def read_routellm_gpt4_judge(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    weak = src.convert.weak or DEFAULT_WEAK
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        for line_no, obj in iter_jsonl(path, src.name, ledger):

            def bad(reason: str, detail: str, field: str | None = None, _f: str = file, _l: int = line_no) -> None:
                ledger.bad(src.name, _f, _l, reason, detail, field)

            missing = [k for k in ("prompt", "mixtral_score") if obj.get(k) is None]
            if missing:
                bad("missing_field", f"missing {', '.join(missing)}", missing[0])
                continue
            prompt, grade = obj["prompt"], obj["mixtral_score"]
            if not isinstance(prompt, str):
                bad("wrong_type", f"prompt must be a string, got {type(prompt).__name__}", "prompt")
                continue
            if not prompt.strip():
                bad("empty_prompt", "the prompt is empty", "prompt")
                continue
            if isinstance(grade, bool) or not isinstance(grade, (int, float)):
                bad("wrong_type", f"mixtral_score {grade!r}, expected a grade 1-5", "mixtral_score")
                continue
            if not math.isfinite(grade) or not GRADE_SCALE[0] <= grade <= GRADE_SCALE[1]:
                bad("score_out_of_range", f"mixtral_score {grade!r}, expected a grade 1-5", "mixtral_score")
                continue
            ledger.count(src.name, "read", kept=1)
            yield make_judge_score(prompt=prompt, model=weak, judge_score=float(grade), turn=1, judge="gpt-4",
                                   source=src.name, source_file=file, source_line=line_no, source_id=str(line_no - 1))
            n_valid += 1
            if src.max_rows is not None and n_valid >= src.max_rows:
                return
