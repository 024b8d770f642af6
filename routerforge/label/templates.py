"""Judge templates and their parsers, each versioned (the version is part of every cache key and of
the label set's manifest, so changing a template never reuses a judgement made with the old one).

* `single` -- FastChat llm_judge `single-v1` (lm-sys/FastChat `fastchat/llm_judge/data/judge_prompts.jsonl`,
  the MT-Bench paper's single-answer grading, Zheng et al. 2023): grade 1-10 written as ``[[N]]``;
  parsed with FastChat's `one_score_pattern`. Its single-bracket fallback ``[N]`` is not used: it
  matches list indices inside judged code answers (same choice as routerforge's fastchat reader).
* `pairwise` -- FastChat `pair-v2`: verdict ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie); every pair is
  judged in both answer orders (game 1: model_1 first; game 2: swapped) against position bias. The
  verdict is parsed as FastChat's `run_judge_pair` does: the first of [[A]], [[B]], [[C]] that
  occurs in the text, else "error".
* `reference` -- no judge call: the answer's final number is compared with the reference's final
  number (GSM8K-style: the reference may be a full solution ending in ``#### 72``); a reference
  without a number is an exact match after case folding and whitespace normalisation.
"""

from __future__ import annotations

import math
import re

SINGLE_TEMPLATE_VERSION = "fastchat-single-v1/1"
PAIR_TEMPLATE_VERSION = "fastchat-pair-v2/1"
REFERENCE_VERSION = "reference-match/1"
ANSWER_VERSION = "answer/1"  # candidates get the prompt as the only user message, no template

SINGLE_SYSTEM = "You are a helpful assistant."
SINGLE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    "you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for "
    "example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)

PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. You should choose the assistant that follows the user's instructions and "
    "answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the length of the "
    "responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective as "
    "possible. After providing your explanation, output your final verdict by strictly following this format: "
    "\"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)
PAIR_TEMPLATE = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n"
    "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
    "[The End of Assistant B's Answer]"
)

# FastChat common.py one_score_pattern.
RATING_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
GRADE_RANGE = (1.0, 10.0)
# A number as people write answers: -1,234.5 ; the GSM8K final-answer marker "#### 72".
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")
_GSM8K_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def single_messages(question: str, answer: str) -> list[dict]:
    return [{"role": "system", "content": SINGLE_SYSTEM},
            {"role": "user", "content": SINGLE_TEMPLATE.format(question=question, answer=answer)}]


def pair_messages(question: str, answer_a: str, answer_b: str) -> list[dict]:
    return [{"role": "system", "content": PAIR_SYSTEM},
            {"role": "user", "content": PAIR_TEMPLATE.format(question=question, answer_a=answer_a,
                                                             answer_b=answer_b)}]


def parse_grade(judgment: str) -> float | None:
    """The judge's 1-10 grade, or None when the text holds no in-range [[N]]."""
    match = RATING_PATTERN.search(judgment)
    if match is None:
        return None
    grade = float(match.group(1))
    return grade if GRADE_RANGE[0] <= grade <= GRADE_RANGE[1] else None


def grade_to_score(grade: float) -> float:
    """A 1-10 grade as an outcome score in [0, 1] (linear: 1 -> 0, 10 -> 1)."""
    return (grade - GRADE_RANGE[0]) / (GRADE_RANGE[1] - GRADE_RANGE[0])


def parse_pair_verdict(judgment: str) -> str:
    """"A", "B", "C" (tie) or "error", in FastChat's order of checks."""
    for verdict in ("A", "B", "C"):
        if f"[[{verdict}]]" in judgment:
            return verdict
    return "error"


def _final_number(text: str) -> float | None:
    marked = _GSM8K_FINAL.findall(text)
    found = marked or _NUMBER.findall(text)
    for raw in reversed(found):
        try:
            value = float(raw.replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(value):
            return value
    return None


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def reference_match(answer: str, reference: str, tolerance: float) -> bool:
    """True when the answer matches the reference (final numbers within `tolerance`, else exact text)."""
    expected = _final_number(reference)
    if expected is not None:
        got = _final_number(answer)
        return got is not None and abs(got - expected) <= tolerance
    return _normalise(answer) == _normalise(reference)


def template_version(mode: str) -> str:
    """The versioned template (or matcher) a judging mode uses: recorded in the manifest and cache keys."""
    return {"single": SINGLE_TEMPLATE_VERSION, "pairwise": PAIR_TEMPLATE_VERSION, "reference": REFERENCE_VERSION}[mode]
