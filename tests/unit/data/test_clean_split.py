"""Cleaning filters, near-duplicate grouping and the seeded split."""

import numpy as np
import pytest

from routerforge.data.clean import clean_records
from routerforge.data.config import CleanConfig, SourceConfig
from routerforge.data.records import make_pair, normalize_text, prompt_id_for
from routerforge.data.report import Ledger
from routerforge.data.similarity import max_cosine, near_duplicate_groups
from routerforge.data.split import assign_split

SRC = SourceConfig(name="arena", kind="arena_conversations", path="x")


def _pair(prompt, a, b, winner="model_a", line=1, language="English"):
    return make_pair(prompt=prompt, model_a=a, model_b=b, winner=winner, source="arena", kind="arena",
                     language=language, source_file="battles.jsonl", source_line=line, source_id=str(line))


def test_clean_filters_each_reason_and_reports_bad_rows_with_line():
    rows = [
        _pair("What is 2+2?", "gpt-4", "vicuna-13b", line=1),
        _pair("What is 2+2?", "gpt-4", "vicuna-13b", line=2),  # exact duplicate row
        _pair("   ", "gpt-4", "vicuna-13b", line=3),  # empty prompt -> bad row
        _pair("Hello there", "palm-2", "palm-2-chat-bison-001", line=4),  # self-battle after aliasing
        _pair("Bonjour", "gpt-4", "claude-1", line=5, language="French"),
        _pair("x" * 50, "gpt-4", "claude-1", line=6),  # too long
        _pair("What is 2+2?", "gpt-4", "vicuna-13b", winner="tie", line=7),  # same prompt, other verdict: kept
    ]
    cfg = CleanConfig(aliases={"palm-2-chat-bison-001": "palm-2"}, max_prompt_chars=40, languages=["English"])
    ledger = Ledger(echo=None)
    kept = list(clean_records(iter(rows), SRC, cfg, ledger, "pairs"))
    assert [r["source_line"] for r in kept] == [1, 7]
    assert ledger.stats()["per_source"]["arena"]["clean"] == {
        "input": 7, "kept": 2,
        "dropped": {"duplicate_row": 1, "empty_prompt": 1, "language": 1, "prompt_too_long": 1, "self_battle": 1}}
    bad = {(b.reason, b.file, b.line, b.field) for b in ledger.bad_rows}
    assert bad == {("empty_prompt", "battles.jsonl", 3, "prompt"), ("self_battle", "battles.jsonl", 4, "model_b")}


def test_prompt_id_is_normalised_hash():
    assert prompt_id_for("What  is\n2+2? ") == prompt_id_for("what is 2+2?")
    assert prompt_id_for("what is 2+3?") != prompt_id_for("what is 2+2?")
    assert normalize_text("ＡＢＣ  d") == "abc d"  # NFKC folds full-width forms


def test_near_duplicate_groups_are_connected_components():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 16))
    emb = np.stack([base[0], base[0] + 1e-3, base[1], base[2], base[2] + 1e-3])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    groups = near_duplicate_groups(["e", "a", "c", "d", "b"], emb.astype(np.float32), 0.99)
    assert groups == {"e": "a", "a": "a", "c": "c", "d": "b", "b": "b"}
    assert near_duplicate_groups(["x", "y"], emb[:2].astype(np.float32), 0.0) == {"x": "x", "y": "y"}


def test_max_cosine():
    corpus = np.eye(4, dtype=np.float32)
    q = np.array([[0.6, 0.8, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    best, arg = max_cosine(q, corpus)
    assert best.tolist() == pytest.approx([0.8, 1.0]) and arg.tolist() == [1, 3]
    best, arg = max_cosine(q, corpus[:0])
    assert np.isneginf(best).all() and (arg == -1).all()


def test_split_is_seeded_stable_and_proportional():
    ids = [f"g{i}" for i in range(20000)]
    splits = [assign_split(g, 0, 0.1, 0.2) for g in ids]
    share = {s: splits.count(s) / len(ids) for s in ("train", "validation", "test")}
    assert share["test"] == pytest.approx(0.2, abs=0.01) and share["validation"] == pytest.approx(0.1, abs=0.01)
    assert splits == [assign_split(g, 0, 0.1, 0.2) for g in ids]
    assert splits != [assign_split(g, 1, 0.1, 0.2) for g in ids]
