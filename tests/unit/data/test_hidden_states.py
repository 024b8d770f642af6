"""Hidden-state extraction stage (routerforge/data/hidden_states.py) on a tiny random-init causal LM and real
MMLU questions: stored values equal a direct forward pass, shards resume, 2 processes write what 1 writes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from routerforge.config import load_config
from routerforge.data.hidden_states import (
    HiddenStateExtractor,
    HiddenStatesConfig,
    PromptRow,
    gather_prompts,
    load_hidden_states,
    load_stage_config,
    run_hidden_states,
)
from routerforge.errors import ConfigError, DataError
from tests.fixtures.recipe_runner import CPU_2PROC, REPO_ROOT, free_port, recipe_env
from tests.fixtures.tiny_qwen2 import OPTION_TOKENS, build_probe_dataset, build_tiny_causal_lm

OPTIONS = "[' A',' B',' C',' D']"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hs")
    return {"lm": build_tiny_causal_lm(root / "qwen2", "qwen2"), "llama": build_tiny_causal_lm(root / "llama", "llama"),
            "data": build_probe_dataset(root / "data", per_subject=8)}


def stage_config(tiny, out, *extra: str) -> HiddenStatesConfig:
    return load_config(HiddenStatesConfig, None, [f"dataset={tiny['data']}", f"lm.model={tiny['lm']}",
                                                  f"output_dir={out}", "shard_size=8", f"lm.option_tokens={OPTIONS}",
                                                  "lm.dtype=float32", "lm.storage_dtype=float32",
                                                  "lm.poolings=[last,prompt_last,mean]", *extra])


def test_stored_values_equal_a_direct_forward_pass(tiny, tmp_path):
    cfg = stage_config(tiny, tmp_path / "hs")
    result = run_hidden_states(cfg, progress=False)
    store = load_hidden_states(result.output_dir)
    rows, _ = gather_prompts(cfg)
    assert store.prompt_ids == sorted(r.prompt_id for r in rows) and len(store.prompt_ids) == 32
    assert set(store.groups) == {"train", "validation", "test", "eval/mmlu_holdout"}
    assert store.layers == [0, 1, 2] and store.lm["kind"] == "causal_lm" and store.lm["stand_in"] is False

    # recompute row 5 alone, unpadded, straight from transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["lm"])
    model = AutoModelForCausalLM.from_pretrained(tiny["lm"], dtype=torch.float32).eval()
    row = 5
    text = next(r.prompt for r in rows if r.prompt_id == store.prompt_ids[row])
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    for layer in range(3):
        hidden = out.hidden_states[layer][0]
        np.testing.assert_allclose(store.features("last")[row, layer], hidden[-1].numpy(), atol=2e-5)
        np.testing.assert_allclose(store.features("mean")[row, layer], hidden.mean(0).numpy(), atol=2e-5)
    np.testing.assert_allclose(store.features("prompt_last")[row], store.features("last")[row])  # no response
    logprobs = torch.log_softmax(out.logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    assert store.get("prompt_logprob_count")[row] == ids.shape[1] - 1
    assert store.get("prompt_logprob_sum")[row] == pytest.approx(float(logprobs.sum()), abs=1e-3)
    assert store.get("prompt_logprob_min")[row] == pytest.approx(float(logprobs.min()), abs=1e-5)
    option_ids = [tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in OPTION_TOKENS]
    np.testing.assert_allclose(store.get("option_logits")[row], out.logits[0, -1, option_ids].numpy(), atol=2e-5)
    assert store.get("token_count")[row] == ids.shape[1] and store.get("truncated_tokens")[row] == 0


def test_left_truncation_keeps_the_end_and_llama_works(tiny, tmp_path):
    cfg = stage_config(tiny, tmp_path / "hs", f"lm.model={tiny['llama']}", "lm.max_length=24", "max_prompts=6")
    store = load_hidden_states(run_hidden_states(cfg, progress=False).output_dir)
    assert (store.get("token_count") <= 24).all() and (store.get("truncated_tokens") > 0).any()
    extractor = HiddenStateExtractor(cfg.lm, "cpu")
    rows, _ = gather_prompts(cfg)
    ids, prompt_len, dropped = extractor._encode(rows[0])
    full = extractor.tokenizer(rows[0].prompt)["input_ids"]
    assert ids == full[dropped:] and prompt_len == len(ids) == 24 and dropped == len(full) - 24
    assert extractor.tokenizer.decode(ids).endswith("Answer:")  # the cue survives truncation


def test_response_span_log_probs(tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Which is a planet?\nA. Mars\nB. Moon\nAnswer:", "response": " A"}) + "\n")
    cfg = load_config(HiddenStatesConfig, None, ["dataset=null", f"prompts_file={prompts}", f"lm.model={tiny['lm']}",
                                                 f"output_dir={tmp_path / 'hs'}", "lm.include_response=true",
                                                 "lm.poolings=[last,prompt_last]", "lm.storage_dtype=float32"])
    store = load_hidden_states(run_hidden_states(cfg, progress=False).output_dir)
    assert store.get("response_logprob_count")[0] == 1  # " A" is one token
    extractor = HiddenStateExtractor(cfg.lm, "cpu")
    ids, prompt_len, _ = extractor._encode(PromptRow("x", "Which is a planet?\nA. Mars\nB. Moon\nAnswer:", " A",
                                                     "file"))
    with torch.no_grad():
        logits = extractor.model()(input_ids=torch.tensor([ids])).logits[0]
    expected = torch.log_softmax(logits[prompt_len - 1], -1)[ids[-1]]
    assert store.get("response_logprob_sum")[0] == pytest.approx(float(expected), abs=1e-5)
    assert store.get("prompt_logprob_count")[0] == prompt_len - 1
    assert not np.allclose(store.features("last")[0], store.features("prompt_last")[0])


def _digests(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def test_resume_recomputes_only_missing_shards_and_refuses_other_settings(tiny, tmp_path):
    out = tmp_path / "hs"
    first = run_hidden_states(stage_config(tiny, out), progress=False)
    assert first.shards_computed == [0, 1, 2, 3]
    reference = _digests(out)
    # a crash: shard 2 never renamed into place (only its temporary file), no index, no COMPLETE
    (out / "shard-00002.safetensors").rename(out / ".tmp-shard-00002.safetensors-999")
    (out / "index.json").unlink()
    (out / "COMPLETE").unlink()
    again = run_hidden_states(stage_config(tiny, out), progress=False)
    assert again.shards_computed == [2] and again.shards_skipped == [0, 1, 3]
    assert _digests(out) == reference
    # complete store: nothing is recomputed
    assert run_hidden_states(stage_config(tiny, out), progress=False).shards_computed == []
    with pytest.raises(DataError, match="other LM settings"):
        run_hidden_states(stage_config(tiny, out, "lm.layers=[0,2]"), progress=False)
    # a tampered shard fails loading
    path = out / "shard-00001.safetensors"
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(DataError, match="sha256 differs"):
        load_hidden_states(out)


def test_bad_config_is_one_clear_error(tiny, tmp_path):
    with pytest.raises(ConfigError, match="is 2 tokens"):
        HiddenStateExtractor(stage_config(tiny, tmp_path, "lm.option_tokens=[' A',' Bq']").lm, "cpu")
    with pytest.raises(ConfigError, match="out of range"):
        HiddenStateExtractor(stage_config(tiny, tmp_path, "lm.layers=[7]").lm, "cpu")
    with pytest.raises(ConfigError, match="exactly one of features.dataset"):
        load_config(HiddenStatesConfig, None, ["dataset=null"])
    with pytest.raises(ConfigError, match="poolings"):
        load_config(HiddenStatesConfig, None, ["lm.poolings=[first]"])
    with pytest.raises(ConfigError, match=r"tiny.yaml \(features section\).*unknown config key 'lm.modle'"):
        load_stage_config(REPO_ROOT / "configs/probe/tiny.yaml", ["features.lm.modle=x"])
    # the stage takes the recipe's command line: recipe-only keys are not its business
    cfg = load_stage_config(REPO_ROOT / "configs/probe/tiny.yaml", ["optim.lr=1", f"features.lm.model={tiny['lm']}"])
    assert cfg.lm.model == str(tiny["lm"]) and cfg.shard_size == 16


def test_packaged_minilm_is_an_encoder_stand_in(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["What is 2+2?", "Name a prime."]))
    cfg = load_config(HiddenStatesConfig, None, ["dataset=null", f"prompts_file={prompts}",
                                                 f"output_dir={tmp_path / 'hs'}", "lm.layers=[0,-1]"])
    store = load_hidden_states(run_hidden_states(cfg, progress=False).output_dir)
    assert store.lm["kind"] == "encoder" and store.lm["stand_in"] is True
    assert store.lm["id"] == "sentence-transformers/all-MiniLM-L6-v2" and store.layers == [0, 6]
    assert store.features("mean").shape == (2, 2, 384) and store.get("prompt_logprob_sum") is None
    with pytest.raises(ConfigError, match="is an encoder"):
        HiddenStateExtractor(load_config(HiddenStatesConfig, None, [f"lm.option_tokens={OPTIONS}"]).lm, "cpu")


@pytest.mark.slow
def test_two_processes_write_byte_identical_shards_to_one_process(tiny, tmp_path):
    script = str(REPO_ROOT / "data_prep" / "hidden_states.py")
    config = REPO_ROOT / "configs/probe/tiny.yaml"
    overrides = [f"features.dataset={tiny['data']}", f"features.lm.model={tiny['lm']}", "features.shard_size=5"]
    # One process: what the script runs (load_stage_config + run_hidden_states), in this process to skip a
    # Python start-up; the two processes run the script itself under accelerate launch.
    one = run_hidden_states(load_stage_config(config, [*overrides, f"features.output_dir={tmp_path / 'one'}"]),
                            progress=False)
    assert one.world_size == 1 and len(one.shards_computed) == 7
    accelerate = str(__import__("pathlib").Path(sys.executable).with_name("accelerate"))
    env = recipe_env(ACCELERATE_USE_CPU="true", PYTHONPATH=str(REPO_ROOT))
    two = subprocess.run([accelerate, "launch", "--config_file", str(CPU_2PROC), "--main_process_port",
                          str(free_port()), script, "--config", str(config), *overrides, "--no-progress",
                          f"features.output_dir={tmp_path / 'two'}"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout and "this process computed 4" in two.stdout  # 7 shards: 4 + 3
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    assert len([n for n in _digests(tmp_path / "one") if n.startswith("shard-")]) == 7
    assert os.path.getsize(tmp_path / "two" / "index.json") > 0
