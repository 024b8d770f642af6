"""Offline routing tasks built from real outcome data: GSM8K from RouteLLM's recorded responses.

A task is a question and its acceptable answers. RouteLLM's ``gsm8k_responses.csv`` (lm-sys/RouteLLM
``routellm/evals``, bundled in data/routellm/gsm8k) holds, for the 1,319 GSM8K test questions, the
full answers of Mixtral-8x7B-Instruct and GPT-4-1106 and whether each was judged correct, but NOT
GSM8K's reference answers, and nothing can be downloaded here. So the ground truth is defined from
the recorded correctness (our choice, documented):

    a question's acceptable answers are the final numbers of its recorded responses marked correct;
    a question that no recorded response got right is dropped (its answer is unknown).

The final number of a response is the number after GSM8K's ``####`` marker when there is one
(Mixtral writes it), else the last number in the text (GPT-4 mostly ends with the result). Checked
on the bundled file: where both models are marked correct (747 questions), the two final numbers
agree on 743; the 4 disagreements are sign or scale slips of the heuristic (-15 vs 15, 0.5 vs 5),
so both numbers are kept as acceptable there. 1,225 of 1,319 questions get an answer (94 that
neither model solved are dropped). `TaskBuildReport` counts all of this for every build.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from routerforge.errors import DataError

GSM8K_RESPONSES = "data/routellm/gsm8k/gsm8k_responses.csv"
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_MARKER_RE = re.compile(r"####\s*(.+)")


@dataclass(frozen=True)
class RoutingTask:
    """One episode: the question the policy answers and the answers that count as correct."""

    prompt_id: str
    question: str
    answers: tuple[str, ...]
    source: str
    source_file: str
    source_line: int


@dataclass(frozen=True)
class TaskBuildReport:
    rows: int  # questions read
    kept: int  # tasks built
    dropped_no_correct_response: int  # no recorded response marked correct: answer unknown
    dropped_no_number: int  # correct responses without any number in them
    answer_disagreements: int  # kept with more than one acceptable number


def canonical_number(text: str) -> str | None:
    """'1,000' -> '1000', '18.00' -> '18', '0.50' -> '0.5'; None when `text` is not a number."""
    cleaned = text.replace(",", "").strip()
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return f"{value:.10f}".rstrip("0").rstrip(".")


def final_number(response: str) -> str | None:
    """The final numeric answer of a solution text (see the module docstring), canonicalised."""
    marker = _MARKER_RE.search(response)
    if marker:
        numbers = _NUMBER_RE.findall(marker.group(1))
        if numbers:
            return canonical_number(numbers[0])
    numbers = _NUMBER_RE.findall(response)
    return canonical_number(numbers[-1]) if numbers else None


def gsm8k_tasks_from_routellm(path: str | Path = GSM8K_RESPONSES, max_rows: int | None = None
                              ) -> tuple[list[RoutingTask], TaskBuildReport]:
    """GSM8K routing tasks from a RouteLLM ``*_responses.csv``; see the module docstring for the ground truth.

    max_rows: read only the first `max_rows` questions (quick runs, tests).
    """
    from routerforge.data.readers._io import iter_csv
    from routerforge.data.report import Ledger

    path = Path(path)
    if not path.is_file():
        raise DataError(f"GSM8K responses table '{path}' is not a file; pass RouteLLM's gsm8k_responses.csv.")
    ledger = Ledger(echo=None)
    tasks: list[RoutingTask] = []
    rows = no_correct = no_number = disagreements = 0
    models: list[str] | None = None
    for row_index, (line_no, row) in enumerate(iter_csv(path, "gsm8k", ledger, required=["prompt"])):
        if max_rows is not None and row_index >= max_rows:
            break
        if models is None:
            models = [c for c in row if f"{c}_response" in row]
            if not models:
                raise DataError(f"{path}:1: no '<model>' + '<model>_response' column pair; this is not a RouteLLM "
                                "*_responses.csv with answer texts.")
        rows += 1
        correct = [row[f"{m}_response"] for m in models if row[m].strip() == "True"]
        if not correct:
            no_correct += 1
            continue
        numbers = list(dict.fromkeys(n for n in (final_number(text) for text in correct) if n is not None))
        if not numbers:
            no_number += 1
            continue
        disagreements += len(numbers) > 1
        tasks.append(RoutingTask(prompt_id=f"gsm8k:{row_index}", question=row["prompt"].strip(),
                                 answers=tuple(numbers), source="routellm_gsm8k", source_file=str(path),
                                 source_line=line_no))
    if ledger.bad_rows:
        raise DataError(f"{ledger.bad_rows[0].format()} ({len(ledger.bad_rows)} malformed row(s) in {path}).")
    return tasks, TaskBuildReport(rows=rows, kept=len(tasks), dropped_no_correct_response=no_correct,
                                  dropped_no_number=no_number, answer_disagreements=disagreements)


def split_tasks(tasks: Sequence[RoutingTask], test_fraction: float, seed: int = 0
                ) -> tuple[list[RoutingTask], list[RoutingTask]]:
    """(train, test) by a seeded hash of each prompt id: stable under reordering and adding tasks."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    train, test = [], []
    for task in tasks:
        digest = hashlib.sha256(f"{seed}:{task.prompt_id}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else train).append(task)
    return train, test
