"""Canonical records every reader produces and every trainer reads.

Records are plain dicts (fast to stream, trivial to write to Arrow); this module owns their field
lists, their Arrow `Features`, and the helpers that build them, so there is one definition.

Preference pair (one human vote, judge verdict or gold comparison):
    prompt_id, prompt, model_a, model_b, winner, source, kind, weight, language, p_model_a_wins,
    source_file, source_line, source_id
  `p_model_a_wins` is a soft label in [0, 1] (a judge's probability that model_a's answer is better,
  e.g. AlpacaEval's weighted preference) or None for hard labels; when set, `winner` is its rounding
  (model_a above 0.5, model_b below, tie at 0.5) and pairwise trainers use the probability itself.
Outcome (one model's graded answer to one prompt; the long table users bring):
    prompt_id, prompt, model, score (0..1), cost (USD or None), input_tokens, output_tokens, task,
    source, source_file, source_line, source_id
Judge score (an LLM judge's single-answer grade, 1..10, before conversion to pairs):
    prompt_id, prompt, model, judge_score, turn, judge, source, source_file, source_line, source_id
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from datasets import ClassLabel, Features, Sequence, Value

WINNER_LABELS = ["model_a", "model_b", "tie", "tie_bothbad"]
"""ClassLabel names for `winner`. Arena's 'tie (bothbad)' is normalised to 'tie_bothbad'."""

_PROVENANCE = {
    "source": Value("string"),
    "source_file": Value("string"),
    "source_line": Value("int64"),
    "source_id": Value("string"),
}

PAIR_FEATURES = Features(
    {
        "prompt_id": Value("string"),
        "prompt": Value("string"),
        "model_a": Value("string"),
        "model_b": Value("string"),
        "winner": ClassLabel(names=WINNER_LABELS),
        "kind": Value("string"),
        "weight": Value("float32"),
        "language": Value("string"),
        "p_model_a_wins": Value("float64"),
        **_PROVENANCE,
    }
)

OUTCOME_FEATURES = Features(
    {
        "prompt_id": Value("string"),
        "prompt": Value("string"),
        "model": Value("string"),
        "score": Value("float32"),
        "cost": Value("float64"),
        "input_tokens": Value("int64"),
        "output_tokens": Value("int64"),
        "task": Value("string"),
        **_PROVENANCE,
    }
)

JUDGE_SCORE_FEATURES = Features(
    {
        "prompt_id": Value("string"),
        "prompt": Value("string"),
        "model": Value("string"),
        "judge_score": Value("float32"),
        "turn": Value("int32"),
        "judge": Value("string"),
        **_PROVENANCE,
    }
)

PROMPT_FEATURES_BASE = {
    "prompt_id": Value("string"),
    "prompt": Value("string"),
}


def prompt_features(embedding_dim: int | None) -> Features:
    """Features of the prompts table; with `embedding_dim`, a fixed-length float32 `embedding` column."""
    feats = dict(PROMPT_FEATURES_BASE)
    if embedding_dim is not None:
        feats["embedding"] = Sequence(Value("float32"), length=embedding_dim)
    return Features(feats)


_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Normalisation used for exact-duplicate and contamination hashing.

    NFKC, lower case, collapsed white space, stripped. Two prompts that differ only in case,
    Unicode width forms or spacing hash the same.
    """
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def text_hash(text: str) -> str:
    """sha256 of the exact text (UTF-8): the embedding-cache key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_id_for(text: str) -> str:
    """Stable prompt id: the first 16 hex digits of sha256 of the normalised text."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()[:16]


def make_pair(
    *,
    prompt: str,
    model_a: str,
    model_b: str,
    winner: str,
    source: str,
    kind: str,
    source_file: str,
    source_line: int,
    source_id: str,
    weight: float = 1.0,
    language: str | None = None,
    p_model_a_wins: float | None = None,
) -> dict:
    return {
        "prompt_id": prompt_id_for(prompt),
        "prompt": prompt,
        "model_a": model_a,
        "model_b": model_b,
        "winner": winner,
        "kind": kind,
        "weight": float(weight),
        "language": language,
        "p_model_a_wins": None if p_model_a_wins is None else float(p_model_a_wins),
        "source": source,
        "source_file": source_file,
        "source_line": int(source_line),
        "source_id": str(source_id),
    }


def make_outcome(
    *,
    prompt: str,
    model: str,
    score: float,
    source: str,
    source_file: str,
    source_line: int,
    source_id: str,
    cost: float | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    task: str | None = None,
) -> dict:
    return {
        "prompt_id": prompt_id_for(prompt),
        "prompt": prompt,
        "model": model,
        "score": float(score),
        "cost": None if cost is None else float(cost),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "task": task,
        "source": source,
        "source_file": source_file,
        "source_line": int(source_line),
        "source_id": str(source_id),
    }


def make_judge_score(
    *,
    prompt: str,
    model: str,
    judge_score: float,
    turn: int,
    judge: str,
    source: str,
    source_file: str,
    source_line: int,
    source_id: str,
) -> dict:
    return {
        "prompt_id": prompt_id_for(prompt),
        "prompt": prompt,
        "model": model,
        "judge_score": float(judge_score),
        "turn": int(turn),
        "judge": judge,
        "source": source,
        "source_file": source_file,
        "source_line": int(source_line),
        "source_id": str(source_id),
    }
