"""AlpacaEval judge annotations -> soft-labelled preference pairs, on the bundled real sample.

data/alpaca_eval/annotations/*.json: the first 60 GPT-4-turbo weighted judgements of three models
against the gpt4_1106_preview baseline (tatsu-lab/alpaca_eval). The soft label must be exactly
2 - preference (never rounded), carried through prep into the Arrow pairs table, and used by the MF
pair loader as its BCE target, while pairs without a soft label keep their exact targets.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from readers_testlib import DATA, read, read_input, where

from routerforge.config import load_config
from routerforge.data.config import PrepConfig
from routerforge.data.dataset_io import load_prepared
from routerforge.data.pair_tensors import pairs_to_tensors
from routerforge.data.pipeline import run_pipeline
from routerforge.data.records import PAIR_FEATURES, make_pair, prompt_id_for

ANNOTATIONS = DATA / "alpaca_eval" / "annotations"
BASELINE = "gpt4_1106_preview"


def object_start_lines(path: Path) -> list[int]:
    """1-based lines where the array's objects open (the files put one '{' per line)."""
    return [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line.strip() == "{"]


def test_real_annotations_become_soft_pairs_with_their_lines():
    pairs, ledger = read("alpaca_eval_annotations", ANNOTATIONS / "*.json")
    assert ledger.bad_rows == [] and len(pairs) == read_input(ledger) == 3 * 60
    for path in sorted(ANNOTATIONS.glob("*.json")):
        items = json.loads(path.read_text(encoding="utf-8"))
        mine = [p for p in pairs if p["source_file"] == str(path)]
        assert [p["source_line"] for p in mine] == object_start_lines(path)
        for item, pair in zip(items, mine, strict=True):
            assert (pair["model_a"], pair["model_b"]) == (BASELINE, item["generator_2"])
            assert pair["prompt"] == item["instruction"] and pair["kind"] == "judge"
            assert pair["p_model_a_wins"] == 2.0 - item["preference"]  # exact: not rounded
            expected = "model_a" if item["preference"] < 1.5 else "model_b" if item["preference"] > 1.5 else "tie"
            assert pair["winner"] == expected
    soft = [p["p_model_a_wins"] for p in pairs]
    assert sum(0.01 < s < 0.99 for s in soft) >= 20  # the weighted judge's real fractional preferences
    assert all(0.0 <= s <= 1.0 for s in soft)


def test_malformed_judgements_are_counted_by_reason_with_file_and_line(tmp_path):
    items = json.loads((ANNOTATIONS / "claude-2.1.json").read_text(encoding="utf-8"))[:9]
    del items[1]["preference"]
    items[2]["preference"] = 2.5
    items[3]["preference"] = float("nan")
    items[4]["preference"] = "1.5"
    items[5]["generator_2"] = None
    items[6] = dict(items[0])  # the same instruction judged twice for the same models
    items[7] = ["not", "an", "object"]
    path = tmp_path / "claude-2.1.json"
    path.write_text(json.dumps(items, indent=0), encoding="utf-8")  # AlpacaEval's layout; NaN as JSON's NaN
    starts = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if line in ("{", "[")][1:]
    pairs, ledger = read("alpaca_eval_annotations", path)
    assert [p["source_line"] for p in pairs] == [starts[0], starts[8]]
    assert where(ledger.bad_rows) == [
        ("claude-2.1.json", starts[1], "preference", "missing_field"),
        ("claude-2.1.json", starts[2], "preference", "score_out_of_range"),
        ("claude-2.1.json", starts[3], "preference", "score_out_of_range"),
        ("claude-2.1.json", starts[4], "preference", "wrong_type"),
        ("claude-2.1.json", starts[5], "generator_2", "missing_field"),
        ("claude-2.1.json", starts[6], "instruction", "duplicate_id"),
        ("claude-2.1.json", starts[7], None, "not_an_object"),
    ]
    assert "nan" in ledger.bad_rows[2].detail
    assert ledger.stage("src", "read").dropped == {"missing_field": 2, "score_out_of_range": 2, "wrong_type": 1,
                                                   "duplicate_id": 1, "not_an_object": 1}
    assert read_input(ledger) == 9


def _pair_table(rows: list[dict], with_soft_column: bool = True) -> Dataset:
    features = PAIR_FEATURES.copy()
    if not with_soft_column:  # a pairs table written before soft labels existed
        del features["p_model_a_wins"]
    return Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)


def test_mf_pair_loader_uses_soft_labels_and_keeps_hard_ones_bitwise():
    def pair(i: int, winner: str, soft: float | None = None, weight: float = 1.0) -> dict:
        return make_pair(prompt=f"prompt {i % 3}", model_a="x", model_b="y", winner=winner, source="s",
                         kind="judge", source_file="f.json", source_line=i + 1, source_id=str(i), weight=weight,
                         p_model_a_wins=soft)

    hard = [pair(0, "model_a"), pair(1, "model_b", weight=0.5), pair(2, "tie"), pair(3, "tie_bothbad")]
    soft = [pair(4, "model_b", 0.2671676038), pair(5, "model_a", 0.9999369724), pair(6, "tie", 0.5)]
    model_index = {"x": 0, "y": 1}
    prompt_rows = {prompt_id_for(f"prompt {i}"): i for i in range(3)}
    for ties in ("drop", "half"):
        old = pairs_to_tensors(_pair_table(hard, with_soft_column=False), model_index, prompt_rows, ties)
        new = pairs_to_tensors(_pair_table(hard), model_index, prompt_rows, ties)
        for name in ("model_a", "model_b", "prompt_row", "target", "weight"):
            assert torch.equal(getattr(old, name), getattr(new, name)), (ties, name)
        assert old.dropped == new.dropped
    mixed = pairs_to_tensors(_pair_table(hard + soft), model_index, prompt_rows, "drop")
    assert mixed.target.tolist() == pytest.approx([1.0, 0.0, 0.2671676038, 0.9999369724], abs=1e-7)
    assert mixed.dropped == {"tie_dropped": 2, "tie_bothbad_dropped": 1}  # a soft 0.5 is a tie too
    half = pairs_to_tensors(_pair_table(hard + soft), model_index, prompt_rows, "half")
    assert half.target[-3:].tolist() == pytest.approx([0.2671676038, 0.9999369724, 0.5], abs=1e-7)
    # The BCE the MF recipe minimises pulls a logit toward logit(p), not toward a rounded label.
    logit = torch.zeros(1, requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(logit, half.target[-3:-2]).backward()
    assert logit.grad.item() == pytest.approx(0.5 - 0.2671676038, abs=1e-6)


@pytest.mark.slow
def test_soft_labels_survive_prep_into_the_dataset(tmp_path):
    cfg = load_config(PrepConfig, None, [
        f"output_root={tmp_path / 'out'}", f"encoder.cache_dir={tmp_path / 'cache'}", "split.validation=0.2",
        f"sources=[{{name: alpaca, kind: alpaca_eval_annotations, path: '{ANNOTATIONS}/*.json', weight: 0.5}}]"])
    ds = load_prepared(run_pipeline(cfg, log=lambda _: None))
    expected = {}
    for path in ANNOTATIONS.glob("*.json"):
        for item in json.loads(path.read_text(encoding="utf-8")):
            expected[(prompt_id_for(item["instruction"]), item["generator_2"])] = 2.0 - item["preference"]
    got = {}
    for split in ("train", "validation"):
        table = ds.pairs[split]
        assert table.features["p_model_a_wins"].dtype == "float64"
        for row in table:
            got[(row["prompt_id"], row["model_b"])] = row["p_model_a_wins"]
    assert got == expected and len(got) == 180
    models = {m: i for i, m in enumerate(ds.models)}
    rows = {pid: i for i, pid in enumerate(sorted(ds.embedding_index()))}
    tensors = pairs_to_tensors(ds.pairs["train"], models, rows, ties="half")
    want = [expected[(r["prompt_id"], r["model_b"])] for r in ds.pairs["train"]]
    assert torch.equal(tensors.target, torch.tensor(want, dtype=torch.float32))
    assert set(tensors.weight.tolist()) == {0.5} and not any(math.isnan(t) for t in want)
