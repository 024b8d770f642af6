"""Hub datasets as prep sources, against the loopback Hub (real huggingface_hub + datasets over HTTP) and offline.

The dataset repos are laid out as on the Hub: the lmarena 100k set as `data/train-00000-of-00001.parquet`
with a README `configs:` block, the Kaggle 55k set as a top-level `train.csv`. Their rows are the reader
fixtures (tests/fixtures/reader_fixtures.md), so a Hub read can be compared with the local read row for row.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from readers_testlib import FIXTURES, read, source
from support.hub_server import HubServer

from routerforge.config import load_config
from routerforge.data.config import ConvertConfig, PrepConfig, SourceConfig
from routerforge.data.hub_source import forget_resolutions
from routerforge.data.pipeline import run_pipeline
from routerforge.data.readers import read_source
from routerforge.data.report import Ledger
from routerforge.errors import DataError

HP100 = FIXTURES / "arena_hp_100k_sample.jsonl"
KAGGLE = FIXTURES / "arena_kaggle_55k_sample.csv"
GPT4_SAMPLE, GPT4_ID = FIXTURES / "routellm_gpt4_dataset_sample.jsonl", "routellm/gpt4_dataset"
HP_ID, KAGGLE_ID = "lmarena-ai/arena-human-preference-100k", "lmarena-ai/arena-human-preference-55k"
CARD = b"""---
license: cc-by-4.0
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---
# Arena human preference (loopback copy)
"""


def hp_parquet(extra_rows: list[dict] = ()) -> bytes:
    rows = [json.loads(line) for line in HP100.read_text(encoding="utf-8").splitlines()] + list(extra_rows)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The loopback Hub, online, with an empty Hugging Face cache under tmp_path."""
    from huggingface_hub import constants

    with HubServer() as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py sets it for everything
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        forget_resolutions()
        yield server
        forget_resolutions()


def read_hub(kind: str, repo_id: str, **kw) -> tuple[list[dict], Ledger]:
    ledger = Ledger(echo=None)
    return list(read_source(source(kind, "", hub=repo_id, **kw), ledger)), ledger


def strip_place(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("source_file", "source_line")} for r in rows]


def test_parquet_dataset_in_hub_layout_reads_like_the_local_file(hub):
    bad = {**json.loads(HP100.read_text().splitlines()[0]), "question_id": "q-bad", "winner": "maybe"}
    oid = hub.seed_repo(HP_ID, {"README.md": CARD, "data/train-00000-of-00001.parquet": hp_parquet([bad])})
    rows, ledger = read_hub("arena_hp", HP_ID)
    local, _ = read("arena_hp", HP100)
    assert strip_place(rows) == strip_place(local) and len(rows) == 4
    name = f"hub:{HP_ID}@{oid[:12]}/train"
    assert {r["source_file"] for r in rows} == {name} and [r["source_line"] for r in rows] == [1, 2, 3, 4]
    assert [(b.file, b.line, b.field, b.reason) for b in ledger.bad_rows] == [(name, 5, "winner", "unknown_winner")]
    assert hub.unhandled == []  # every request the clients made is one the server models


def test_csv_dataset_keeps_the_csv_readers_checks(hub):
    hub.seed_repo(KAGGLE_ID, {"train.csv": KAGGLE.read_bytes()})
    rows, ledger = read_hub("arena_kaggle", KAGGLE_ID)
    local, local_ledger = read("arena_kaggle", KAGGLE)
    assert rows and strip_place(rows) == strip_place(local)
    assert [(b.reason, b.field) for b in ledger.bad_rows] == [(b.reason, b.field) for b in local_ledger.bad_rows]


def test_revision_is_pinned_and_offline_reads_come_from_the_cache(hub, monkeypatch):
    from huggingface_hub import constants

    first = hub.seed_repo(HP_ID, {"README.md": CARD, "data/train-00000-of-00001.parquet": hp_parquet()}, tag="v1")
    new_vote = {**json.loads(HP100.read_text().splitlines()[1]), "question_id": "q-new"}
    moved = hub.seed_repo(HP_ID, {"data/train-00000-of-00001.parquet": hp_parquet([new_vote])})
    at_tag, _ = read_hub("arena_hp", HP_ID, revision="v1")
    at_main, _ = read_hub("arena_hp", HP_ID)
    assert {r["source_file"] for r in at_tag} == {f"hub:{HP_ID}@{first[:12]}/train"} and len(at_tag) == 4
    assert {r["source_file"] for r in at_main} == {f"hub:{HP_ID}@{moved[:12]}/train"} and len(at_main) == 5
    # Offline (HF_HUB_OFFLINE=1, and the server gone): the same revisions resolve from the cache.
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forget_resolutions()
    assert read_hub("arena_hp", HP_ID, revision="v1")[0] == at_tag
    assert read_hub("arena_hp", HP_ID)[0] == at_main
    with pytest.raises(DataError, match=r"'lmarena-ai/arena-human-preference-140k' is not in the local Hugging "
                                         r"Face cache .*HF_HUB_OFFLINE=1"):
        read_hub("arena_hp", "lmarena-ai/arena-human-preference-140k")


def test_routellm_gpt4_dataset_split_becomes_threshold_pairs(hub):
    from routerforge.data.convert import groups_by_prompt, routellm_threshold_pairs

    rows = GPT4_SAMPLE.read_bytes().splitlines(keepends=True)
    bad = json.dumps({"prompt": "Say hi.", "source": "[sharegpt]", "mixtral_score": 7}).encode() + b"\n"
    oid = hub.seed_repo(GPT4_ID, {"train.jsonl": b"".join(rows[:2]), "validation.jsonl": b"".join(rows[2:]) + bad})
    local, _ = read("routellm_gpt4_judge", GPT4_SAMPLE)
    scores, ledger = read_hub("routellm_gpt4_judge", GPT4_ID, split="validation")
    assert [(s["prompt"], s["judge_score"]) for s in scores] == [(s["prompt"], s["judge_score"]) for s in local[2:]]
    assert {s["model"] for s in scores} == {"mistralai/Mixtral-8x7B-Instruct-v0.1"}
    assert [(b.file, b.line, b.field, b.reason) for b in ledger.bad_rows] == [
        (f"hub:{GPT4_ID}@{oid[:12]}/validation", 5, "mixtral_score", "score_out_of_range")]
    # RouteLLM's rule: a grade of 4 or 5 is a win of the weak model
    src = SourceConfig(name="src", kind="routellm_gpt4_judge", path=str(GPT4_SAMPLE), convert=ConvertConfig(
        rule="routellm_threshold", strong="gpt-4-1106-preview", weak="mistralai/Mixtral-8x7B-Instruct-v0.1",
        threshold=4))
    ordered = sorted(local, key=lambda s: s["prompt_id"])
    pairs = list(routellm_threshold_pairs(groups_by_prompt(ordered), src, Ledger(echo=None)))
    assert sorted(p["winner"] for p in pairs) == sorted("model_b" if s["judge_score"] >= 4 else "model_a"
                                                       for s in local)


def test_user_errors_name_the_dataset(hub):
    hub.seed_repo(HP_ID, {"README.md": CARD, "data/train-00000-of-00001.parquet": hp_parquet()})
    with pytest.raises(DataError, match=r"Hub dataset 'nobody/nothing' not found"):
        read_hub("arena_hp", "nobody/nothing")
    with pytest.raises(DataError, match=r"revision 'v9': the revision does not exist"):
        read_hub("arena_hp", HP_ID, revision="v9")
    with pytest.raises(DataError, match=r"cannot load split 'test'"):
        read_hub("arena_hp", HP_ID, split="test")
    with pytest.raises(ValueError, match="exactly one of `path`"):
        SourceConfig(name="s", kind="arena_hp", path="x.jsonl", hub=HP_ID)
    with pytest.raises(ValueError, match="apply to `hub` sources only"):
        SourceConfig(name="s", kind="arena_hp", path="x.jsonl", revision="v1")


@pytest.mark.slow
def test_prep_records_the_hub_id_and_resolved_sha(hub, tmp_path):
    oid = hub.seed_repo(HP_ID, {"README.md": CARD, "data/train-00000-of-00001.parquet": hp_parquet()})
    cfg = load_config(PrepConfig, None, [
        f"output_root={tmp_path / 'out'}", f"encoder.cache_dir={tmp_path / 'emb'}", "split.validation=0.0",
        f"sources=[{{name: hp, kind: arena_hp, hub: {HP_ID}, data_files: ['data/*.parquet']}}]"])
    path = run_pipeline(cfg, log=lambda _: None)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["sources"]["hp"] == {"kind": "arena_hp", "path": "", "weight": 1.0, "role": "train", "hub": HP_ID,
                                         "revision": oid, "requested_revision": "main", "split": "train",
                                         "data_files": ["data/*.parquet"]}
    assert f"Hub dataset `{HP_ID}` at `{oid}`" in (path / "README.md").read_text()
    assert manifest["counts"]["pairs"]["train"] == 4
    # main moves: a new dataset version, recorded with the new sha
    moved = hub.seed_repo(HP_ID, {"data/train-00000-of-00001.parquet": hp_parquet(
        [{**json.loads(HP100.read_text().splitlines()[1]), "question_id": "q-new",
          "conversation_a": [{"role": "user", "content": "Name three prime numbers."}]}])})
    again = run_pipeline(cfg, log=lambda _: None)
    assert again != path and json.loads((again / "manifest.json").read_text())["sources"]["hp"]["revision"] == moved
