"""Probe models (routerforge/models/probe.py): the bank trains each candidate as if alone, temperature
scaling recovers a known temperature, and an exported probe routes through `load_probe_router`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from routerforge.errors import CheckpointError, ConfigError
from routerforge.models.probe import (
    LinearProbe,
    MLPProbe,
    ProbeBank,
    enumerate_candidates,
    fit_temperature,
    load_probe_router,
    standardization,
)
from routerforge.train.final_export import export_router
from tests.fixtures.tiny_qwen2 import build_tiny_causal_lm, mmlu_questions


def _bank(kinds=("linear", "mlp"), seed=0) -> ProbeBank:
    torch.manual_seed(seed)
    return ProbeBank(num_layers=3, num_poolings=2, input_dim=5, kinds=list(kinds), hidden_dim=4, dropout=0.0)


def test_candidate_order_and_extraction_match_the_bank_columns():
    bank = _bank()
    x = torch.randn(7, 3, 2, 5) * 3 + 1
    bank.set_standardization(*standardization(x))
    assert [(c.kind, c.layer_position, c.pooling_position) for c in bank.candidates[:3]] == [
        ("linear", 0, 0), ("linear", 0, 1), ("linear", 1, 0)]
    assert len(bank.candidates) == 12 and bank.candidates[6].kind == "mlp"
    logits = bank(x)
    for j, c in enumerate(bank.candidates):
        probe = bank.extract(c)
        assert isinstance(probe, LinearProbe if c.kind == "linear" else MLPProbe)
        torch.testing.assert_close(probe(x[:, c.layer_position, c.pooling_position]), logits[:, j])
    with pytest.raises(ConfigError, match="unknown"):
        enumerate_candidates(["tree"], 1, 1)


def test_training_the_bank_trains_each_candidate_exactly_as_alone():
    torch.manual_seed(1)
    x = torch.randn(64, 3, 2, 5)
    y = (x[:, 1, 0, :2].sum(1) > 0).float()
    bank = _bank()
    bank.set_standardization(*standardization(x))
    target = bank.candidates[8]  # an MLP candidate: layer 1, pooling 0
    alone = bank.extract(target).train()
    opt_bank = torch.optim.AdamW(bank.parameters(), lr=1e-2, weight_decay=1e-2)
    opt_alone = torch.optim.AdamW(alone.parameters(), lr=1e-2, weight_decay=1e-2)
    for step in range(25):
        rows = torch.arange(step % 4 * 16, step % 4 * 16 + 16)
        logits = bank(x[rows])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y[rows, None].expand_as(logits), reduction="none").mean(0).sum()
        opt_bank.zero_grad()
        loss.backward()
        opt_bank.step()
        own = torch.nn.functional.binary_cross_entropy_with_logits(
            alone(x[rows, target.layer_position, target.pooling_position]), y[rows])
        opt_alone.zero_grad()
        own.backward()
        opt_alone.step()
    trained = bank.extract(target)
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, atol=1e-6, rtol=1e-5)
    assert own.item() < 0.6  # it learned something real: the label is a function of that input


def test_temperature_scaling_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z / 2.5))).astype(float)  # logits 2.5x overconfident
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.06)
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 400))
    nll = [np.mean(np.logaddexp(0, z / g) - y * z / g) for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=0.02)  # the grid's minimiser


@pytest.fixture(scope="module")
def probe_export(tmp_path_factory):
    """A hand-made export: a linear probe on layer 1 / mean pooling of a tiny random Qwen2."""
    root = tmp_path_factory.mktemp("probe")
    lm = build_tiny_causal_lm(root / "lm", "qwen2")
    torch.manual_seed(0)
    probe = LinearProbe(32)
    with torch.no_grad():
        probe.linear.weight.normal_()
        probe.feature_std.fill_(0.5)
    config = {"router_type": "probe", "probe_kind": "linear", "input_dim": 32, "hidden_dim": 8, "dropout": 0.0,
              "layer": 1, "pooling": "mean", "temperature": 2.0, "weak_model": "weak", "strong_model": "strong",
              "lm": {"spec": str(lm), "id": str(lm), "revision": None, "kind": "causal_lm", "stand_in": False,
                     "requested_revision": None, "dtype": "float32", "max_length": 128, "prompt_template": "{prompt}",
                     "use_chat_template": False, "micro_batch_size": 4},
              "calibration": {"split": "validation", "shares": [0.0, 0.5, 1.0], "p_correct_quantiles": [0.1, 0.4, 0.9]}}
    export_dir = export_router(root / "export", probe.state_dict(), config, {"recipe": "probe"})
    return export_dir, lm, probe


def test_exported_probe_routes_by_threshold_and_by_share(probe_export):
    export_dir, lm, probe = probe_export
    router = load_probe_router(export_dir)
    prompts = list(mmlu_questions(per_subject=3))
    p = router.p_correct(prompts)
    # the same number by hand: the LM's layer-1 hidden states, mean over tokens, through the probe at T = 2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm)
    model = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32).eval()
    with torch.no_grad():
        ids = tokenizer(prompts[4], return_tensors="pt")["input_ids"][:, -128:]
        state = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0].mean(0)
        expected = torch.sigmoid(probe(state[None]) / 2.0).item()
    assert p[4] == pytest.approx(expected, abs=1e-5)
    assert router.score(prompts) == pytest.approx(1 - p)
    threshold = float(np.median(p))
    routed = router.route(prompts, threshold=threshold)
    assert routed == ["strong" if v < threshold else "weak" for v in p]
    assert router.threshold_for_share(0.25) == pytest.approx(0.25)  # interpolated in the stored quantiles
    assert router.route(prompts, escalation_share=1.0) == ["strong" if v < 0.9 else "weak" for v in p]
    with pytest.raises(ConfigError, match="exactly one of"):
        router.route(prompts)
    with pytest.raises(ConfigError, match=r"escalation_share must be in \[0, 1\]"):
        router.route(prompts, escalation_share=1.5)


def test_loading_refuses_tampered_or_foreign_exports(probe_export, tmp_path):
    export_dir, _, _ = probe_export
    import shutil

    tampered = shutil.copytree(export_dir, tmp_path / "tampered")
    config = json.loads((tampered / "config.json").read_text())
    config["temperature"] = 0.1
    (tampered / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_probe_router(tampered)
    foreign = export_router(tmp_path / "mf", {"w": torch.zeros(1)}, {"router_type": "mf"}, {"recipe": "mf"})
    with pytest.raises(CheckpointError, match="not 'probe'"):
        load_probe_router(foreign)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_probe_router(tmp_path)
