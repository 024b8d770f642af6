"""`routerforge label` with a local `transformers` candidate: a tiny random-init Qwen2 built in-process
(tests/fixtures/tiny_qwen2.py) answers next to a loopback endpoint model; reference-mode labels; the
model directory's content is part of the cache key."""

from __future__ import annotations

import json

from label_testlib import API_KEY, BASE_URL_ENV, KEY_ENV, PROMPTS, endpoint, write_config, write_prompts

from routerforge.config import load_config
from routerforge.label.config import LabelConfig
from routerforge.label.run import run_label
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm
from tests.support.fake_chat_endpoint import FakeChatEndpoint


def test_local_transformers_candidate(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    model_dir = build_tiny_causal_lm(tmp_path / "tiny-qwen2", seed=0)
    rows = [p for p in PROMPTS if "reference" in p]
    local = {"name": "tiny-qwen2", "kind": "transformers", "model_path": str(model_dir),
             "input_usd_per_m": 0.0, "output_usd_per_m": 0.0, "generation": {"max_tokens": 6}}
    cfg_path = write_config(tmp_path, write_prompts(tmp_path / "prompts.jsonl", rows), mode="reference",
                            candidates=[local, endpoint("strong-model")])
    with FakeChatEndpoint(API_KEY) as fake:
        monkeypatch.setenv(BASE_URL_ENV, fake.base_url)
        monkeypatch.setenv(KEY_ENV, API_KEY)
        path, stats = run_label(load_config(LabelConfig, cfg_path))
        assert stats.new_calls == 2 * len(rows)
        answers = {(a["prompt_id"], a["model"]): a for a in map(json.loads, (path / "answers.jsonl").open())}
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for row in rows:
            mine = answers[(row["prompt_id"], "tiny-qwen2")]
            chat = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                                 add_generation_prompt=True)
            # Token counts are the model's own: the chat-formatted prompt, and 1-6 generated tokens.
            assert mine["input_tokens"] == len(tokenizer(chat, add_special_tokens=False)["input_ids"])
            assert 1 <= mine["output_tokens"] <= 6 and mine["cost"] == 0.0
        outcomes = {(r["prompt_id"], r["model"]): r["score"] for r in map(json.loads, (path / "outcomes.jsonl").open())}
        assert outcomes[("p2", "strong-model")] == 1.0 and ("p2", "tiny-qwen2") in outcomes

        # Same directory content: every answer from the cache, the model is not even loaded.
        _, again = run_label(load_config(LabelConfig, cfg_path))
        assert (again.new_calls, again.cached_calls) == (0, 2 * len(rows))
        # Retrained weights in the same directory: the local answers are made again, the endpoint's are not.
        build_tiny_causal_lm(model_dir, seed=1)
        _, retrained = run_label(load_config(LabelConfig, cfg_path))
        assert (retrained.new_calls, retrained.cached_calls) == (len(rows), len(rows))
        assert fake.calls_by_model() == {"strong-model": len(rows)}
