"""AlpacaEval judge annotations (tatsu-lab/alpaca_eval ``results/<model>/<annotator>/annotations.json``).

One JSON array per file, one object per (instruction, model) judgement, as AlpacaEval writes it:

    instruction, dataset, generator_1, generator_2, annotator, preference
    (+ output_1 / output_2, price_per_example, time_per_example, ... which are not read)

`generator_1` is the baseline (gpt4_1106_preview for AlpacaEval 2.0), `generator_2` the evaluated model.
`preference` is in [1, 2]: 1 = generator_1's answer is better, 2 = generator_2's. The weighted
annotators (``weighted_alpaca_eval_gpt4_turbo``, AlpacaEval 2.0's default) write the judge's
probability from its token log-probabilities, ``preference = 1 + P(generator_2 better)``, so most
values are fractional (alpaca_eval's README and its ``weighted_alpaca_eval_gpt4_turbo`` config).

Mapping to a preference pair (kind "judge"), keeping the probability as a soft label:

* model_a = generator_1, model_b = generator_2, prompt = instruction;
* ``p_model_a_wins = 2 - preference`` (not rounded); `winner` is its rounding (model_a above 0.5,
  model_b below, tie at exactly 0.5), so tools that read only `winner` still work;
* source_line = the line the judgement's object starts on (the files are pretty-printed JSON),
  source_id = its 0-based position in the array;
* malformed judgements are reported with file and line: a missing or null field (`missing_field`; a
  null preference is what AlpacaEval writes when the judge gave no verdict), a field of the wrong type
  (`wrong_type`), a preference outside [1, 2] or NaN / infinite (`score_out_of_range`), an item that is
  not an object (`not_an_object`), the same (instruction, generator_1, generator_2) twice in one file
  (`duplicate_id`). A model judged against itself (gpt4_1106_preview's own file) is left to the clean
  stage, which reports it as a `self_battle`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from routerforge.data.config import SourceConfig
from routerforge.data.readers._io import iter_json_array, source_inputs
from routerforge.data.readers.arena_kaggle import utf8_encodable
from routerforge.data.records import make_pair
from routerforge.data.report import Ledger

REQUIRED = ("instruction", "generator_1", "generator_2", "preference")


def soft_winner(p_model_a_wins: float) -> str:
    """The hard label a soft one rounds to."""
    if p_model_a_wins > 0.5:
        return "model_a"
    if p_model_a_wins < 0.5:
        return "model_b"
    return "tie"


def read_alpaca_eval_annotations(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        seen: set[tuple[str, str, str]] = set()
        for index, (line_no, item) in enumerate(iter_json_array(path, src.name)):

            def bad(reason: str, detail: str, field: str | None = None, _f: str = file, _l: int = line_no) -> None:
                ledger.bad(src.name, _f, _l, reason, detail, field)

            if not isinstance(item, dict):
                bad("not_an_object", f"item {index} is a {type(item).__name__}")
                continue
            missing = [k for k in REQUIRED if item.get(k) is None]
            if missing:
                bad("missing_field", f"missing {', '.join(missing)}", missing[0])
                continue
            instruction, model_a, model_b = item["instruction"], item["generator_1"], item["generator_2"]
            wrong = [k for k in ("instruction", "generator_1", "generator_2") if not isinstance(item[k], str)]
            if wrong:
                bad("wrong_type", f"{wrong[0]} must be a string, got {type(item[wrong[0]]).__name__}", wrong[0])
                continue
            preference = item["preference"]
            if isinstance(preference, bool) or not isinstance(preference, (int, float)):
                bad("wrong_type", f"preference {preference!r}, expected a number in [1, 2]", "preference")
                continue
            if not math.isfinite(preference) or not 1.0 <= preference <= 2.0:
                bad("score_out_of_range", f"preference {preference!r}, expected a number in [1, 2]", "preference")
                continue
            if not instruction.strip():
                bad("empty_prompt", "the instruction is empty", "instruction")
                continue
            if not utf8_encodable(instruction):
                bad("not_utf8", "the instruction holds a lone UTF-16 surrogate escape", "instruction")
                continue
            key = (instruction, model_a, model_b)
            if key in seen:
                bad("duplicate_id", f"instruction judged twice for {model_a} vs {model_b}", "instruction")
                continue
            seen.add(key)
            p_model_a_wins = 2.0 - float(preference)
            ledger.count(src.name, "read", kept=1)
            yield make_pair(prompt=instruction, model_a=model_a, model_b=model_b, winner=soft_winner(p_model_a_wins),
                            source=src.name, kind="judge", weight=src.weight, language=None,
                            p_model_a_wins=p_model_a_wins, source_file=file, source_line=line_no,
                            source_id=str(index))
            n_valid += 1
            if src.max_rows is not None and n_valid >= src.max_rows:
                return
