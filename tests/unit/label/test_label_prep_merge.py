"""A label set made by `routerforge label` (fake endpoint) is merged with real Chatbot Arena votes by
`routerforge prep`, through the existing source kinds, into one embedded dataset."""

from __future__ import annotations

import json

import pytest
from label_testlib import API_KEY, BASE_URL_ENV, KEY_ENV, endpoint, write_config, write_prompts

from routerforge.cli import main as cli_main
from routerforge.config import load_config
from routerforge.data.dataset_io import load_prepared
from routerforge.label.config import LabelConfig
from routerforge.label.run import run_label
from tests.support.fake_chat_endpoint import FakeChatEndpoint

pytestmark = pytest.mark.slow  # embeds ~60 short prompts with the packaged MiniLM

PREP = """
name: merged
output_root: {out}
sources:
  - name: arena
    kind: arena_conversations
    path: {data}/chatbot_arena/arena_battles_1k.jsonl
    max_rows: 40
  - name: my_outcomes
    kind: outcomes
    path: {single}/outcomes.jsonl
    convert: {{rule: outcome_pairs}}
  - name: my_pairwise
    kind: fastchat_pair_judge
    path: {pair}/judgments/pair.jsonl
    questions_path: {pair}/questions.jsonl
    weight: 0.5
encoder:
  cache_dir: {cache}
  max_length: 32
split: {{validation: 0.2, test: 0.2, seed: 0}}
"""


def test_label_sets_merge_with_arena_votes_in_prep(tmp_path, monkeypatch, data_dir, capsys):
    with FakeChatEndpoint(API_KEY) as fake:
        monkeypatch.setenv(BASE_URL_ENV, fake.base_url)
        monkeypatch.setenv(KEY_ENV, API_KEY)
        prompts = write_prompts(tmp_path / "prompts.jsonl")
        single, _ = run_label(load_config(LabelConfig, write_config(tmp_path, prompts, mode="single")))
        pair, _ = run_label(load_config(LabelConfig, write_config(
            tmp_path, prompts, mode="pairwise", candidates=[endpoint("strong-model"), endpoint("weak-model")],
            name="mine_pairwise")))
    prep_cfg = tmp_path / "prep.yaml"
    prep_cfg.write_text(PREP.format(out=tmp_path / "out", data=data_dir, single=single, pair=pair,
                                    cache=tmp_path / "emb"))
    assert cli_main(["prep", "--config", str(prep_cfg)]) == 0
    dataset = load_prepared(tmp_path / "out" / "merged")
    pairs = [row for split in ("train", "validation", "test") for row in dataset.pairs[split]]
    by_source: dict[str, list[dict]] = {}
    for row in pairs:
        by_source.setdefault(row["source"], []).append(row)
    assert set(by_source) == {"arena", "my_outcomes", "my_pairwise"}
    # 4 judged prompts (p4's judgement was unparseable): strong beats weak on each, in both label sets.
    for source in ("my_outcomes", "my_pairwise"):
        mine = by_source[source]
        assert len(mine) == 4, source
        winners = {r["model_a"] if r["winner"] == 0 else r["model_b"] for r in mine}  # ClassLabel 0: model_a
        assert winners == {"strong-model"}, source
    assert len(by_source["arena"]) > 20
    stats = json.loads((dataset.path / "stats.json").read_text())
    assert stats["per_source"]["my_outcomes"]["read"]["kept"] == 8
