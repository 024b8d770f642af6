"""Calibration: thresholds on the user's own prompts hit the asked strong share on held-out prompts.

The headline test calibrates a real trained router (the difficulty recipe's, tiny DeBERTa-v2) on half of the
13,937 distinct RouteLLM MMLU questions (data/routellm/mmlu, all 57 subjects) and routes the other half: the
strong share is within ±2 points of each target. With n_c = n_h ≈ 6,970 prompts the sampling error alone is
sqrt(s(1 − s)(1/n_c + 1/n_h)) = 0.85 points at s = 0.5, so ±2 points is a 2.4-sigma band (3-sigma at 0.2/0.8).
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from routerforge.data.config import ConvertConfig, SourceConfig
from routerforge.data.readers.outcome_tables import read_routellm_csv
from routerforge.data.report import Ledger
from routerforge.errors import CheckpointError, DataError
from routerforge.eval.cli import calibrate_main
from routerforge.eval.thresholds import (
    holdout_mask,
    prompts_fingerprint,
    read_prompts,
    strong_mask,
    threshold_for_share,
)
from routerforge.registry.publish_validation import validate_checkpoint
from routerforge.registry.register import finalize_export
from routerforge.router import Router
from tests.fixtures import registry_routers as rr

REPO_ROOT = Path(__file__).resolve().parents[3]


def all_mmlu_prompts() -> list[str]:
    prompts: dict[str, None] = {}
    for path in sorted(glob.glob(str(REPO_ROOT / "data" / "routellm" / "mmlu" / "mmlu_*.csv"))):
        source = SourceConfig(name="mmlu", kind="routellm_csv", path=path, convert=ConvertConfig(rule="outcome_pairs"))
        for row in read_routellm_csv(source, Ledger(echo=None)):
            prompts.setdefault(row["prompt"], None)
    return list(prompts)


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


# ------------------------------------------------------------------------------------------------ pure functions
def test_thresholds_split_tie_groups_to_reach_any_share():
    # A router with 6 distinct scores (like a 6-cluster router) on 3,000 prompts of very unequal groups.
    rng = np.random.default_rng(0)
    levels = np.array([0.9, 0.7, 0.5, 0.3, 0.2, 0.1])
    scores = levels[rng.choice(6, size=3000, p=[0.05, 0.35, 0.1, 0.3, 0.15, 0.05])]
    prompts = [f"prompt {i}" for i in range(len(scores))]
    plain_shares = {float((scores >= level).mean()) for level in levels}
    for share in (0.2, 0.3, 0.65, 0.88):  # plain thresholds reach about 0.05, 0.4, 0.5, 0.8, 0.95, 1
        threshold, tie_fraction = threshold_for_share(scores, share)
        routed = strong_mask(scores, prompts, threshold, tie_fraction)
        assert abs(routed.mean() - share) < 0.02, share  # the tie split lands near the target...
        assert min(abs(s - share) for s in plain_shares) > 0.04  # ...which no plain threshold reaches
        again = strong_mask(scores, prompts, threshold, tie_fraction)
        np.testing.assert_array_equal(routed, again)  # deterministic per prompt text
    # Continuous scores: exactly round(share * n) prompts, no tie split needed.
    continuous = rng.normal(size=1001)
    threshold, tie_fraction = threshold_for_share(continuous, 0.3)
    assert tie_fraction == 1.0 and strong_mask(continuous, [str(i) for i in range(1001)], threshold,
                                               tie_fraction).sum() == 300
    assert strong_mask(continuous, [""] * 1001, *threshold_for_share(continuous, 0.0)).sum() == 0
    assert strong_mask(continuous, [""] * 1001, *threshold_for_share(continuous, 1.0)).sum() == 1001


def test_prompt_files_and_fingerprints(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert read_prompts(tmp_path / "p.txt") == ["first", "second"]
    (tmp_path / "p.csv").write_text("id,prompt\n1,\"multi\nline\"\n2,b\n")
    assert read_prompts(tmp_path / "p.csv") == ["multi\nline", "b"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n"b"\n{"text": "c"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:3: expected a non-empty string 'prompt'"):
        read_prompts(tmp_path / "p.jsonl")
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(DataError, match="unsupported prompts format"):
        read_prompts(tmp_path / "p.json")
    assert prompts_fingerprint(["a", "b"]) == prompts_fingerprint(["b", "a"]) != prompts_fingerprint(["a", "c"])
    mask = holdout_mask([f"q{i}" for i in range(4000)], 0.25, seed=0)
    assert abs(mask.mean() - 0.25) < 0.03 and not np.array_equal(mask, holdout_mask([f"q{i}" for i in range(4000)],
                                                                                     0.25, seed=1))


# ------------------------------------------------------------------------------------------------ real routers
@pytest.mark.slow
def test_calibrated_share_holds_within_2_points_on_held_out_mmlu(tmp_path, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    checkpoint = finalize_export(rr.trained_any(base, "difficulty", tmp_path_factory), tmp_path / "checkpoints")
    prompts = all_mmlu_prompts()
    assert len(prompts) > 13_000
    order = np.random.default_rng(0).permutation(len(prompts))
    calibration = [prompts[i] for i in order[: len(order) // 2]]
    held_out = [prompts[i] for i in order[len(order) // 2:]]
    shares = [0.2, 0.5, 0.8]

    assert calibrate_main([str(checkpoint), "--prompts", str(write_prompts(tmp_path / "traffic.jsonl", calibration)),
                           "--strong-share", *map(str, shares), "--strong", rr.STRONG, "--weak", rr.WEAK,
                           "--holdout-fraction", "0"]) == 0
    router = Router.from_pretrained(checkpoint)
    entry = router.calibration["calibrations"][0]
    assert entry["data"]["calibration_prompts"] == len(calibration)
    assert entry["data"]["prompts_fingerprint"] == prompts_fingerprint(calibration)
    assert entry["score"]["kind"] == "pair"  # (reference, candidate): 1 - P(Mixtral's answer >= GPT-4's)
    for share in shares:
        routed, scores = router.route_with_scores(held_out, strong_share=share)  # what route() returns, + scores
        # The score behind each choice is the router's binary score for the calibrated pair, with many ties
        # (shared 64-token prefixes): what the tie split is for.
        np.testing.assert_allclose(scores[:50], router.score(held_out[:50], rr.STRONG, rr.WEAK), atol=1e-6)
        assert len(np.unique(np.round(scores, 6))) < len(held_out) / 2
        achieved = routed.count(rr.STRONG) / len(routed)
        assert abs(achieved - share) <= 0.02, (share, achieved)
        row = next(r for r in entry["thresholds"] if r["strong_share"] == share)
        assert abs(row["calibration_share"] - share) <= 0.005


@pytest.mark.slow
def test_calibrate_command_writes_verified_calibration(tmp_path, tmp_path_factory, capsys):
    base = tmp_path_factory.getbasetemp()
    checkpoint = finalize_export(rr.trained_export(base, "cluster"), tmp_path / "checkpoints")
    prompts = rr.read_eval_prompts(rr.eval_table(base, rr.SUBJECTS[0])) + \
        rr.read_eval_prompts(rr.eval_table(base, rr.SUBJECTS[1]))
    traffic = write_prompts(tmp_path / "traffic.jsonl", prompts)
    cache = ["--embedding-cache", str(rr.cache_dir(base))]

    assert calibrate_main([str(checkpoint), "--prompts", str(traffic), "--strong-share", "0.5", "0.3", "--strong",
                           rr.STRONG, "--weak", rr.WEAK, "--dry-run", *cache]) == 0
    assert "held out" in capsys.readouterr().out
    assert json.loads((checkpoint / "calibration.json").read_text())["calibrations"] == []  # dry run

    assert calibrate_main([str(checkpoint.parent), "--prompts", str(traffic), "--strong-share", "0.5", "0.3",
                           "--strong", rr.STRONG, "--weak", rr.WEAK, "--holdout-fraction", "0.3", *cache]) == 0
    calibration = json.loads((checkpoint / "calibration.json").read_text())
    (entry,) = calibration["calibrations"]
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["files"]["calibration.json"] == hashlib.sha256((checkpoint / "calibration.json").read_bytes()
                                                                   ).hexdigest()
    assert entry["data"]["file_sha256"] == hashlib.sha256(traffic.read_bytes()).hexdigest()
    assert entry["data"]["prompts_fingerprint"] == prompts_fingerprint(prompts)
    assert [r["strong_share"] for r in entry["thresholds"]] == [0.3, 0.5]
    validate_checkpoint(checkpoint)
    assert "| 0.5 |" in (checkpoint / "README.md").read_text()

    # The cluster router has 6 distinct scores: the tie split is what lets it reach 50% of the traffic.
    router = Router.from_pretrained(checkpoint, embedding_cache_dir=rr.cache_dir(base))
    held = holdout_mask(prompts, 0.3, seed=0)
    calibration_prompts = [p for p, h in zip(prompts, held, strict=True) if not h]
    held_prompts = [p for p, h in zip(prompts, held, strict=True) if h]
    for row in entry["thresholds"]:
        routed = router.route(calibration_prompts, strong_share=row["strong_share"])
        assert routed.count(rr.STRONG) / len(routed) == pytest.approx(row["calibration_share"], abs=1e-12)
        held_routed = router.route(held_prompts, strong_share=row["strong_share"])
        assert held_routed.count(rr.STRONG) / len(held_routed) == pytest.approx(row["holdout_share"], abs=1e-12)
        assert row["holdout_ci95"][0] <= row["holdout_share"] <= row["holdout_ci95"][1]
    assert abs(entry["thresholds"][1]["calibration_share"] - 0.5) <= 0.05
    assert 0.0 < entry["thresholds"][1]["tie_fraction"] < 1.0

    # Re-calibrating the same pair replaces its entry; a share never calibrated is a clear error.
    assert calibrate_main([str(checkpoint), "--prompts", str(traffic), "--strong-share", "0.2", "--strong",
                           rr.STRONG, "--weak", rr.WEAK, *cache]) == 0
    router = Router.from_pretrained(checkpoint, embedding_cache_dir=rr.cache_dir(base))
    assert [r["strong_share"] for r in router.calibration["calibrations"][0]["thresholds"]] == [0.2]
    with pytest.raises(CheckpointError, match=r"strong_share 0\.5 is not calibrated .* \(calibrated: 0\.2\)"):
        router.route(prompts[:3], strong_share=0.5)
    capsys.readouterr()
    assert calibrate_main([str(checkpoint), "--prompts", str(traffic), "--strong-share", "1.5", "--strong",
                           rr.STRONG, "--weak", rr.WEAK, *cache]) == 2
    assert "not a fraction in [0, 1]" in capsys.readouterr().err

