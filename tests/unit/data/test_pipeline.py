"""End-to-end data prep on real bundled data: files, accounting, leakage, decontamination, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from routerforge.config import load_config
from routerforge.data.config import PrepConfig
from routerforge.data.dataset_io import load_prepared
from routerforge.data.pipeline import run_pipeline
from routerforge.errors import StrictModeError

pytestmark = pytest.mark.slow

CONFIG = """
name: small
output_root: {out}
sources:
  - name: arena
    kind: arena_conversations
    path: {data}/chatbot_arena/arena_battles_1k.jsonl
    max_rows: 150
  - name: judge
    kind: fastchat_single_judge
    path: {data}/arena_bench_v1/model_judgment/[gM]*.jsonl
    questions_path: {data}/arena_bench_v1/question.jsonl
    weight: 0.5
    convert: {{rule: routellm_threshold, strong: gpt-4-1106-preview, weak: mistralai/Mixtral-8x7B-Instruct-v0.1}}
  - name: mmlu
    kind: routellm_csv
    path: {data}/routellm/mmlu/mmlu_college_physics.csv
    holdout: 0.5
    convert: {{rule: outcome_pairs}}
  - name: mt_bench
    kind: fastchat_single_judge
    path: {data}/routellm/mt_bench/judgements.jsonl
    questions_path: {data}/routellm/mt_bench/question.jsonl
    role: eval
decontaminate:
  extra_eval_files: [{data}/arena_bench_v1/question.jsonl]
encoder:
  cache_dir: {cache}
split: {{validation: 0.2, test: 0.1, seed: 3}}
"""


def _config(tmp_path: Path, data_dir: Path, **fmt) -> Path:
    path = tmp_path / "prep.yaml"
    fmt.setdefault("cache", tmp_path / "cache")
    path.write_text(CONFIG.format(out=tmp_path / "out", data=data_dir, **fmt))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    cfg = load_config(PrepConfig, _config(tmp, Path(__file__).resolve().parents[3] / "data"))
    path = run_pipeline(cfg)
    return cfg, path


def test_dataset_dir_holds_exactly_the_expected_files(built):
    _, path = built
    top = sorted(p.name for p in path.iterdir())
    assert top == [
        "COMPLETE",
        "README.md",
        "bad_rows.jsonl",
        "config.yaml",
        "decontamination.jsonl",
        "eval",
        "manifest.json",
        "outcomes",
        "pairs",
        "prompts",
        "stats.json",
    ]
    assert sorted(p.name for p in (path / "eval").iterdir()) == ["mmlu.jsonl", "mt_bench.jsonl"]
    manifest = json.loads((path / "manifest.json").read_text())
    # every file is hashed in the manifest, and nothing else is
    on_disk = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "COMPLETE")
    )
    assert sorted(manifest["files"]) == on_disk
    assert (path.parent / "LATEST").read_text().strip() == path.name == manifest["version"]


def test_accounting_is_exact_and_chained(built):
    _, path = built
    stats = json.loads((path / "stats.json").read_text())
    for source, stages in stats["per_source"].items():
        for stage, c in stages.items():
            assert c["kept"] + sum(c["dropped"].values()) == c["input"], (source, stage)
        assert stages["clean"]["input"] == stages["read"]["kept"], source
    arena = stats["per_source"]["arena"]
    assert arena["read"]["input"] == 150 and arena["decontaminate_pairs"]["input"] == arena["clean"]["kept"]
    assert "decontaminate_outcomes" not in arena  # a pair source has no outcome rows
    # An outcome source: its training outcome rows and the pairs made from them are counted apart.
    mmlu = stats["per_source"]["mmlu"]
    assert mmlu["decontaminate_outcomes"]["input"] == mmlu["holdout"]["kept"]
    assert mmlu["decontaminate_pairs"]["input"] == mmlu["pairs"]["kept"] != mmlu["holdout"]["kept"]
    # the real gpt-3.5-turbo-1106 judgements include grades that cannot be parsed: reported, counted
    assert stats["bad_rows"]["judge"].get("unparseable_score", 0) > 0
    bad = [json.loads(line) for line in open(path / "bad_rows.jsonl")]
    assert all(b["file"].endswith(".jsonl") and b["line"] >= 1 for b in bad)


def test_no_prompt_in_two_splits_and_no_eval_leak(built):
    cfg, path = built
    ds = load_prepared(path.parent)  # via LATEST
    seen: dict[str, str] = {}
    for split in ("train", "validation", "test"):
        for table in (ds.pairs[split], ds.outcomes[split], ds.prompts[split]):
            for pid in table["prompt_id"]:
                assert seen.setdefault(pid, split) == split
    train_ids = set(seen)
    eval_ids = {
        json.loads(line)["prompt_id"]
        for f in ("mmlu", "mt_bench")
        for line in open(path / "eval" / f"{f}.jsonl")
    }
    assert not train_ids & eval_ids
    # every prompt referenced by pairs/outcomes has an embedding in the same split
    for split in ("train", "validation", "test"):
        ids = set(ds.prompts[split]["prompt_id"])
        assert set(ds.pairs[split]["prompt_id"]) | set(ds.outcomes[split]["prompt_id"]) <= ids


def test_embeddings_are_real_and_decontamination_holds(built):
    cfg, path = built
    from routerforge.encoders import embed_texts

    ds = load_prepared(path)
    ids, emb = ds.embeddings("train")
    assert emb.shape[1] == ds.manifest["encoder"]["dim"] == 384
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    again = embed_texts(list(ds.prompts["train"]["prompt"][:5]), cfg.encoder)
    np.testing.assert_allclose(again, emb[:5], atol=1e-5)
    removed = [json.loads(line) for line in open(path / "decontamination.jsonl")]
    # arena-bench-v1 questions are Arena prompts: the extra eval file must catch real overlaps
    assert removed and all(r["reason"] in ("decontam_exact", "decontam_cosine") for r in removed)
    assert all(r["cosine"] >= cfg.decontaminate.cosine_threshold for r in removed)
    assert ds.pairs["train"].features["winner"].names == ["model_a", "model_b", "tie", "tie_bothbad"]


def test_rerun_is_a_noop_with_the_same_version(built, capsys):
    cfg, path = built
    mtime = (path / "COMPLETE").stat().st_mtime_ns
    again = run_pipeline(cfg, log=print)
    assert again == path and (path / "COMPLETE").stat().st_mtime_ns == mtime
    assert "up to date" in capsys.readouterr().out


def test_strict_mode_fails_on_malformed_rows(tmp_path, data_dir):
    lines = (data_dir / "chatbot_arena/arena_battles_1k.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    lines[4] = lines[4][:-5]  # truncate: invalid JSON on line 5
    bad = tmp_path / "battles.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    cfg = load_config(
        PrepConfig,
        None,
        [
            f"output_root={tmp_path / 'out'}",
            "strict=true",
            f"sources=[{{name: a, kind: arena_conversations, path: '{bad}'}}]",
        ],
    )
    with pytest.raises(StrictModeError, match=r"battles.jsonl:5: invalid_json"):
        run_pipeline(cfg, until="ingest")


def _cli(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "routerforge.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )


@pytest.mark.parametrize(
    "override,expected",
    [
        ("sources.0.path=/nonexistent/battles.jsonl", "no file at '/nonexistent/battles.jsonl'"),
        ("sources.0.kind=arena_csv", "unknown kind 'arena_csv'; use one of"),
        ("split.seeed=1", "unknown config key 'split.seeed'. Did you mean 'seed'?"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, data_dir, override, expected):
    cfg = _config(tmp_path, data_dir)
    proc = _cli(["prep", "--config", str(cfg), override], tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_interrupted_rebuild_leaves_the_good_dataset(built, tmp_path, data_dir):
    """SIGKILL a rebuild mid-way: the previous version and LATEST are untouched; a re-run resumes."""
    # The module dataset's embedding cache: every prompt is already embedded there, so the three builds here
    # skip the MiniLM passes (what is tested is the versioning and the stage markers, not the encoder).
    cfg_path = _config(tmp_path, data_dir, cache=built[0].encoder.cache_dir)
    assert _cli(["prep", "--config", str(cfg_path)], tmp_path).returncode == 0
    root = tmp_path / "out" / "small"
    good = root / (root / "LATEST").read_text().strip()
    files_before = json.loads((good / "manifest.json").read_text())["files"]
    # a new version (another split seed) killed once its first stage has finished
    proc = subprocess.Popen(
        [sys.executable, "-m", "routerforge.cli", "prep", "--config", str(cfg_path), "split.seed=4"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((root / ".work").glob("*/ingest/COMPLETE")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (root / "LATEST").read_text().strip() == good.name
    assert json.loads((good / "manifest.json").read_text())["files"] == files_before
    load_prepared(root)
    done = _cli(["prep", "--config", str(cfg_path), "split.seed=4"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[ingest] already done" in done.stderr
    assert (root / "LATEST").read_text().strip() != good.name


def test_two_process_prep_equals_one_process(built, tmp_path, data_dir):
    """accelerate launch with 2 CPU processes splits the embedding work; the dataset is identical to the one
    process build of the same config (the module dataset, `built`: run_pipeline in one process, own cache)."""
    cfg_path = _config(tmp_path, data_dir)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3]), "ACCELERATE_USE_CPU": "true"}
    repo = Path(__file__).resolve().parents[3]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(repo / "launch/accelerate/cpu_2proc.yaml"), str(repo / "data_prep/prep.py"),
                          "--config", str(cfg_path), f"output_root={tmp_path / 'two'}",
                          f"encoder.cache_dir={tmp_path / 'cache2'}"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "distributed prep: world_size=2" in two.stderr
    m_two = json.loads(next((tmp_path / "two/small").glob("*/manifest.json")).read_text())
    m_one = json.loads((built[1] / "manifest.json").read_text())
    assert m_two["content_fingerprint"] == m_one["content_fingerprint"]
