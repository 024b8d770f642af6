"""Outcome tables: which model got which prompt right (or how well), one outcome per (prompt, model).

Four formats, each yielding `make_outcome` records (score in [0, 1]):

* `read_routellm_csv` — RouteLLM `routellm/evals` response CSVs (lm-sys/RouteLLM): header
  ``prompt,<model>,<model>[,<model>_response,...]``, one row per benchmark question, a ``True`` /
  ``False`` correctness cell per model (score 1.0 / 0.0; any other cell is `wrong_type` for that
  model). Quoted prompts span several lines; source_line is the row's first physical line. The CSVs
  have no id column: source_id is the row's 0-based data-row index (as ``pandas.read_csv`` numbers
  it). task = `src.task`, else from the file name: ``mmlu_<subject>.csv`` -> ``mmlu/<subject>``,
  ``<name>_responses.csv`` -> ``<name>`` (``gsm8k_responses.csv`` -> ``gsm8k``), else the file stem.
  These files have no ids; a question that repeats (real MMLU test has exact repeats, e.g. 11 in
  college_physics) is passed on, and the clean stage drops the repeat as a `duplicate_row`.
* `read_llmrouter_json` — LLMRouter `dcrouter_*.json` (ulab-uiuc/LLMRouter): one JSON array of
  ``{question, scores: {model: score}, cluster_id}``. A JSON array has no lines, so source_line is
  the item's 1-based position in the array and source_id its 0-based index (``data[i]``). task =
  `src.task` (the file carries only a cluster number, not a task name).
* `read_zeroeval_summary` — ZeroEval `task_summary_<task>.json` (yuchenlin/ZeroEval): one JSON object
  ``{item_id: {correct_models: "a|b", incorrect_models: "c|d", correct_ratio}}``; the prompts come
  from `src.questions_path` (JSON lines with `session_id`, `prompt`, `task`), keyed by item id. An
  item without a prompt there is `missing_field`; a model listed twice in one item is `duplicate_id`.
  source_line = the item's 1-based position in the object, source_id = the item id. task =
  `src.task`, else the prompt file's `task`.
* `read_outcomes` — the generic long table a user brings, JSON lines (``.jsonl``) or CSV (``.csv``):
  ``prompt_id, prompt, model, score`` (0..1) and optional ``cost`` (USD), ``input_tokens``,
  ``output_tokens``, ``task`` (``.jsonl.gz`` / ``.csv.gz`` are read as they are). One row is one
  outcome; a repeated (prompt_id, model) in a file is `duplicate_id`.

Accounting unit: the read stage counts one input per (prompt, model) cell, so a row of a
multi-model table is as many inputs as it has model cells; a problem with the whole row (no prompt)
is reported once as a bad row and drops all its cells under that reason. An item whose cells cannot
be told (a CSV row with the wrong number of columns, a JSON item that is not an object or has no
usable `scores` / model lists) counts as one input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

from routerforge.data.config import SourceConfig
from routerforge.data.hub_source import HubInput
from routerforge.data.readers._io import (
    data_stem,
    data_suffix,
    iter_csv,
    iter_jsonl,
    load_json,
    open_bytes,
    source_inputs,
)
from routerforge.data.records import make_outcome
from routerforge.data.report import Ledger
from routerforge.errors import DataError

ROUTELLM_CELLS = {"True": 1.0, "False": 0.0}
OUTCOME_COLUMNS = ["prompt_id", "prompt", "model", "score"]


def _drop_row(ledger: Ledger, source: str, file: str, line: int, reason: str, detail: str, field: str | None,
              n_cells: int) -> None:
    """Report a whole-row problem once and drop all `n_cells` outcomes of the row under `reason`."""
    ledger.bad(source, file, line, reason, detail, field)
    if n_cells > 1:
        ledger.count(source, "read", dropped={reason: n_cells - 1})


def routellm_task(path: Path) -> str:
    """Task label from a RouteLLM CSV name: mmlu_anatomy.csv -> mmlu/anatomy, gsm8k_responses.csv -> gsm8k."""
    stem = data_stem(path).removesuffix("_responses")
    if stem.startswith("mmlu_"):
        return "mmlu/" + stem[len("mmlu_"):]
    return stem


def read_routellm_csv(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        task = src.task or routellm_task(path)
        models: list[str] | None = None
        for row_index, (line_no, row) in enumerate(iter_csv(path, src.name, ledger, required=["prompt"])):
            if models is None:
                # Correctness columns: every column but the prompt and the `<model>_response` texts.
                models = [c for c in row if c != "prompt" and not c.endswith("_response")]
                if not models:
                    raise DataError(f"{path}:1: no model columns beside 'prompt'; a RouteLLM CSV has "
                                    f"prompt,<model>,<model>[,<model>_response].")
            prompt = row["prompt"]
            if not prompt.strip():
                _drop_row(ledger, src.name, file, line_no, "empty_prompt", "the prompt is empty", "prompt",
                          len(models))
                continue
            for model in models:
                cell = row[model].strip()
                if cell not in ROUTELLM_CELLS:
                    ledger.bad(src.name, file, line_no, "wrong_type", f"correctness {cell!r}, expected True or False",
                               model)
                    continue
                ledger.count(src.name, "read", kept=1)
                yield make_outcome(prompt=prompt, model=model, score=ROUTELLM_CELLS[cell], task=task,
                                   source=src.name, source_file=file, source_line=line_no, source_id=str(row_index))
                n_valid += 1
                if src.max_rows is not None and n_valid >= src.max_rows:
                    return


def _score01(value: object) -> tuple[float | None, str | None]:
    """(score, None) for a finite number in [0, 1]; (None, reason) otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, "wrong_type"
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None, "score_out_of_range"
    return float(value), None


def read_llmrouter_json(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        items = load_json(path, src.name)
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON array of {{question, scores}} items (LLMRouter format), "
                            f"got a JSON {type(items).__name__}.")
        for index, item in enumerate(items):
            line = index + 1  # the item's position: a JSON array has no line numbers
            if not isinstance(item, dict):
                ledger.bad(src.name, file, line, "not_an_object", f"item {index} is a {type(item).__name__}")
                continue
            scores = item.get("scores")
            if scores is None:
                ledger.bad(src.name, file, line, "missing_field", "missing scores", "scores")
                continue
            if not isinstance(scores, dict) or not scores:
                ledger.bad(src.name, file, line, "wrong_type", "scores must be a non-empty {model: score} object",
                           "scores")
                continue
            n_cells = len(scores)
            question = item.get("question")
            if question is None:
                _drop_row(ledger, src.name, file, line, "missing_field", "missing question", "question", n_cells)
                continue
            if not isinstance(question, str):
                _drop_row(ledger, src.name, file, line, "wrong_type", "question must be a string", "question", n_cells)
                continue
            if not question.strip():
                _drop_row(ledger, src.name, file, line, "empty_prompt", "the question is empty", "question", n_cells)
                continue
            for model, value in scores.items():
                score, reason = _score01(value)
                if score is None:
                    ledger.bad(src.name, file, line, reason,
                               f"score of {model} is {value!r}, expected a number in [0, 1]", f"scores.{model}")
                    continue
                ledger.count(src.name, "read", kept=1)
                yield make_outcome(prompt=question, model=model, score=score, task=src.task, source=src.name,
                                   source_file=file, source_line=line, source_id=str(index))
                n_valid += 1
                if src.max_rows is not None and n_valid >= src.max_rows:
                    return


def load_zeroeval_prompts(path_str: str, source: str) -> dict[str, tuple[str, str | None]]:
    """session_id -> (prompt, task) from ZeroEval's prompt JSON lines. Whole-file DataError if unusable."""
    path = Path(path_str)
    if not path.is_file():
        raise DataError(f"source '{source}': questions_path '{path}' is not a file; point it at the JSON lines "
                        f"with session_id and prompt of the ZeroEval items.")
    prompts: dict[str, tuple[str, str | None]] = {}
    with open_bytes(path) as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}:{line_no}: not a UTF-8 JSON object ({exc}); the prompts file must be "
                                f"valid JSON lines.") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("session_id"), str) \
                    or not isinstance(obj.get("prompt"), str):
                raise DataError(f"{path}:{line_no}: each line needs string fields session_id and prompt.")
            task = obj.get("task") if isinstance(obj.get("task"), str) else None
            prompts[obj["session_id"]] = (obj["prompt"], task)
    return prompts


def _model_list(value: object) -> list[str] | None:
    """ZeroEval's "a|b|c" model list ("" is none); None if not a string."""
    if not isinstance(value, str):
        return None
    return [m for m in (s.strip() for s in value.split("|")) if m]


def read_zeroeval_summary(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    if not src.questions_path:
        raise DataError(f"source '{src.name}': zeroeval_summary needs questions_path (the JSON lines with the "
                        f"items' session_id and prompt); the task summary holds no prompt text.")
    prompts = load_zeroeval_prompts(src.questions_path, src.name)
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        items = load_json(path, src.name)
        if not isinstance(items, dict):
            raise DataError(f"{path}: expected a JSON object {{item_id: {{correct_models, incorrect_models}}}} "
                            f"(ZeroEval task summary), got a JSON {type(items).__name__}.")
        for index, (item_id, item) in enumerate(items.items()):
            line = index + 1  # the item's position in the object: the file is one JSON document
            if not isinstance(item, dict):
                ledger.bad(src.name, file, line, "not_an_object", f"item {item_id} is a {type(item).__name__}")
                continue
            outcomes: list[tuple[str, float]] = []
            problem = None
            for field, score in (("correct_models", 1.0), ("incorrect_models", 0.0)):
                if item.get(field) is None:
                    problem = ("missing_field", f"missing {field}", field)
                    break
                models = _model_list(item[field])
                if models is None:
                    problem = ("wrong_type", f"{field} must be a '|'-separated string", field)
                    break
                outcomes.extend((m, score) for m in models)
            if problem:
                ledger.bad(src.name, file, line, problem[0], f"item {item_id}: {problem[1]}", problem[2])
                continue
            if not outcomes:
                ledger.count(src.name, "read", dropped={"no_models": 1})
                continue
            if item_id not in prompts:
                _drop_row(ledger, src.name, file, line, "missing_field",
                          f"item {item_id} has no prompt in {src.questions_path}", "prompt", len(outcomes))
                continue
            prompt, prompt_task = prompts[item_id]
            if not prompt.strip():
                _drop_row(ledger, src.name, file, line, "empty_prompt", f"item {item_id} has an empty prompt",
                          "prompt", len(outcomes))
                continue
            listed: set[str] = set()
            for model, score in outcomes:
                if model in listed:
                    ledger.bad(src.name, file, line, "duplicate_id",
                               f"item {item_id}: {model} is listed twice (correct and/or incorrect)",
                               "incorrect_models" if score == 0.0 else "correct_models")
                    continue
                listed.add(model)
                ledger.count(src.name, "read", kept=1)
                yield make_outcome(prompt=prompt, model=model, score=score, task=src.task or prompt_task,
                                   source=src.name, source_file=file, source_line=line, source_id=item_id)
                n_valid += 1
                if src.max_rows is not None and n_valid >= src.max_rows:
                    return


# -- the generic long table ------------------------------------------------------------------------

def _csv_value(field: str, text: str) -> object:
    """A CSV cell as the JSON value it stands for: '' is null, numbers for the numeric fields."""
    text = text.strip()
    if text == "":
        return None
    if field in ("score", "cost", "input_tokens", "output_tokens"):
        try:
            return float(text)
        except ValueError:
            return text  # left as a string: reported as wrong_type below
    return text


def _token_count(value: object) -> tuple[int | None, bool]:
    """(count, ok): None is allowed; an integral number >= 0 (12 or 12.0, as pandas writes ints with NaN) is."""
    if value is None:
        return None, True
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or float(value) != int(value):
        return None, False
    return int(value), True


def _outcome_rows(path: Path, source: str, ledger: Ledger) -> Iterator[tuple[int, dict]]:
    suffix = data_suffix(path)
    if isinstance(path, HubInput):  # rows parsed by `datasets`, typed as in JSON lines
        yield from path.rows()
    elif suffix == ".csv":
        for line_no, row in iter_csv(path, source, ledger, required=OUTCOME_COLUMNS):
            yield line_no, {k: _csv_value(k, v) for k, v in row.items()}
    elif suffix in (".jsonl", ".ndjson"):
        yield from iter_jsonl(path, source, ledger)
    else:
        raise DataError(f"{path}: outcome tables are JSON lines (.jsonl) or CSV (.csv), optionally gzipped "
                        f"(.jsonl.gz, .csv.gz); got '{suffix}'.")


def prompt_problem(prompt_id: object, prompt: object) -> tuple[str, str, str] | None:
    """(reason, detail, field) when a row's prompt_id or prompt is unusable, else None (also used for
    the prompts files of `routerforge label`)."""
    if isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)) or not str(prompt_id).strip():
        return "wrong_type", f"prompt_id must be a non-empty string or integer, got {prompt_id!r}", "prompt_id"
    if not isinstance(prompt, str):
        return "wrong_type", f"prompt must be a string, got {type(prompt).__name__}", "prompt"
    if not prompt.strip():
        return "empty_prompt", "the prompt is empty", "prompt"
    return None


def read_outcomes(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    n_valid = 0
    for path in source_inputs(src):
        file = str(path)
        seen: set[tuple[str, str]] = set()
        for line_no, obj in _outcome_rows(path, src.name, ledger):

            def bad(reason: str, detail: str, field: str | None = None, _f: str = file, _l: int = line_no) -> None:
                ledger.bad(src.name, _f, _l, reason, detail, field)

            missing = [k for k in OUTCOME_COLUMNS if obj.get(k) is None]
            if missing:
                bad("missing_field", f"missing {', '.join(missing)}", missing[0])
                continue
            prompt_id, prompt, model = obj["prompt_id"], obj["prompt"], obj["model"]
            if isinstance(prompt_id, float) and prompt_id.is_integer():
                prompt_id = int(prompt_id)
            problem = prompt_problem(prompt_id, prompt)
            if problem is not None:
                bad(*problem)
                continue
            if not isinstance(model, str) or not model.strip():
                bad("wrong_type", f"model must be a non-empty string, got {model!r}", "model")
                continue
            score, reason = _score01(obj["score"])
            if score is None:
                bad(reason, f"score {obj['score']!r}, expected a number in [0, 1]", "score")
                continue
            cost = obj.get("cost")
            if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float))
                                     or not math.isfinite(cost) or cost < 0):
                bad("wrong_type", f"cost {cost!r}, expected a number of USD >= 0 or empty", "cost")
                continue
            tokens = {field: _token_count(obj.get(field)) for field in ("input_tokens", "output_tokens")}
            wrong_tokens = [field for field, (_, ok) in tokens.items() if not ok]
            if wrong_tokens:
                field = wrong_tokens[0]
                bad("wrong_type", f"{field} {obj.get(field)!r}, expected a whole number >= 0 or empty", field)
                continue
            task = obj.get("task")
            if task is not None and not isinstance(task, str):
                bad("wrong_type", f"task must be a string, got {type(task).__name__}", "task")
                continue
            key = (str(prompt_id), model)
            if key in seen:
                bad("duplicate_id", f"prompt_id {prompt_id} with model {model} repeated", "prompt_id")
                continue
            seen.add(key)
            ledger.count(src.name, "read", kept=1)
            yield make_outcome(prompt=prompt, model=model, score=score, task=task or src.task,
                               cost=None if cost is None else float(cost),
                               input_tokens=tokens["input_tokens"][0], output_tokens=tokens["output_tokens"][0],
                               source=src.name, source_file=file, source_line=line_no, source_id=str(prompt_id))
            n_valid += 1
            if src.max_rows is not None and n_valid >= src.max_rows:
                return
