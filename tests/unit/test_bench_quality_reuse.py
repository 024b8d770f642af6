"""bench/bench_quality.py --reuse-exports: an earlier export is scored again only when it was trained by the bench on
the same prepared data (its manifest's data fingerprint) and its train time was recorded."""

from __future__ import annotations

import json
import sys

from tests.fixtures.recipe_runner import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
from bench_quality import reusable_export  # noqa: E402


def write_export(export, fingerprint: str) -> None:
    export.mkdir(parents=True)
    (export / "manifest.json").write_text(json.dumps({"data": {"fingerprint": fingerprint}}))


def test_reused_only_for_the_same_data_with_a_recorded_time(tmp_path):
    export, timing = tmp_path / "knn" / "final", tmp_path / "train_knn.timing.json"
    assert reusable_export(export, timing, "abc") is None  # nothing trained yet
    write_export(export, "abc")
    assert reusable_export(export, timing, "abc") is None  # trained, but not by the bench (no recorded time)
    timing.write_text(json.dumps({"wall_seconds": 12.5}) + "\n")
    assert reusable_export(export, timing, "abc") == 12.5
    assert reusable_export(export, timing, "other-data") is None  # the prepared data changed: train again
    timing.write_text("{not json")
    assert reusable_export(export, timing, "abc") is None
