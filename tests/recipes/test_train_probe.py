"""training/train_probe.py end to end on real MMLU outcomes: a tiny random-init Qwen2's hidden states (plumbing,
every baseline) and the packaged MiniLM as a named stand-in; export, report, resume, load, route."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from routerforge.data.dataset_io import load_prepared
from routerforge.data.hidden_states import load_hidden_states, load_stage_config, run_hidden_states
from routerforge.errors import ConfigError
from routerforge.eval.uncertainty_baselines import auroc
from routerforge.models.probe import load_probe_router
from tests.fixtures.recipe_runner import REPO_ROOT, read_export, run_recipe, run_recipe_in_process
from tests.fixtures.tiny_qwen2 import WEAK_MODEL, build_probe_dataset, build_tiny_causal_lm

CONFIG = REPO_ROOT / "configs/probe/tiny.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_recipe")
    lm = build_tiny_causal_lm(root / "lm", "qwen2")
    data = build_probe_dataset(root / "data", per_subject=20)
    features = [f"features.dataset={data}", f"features.lm.model={lm}", f"features.output_dir={root / 'hs'}"]
    run_hidden_states(load_stage_config(CONFIG, features), progress=False)
    return {"root": root, "lm": lm, "data": data, "features": features}


def argv(tiny, out, *extra):
    return ["--config", str(CONFIG), *tiny["features"], f"run.output_dir={out}", *extra]


def test_tiny_run_exports_the_chosen_probe_and_reports_every_estimator(tiny, tmp_path):
    result = run_recipe_in_process("train_probe", argv(tiny, tmp_path))
    export_dir = tmp_path / "probe" / "probe-tiny" / "final"
    assert result["export_dir"] == str(export_dir)
    _, config, manifest = read_export(export_dir)
    assert config["router_type"] == "probe" and config["probe_kind"] in ("linear", "mlp")
    assert config["layer"] in (0, 1, 2) and config["pooling"] in ("last", "prompt_last", "mean")
    assert result["chosen"] == f"{config['probe_kind']}/layer{config['layer']}/{config['pooling']}"
    assert config["lm"]["spec"] == str(tiny["lm"]) and config["lm"]["revision"].startswith("sha256:")
    assert manifest["encoder"]["layer"] == config["layer"] and manifest["encoder"]["pooling"] == config["pooling"]
    assert manifest["encoder"]["stand_in"] is False and manifest["model_pool"][0] == WEAK_MODEL
    assert manifest["training"]["candidates"] == 2 * 3 * 3  # kinds x layers x poolings
    assert config["temperature"] > 0

    report = json.loads((tmp_path / "probe" / "probe-tiny" / "report" / "report.json").read_text())
    assert set(report["sets"]) == {"test", "eval/mmlu_holdout"}
    for section in report["sets"].values():
        estimators = section["estimators"]
        assert set(estimators) == {"probe", "mean_token_logprob", "max_softmax_prob", "verbalized", "random"}
        for name, est in estimators.items():
            assert 0 <= est["raw"]["auroc"] <= 1 and 0 <= est["raw"]["brier"] <= 1, name
            assert len(est["routing"]["curve"]["accuracy"]) == 21
            assert est["routing"]["strong_assumed_always_correct"] is False
        assert 0 <= estimators["verbalized"]["parse_rate"] <= 1
    assert (tmp_path / "probe" / "probe-tiny" / "report" / "routing_test.png").is_file()

    # the export reproduces the report's probe numbers on the test split through the router API
    store = load_hidden_states(tiny["root"] / "hs")
    data = load_prepared(tiny["data"])
    test = data.outcomes["test"].to_pandas()
    weak = test[test.model == WEAK_MODEL].groupby("prompt_id").score.mean().sort_index()
    rows = store.rows(list(weak.index))
    position = store.layers.index(config["layer"])
    router = load_probe_router(export_dir)
    p = router.p_correct_from_features(store.features(config["pooling"])[rows, position])
    assert auroc(p, (weak.values >= 0.5).astype(float)) == pytest.approx(
        report["sets"]["test"]["estimators"]["probe"]["raw"]["auroc"])
    # ... and from raw prompt texts: the LM runs again (float32, like the stored states, which are float16)
    prompts = dict(zip(test.prompt_id, test.prompt, strict=True))
    p_text = router.p_correct([prompts[pid] for pid in weak.index[:4]])
    np.testing.assert_allclose(p_text, p[:4], atol=2e-3)  # stored states are float16
    assert set(router.route([prompts[pid] for pid in weak.index], escalation_share=0.5)) <= {
        WEAK_MODEL, "gpt-4-1106-preview"}


def test_cp_router_section_with_gold_answers(tiny, tmp_path):
    # RouteLLM's MMLU CSVs carry no gold option letters; this file gives every prompt the answer "A" to test
    # the wiring (coverage and routing are computed against these labels, whatever they are).
    data = load_prepared(tiny["data"])
    answers = tmp_path / "answers.jsonl"
    ids = {pid for split in data.prompts for pid in data.prompts[split]["prompt_id"]}
    ids |= {json.loads(line)["prompt_id"] for line in data.eval_sets()["mmlu_holdout"].read_text().splitlines()}
    answers.write_text("".join(json.dumps({"prompt_id": pid, "answer": "A"}) + "\n" for pid in sorted(ids)))
    result = run_recipe_in_process("train_probe", argv(tiny, tmp_path, "report.n_bootstrap=0", "probe.kinds=[linear]",
                                                      f"report.cp_router_answers={answers}",
                                                      "report.cp_router_alpha=0.2", "report.llm_tokens_per_question=1",
                                                      "report.lrm_tokens_per_question=100"))
    section = json.loads(open(result["report"]).read())["cp_router"]
    test = section["test"]
    assert test["alpha"] == 0.2 and test["alpha_chosen_by"] == "fixed" and 0 <= test["coverage"] <= 1
    assert sum(test["set_size_distribution"].values()) == pytest.approx(1.0)
    share_kept = test["set_size_distribution"]["1"]
    assert test["escalation_share"] == pytest.approx(1 - share_kept)
    assert test["token_reduction_ratio"] == pytest.approx(share_kept * (1 - 1 / 100))
    assert section["eval/mmlu_holdout"]["n_routed"] > 0


def test_resumed_run_ends_with_the_same_probe(tiny, tmp_path):
    fast = "report.n_bootstrap=0"
    full = run_recipe_in_process("train_probe", argv(tiny, tmp_path / "full", fast))
    run_recipe_in_process("train_probe", argv(tiny, tmp_path / "cut", "run.max_optimizer_steps=3", fast))
    resumed = run_recipe_in_process("train_probe", argv(tiny, tmp_path / "cut", "resume=auto", fast))
    assert resumed["optimizer_steps"] == full["optimizer_steps"] > 3
    assert resumed["chosen"] == full["chosen"]
    a = load_file(f"{full['export_dir']}/model.safetensors")
    b = load_file(f"{resumed['export_dir']}/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_minilm_stand_in_is_named_and_lm_baselines_are_unavailable(tiny, tmp_path):
    # One command: no data_prep/hidden_states.py run first; the recipe extracts the store its features block names.
    features = [f"features.dataset={tiny['data']}", "features.lm.model=packaged:all-MiniLM-L6-v2",
                "features.lm.option_tokens=[]", "features.lm.verbalized.enabled=false",
                "features.lm.layers=[0,3,6]", "features.lm.poolings=[mean]", f"features.output_dir={tmp_path / 'hs'}"]
    assert not (tmp_path / "hs").exists()
    result = run_recipe_in_process("train_probe", ["--config", str(CONFIG), *features, f"run.output_dir={tmp_path}",
                                                   "probe.kinds=[linear]", "report.n_bootstrap=0"])
    store = load_hidden_states(tmp_path / "hs")
    assert store.lm["spec"] == "packaged:all-MiniLM-L6-v2" and store.layers == [0, 3, 6]
    _, config, manifest = read_export(tmp_path / "probe" / "probe-tiny" / "final")
    assert config["lm"]["stand_in"] is True and manifest["encoder"]["stand_in"] is True
    assert manifest["encoder"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    report = json.loads(open(result["report"]).read())
    assert report["lm"]["stand_in_for"] == WEAK_MODEL
    estimators = report["sets"]["test"]["estimators"]
    for name in ("mean_token_logprob", "max_softmax_prob", "verbalized"):
        assert "STAND-IN" in estimators[name]["unavailable"]
    assert "raw" in estimators["probe"] and "raw" in estimators["random"]


def test_config_errors_name_the_key(tiny, tmp_path):
    with pytest.raises(ConfigError, match="optim.max_grad_norm must be 0"):
        run_recipe_in_process("train_probe", argv(tiny, tmp_path, "optim.max_grad_norm=1.0"))
    with pytest.raises(ConfigError, match="probe.layers: layer 9 was not stored"):
        run_recipe_in_process("train_probe", argv(tiny, tmp_path, "probe.layers=[9]"))
    with pytest.raises(ConfigError, match="data.select_split must differ"):
        run_recipe_in_process("train_probe", argv(tiny, tmp_path, "data.select_split=train"))
    from routerforge.errors import DataError

    # Outcome rows of the weak model exist, but not in the requested sources: the error names data.sources.
    with pytest.raises(DataError, match=r"none in data.sources=\['nope'\]; set data.sources to some of them"):
        run_recipe_in_process("train_probe", argv(tiny, tmp_path, "data.sources=[nope]"))
    with pytest.raises(DataError, match=r"no outcome of data.weak_model=gpt-5 \(its models: .*set data.weak_model"):
        run_recipe_in_process("train_probe", argv(tiny, tmp_path, "data.weak_model=gpt-5"))


@pytest.mark.slow
def test_two_process_run_trains_in_sync(tiny, tmp_path):
    proc = run_recipe("training/train_probe.py", str(CONFIG), [*tiny["features"], f"run.output_dir={tmp_path}"],
                      processes=2)
    _, _, manifest = read_export(tmp_path / "probe" / "probe-tiny" / "final")
    assert manifest["training"]["world_size"] == 2
    assert len(set(manifest["training"]["param_sha256_per_process"])) == 1
    assert "chosen probe:" in proc.stdout
