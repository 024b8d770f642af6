"""training/train_cluster.py end to end on real RouteLLM MMLU outcomes with real MiniLM embeddings."""

from __future__ import annotations

import hashlib
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from routerforge.data.dataset_io import load_prepared
from routerforge.models.cluster import ClusterRouter
from routerforge.train.consistency import parameter_digest
from tests.fixtures.recipe_runner import (
    ACCELERATE,
    REPO_ROOT,
    read_export,
    recipe_env,
    run_recipe,
    run_recipe_in_process,
)
from tests.fixtures.tiny_outcomes_dataset import (
    ROUTERARENA_PRICES,
    STRONG_MODEL,
    WEAK_MODEL,
    build_tiny_outcomes_dataset,
)

CONFIG = "configs/cluster/tiny.yaml"
SCRIPT = "training/train_cluster.py"
EXPORT_FILES = ["config.json", "manifest.json", "model.safetensors"]
# configs/cluster/tiny.yaml's prices (USD per million input, output tokens) and assumed output tokens.
TINY_PRICES = {WEAK_MODEL: (0.6, 0.6), STRONG_MODEL: (10.0, 30.0)}
TINY_OUTPUT_TOKENS = 16


def embedding_cache_dir(request) -> Path | None:
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("routerforge-embeddings")) if cache is not None else None


@pytest.fixture(scope="module")
def mmlu_data(tmp_path_factory, request) -> Path:
    return build_tiny_outcomes_dataset(tmp_path_factory.mktemp("data"),
                                       embedding_cache_dir=embedding_cache_dir(request))


def tiny_argv(data_dir, out_dir, *extra: str) -> list[str]:
    return ["--config", str(REPO_ROOT / CONFIG), f"data.path={data_dir}", f"run.output_dir={out_dir}", *extra]


@pytest.fixture(scope="module")
def tiny_run(mmlu_data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run")
    result = run_recipe_in_process("train_cluster", tiny_argv(mmlu_data, out))
    return result, out / "cluster" / "cluster-tiny" / "final"


def router_from_export(export_dir: Path) -> ClusterRouter:
    weights, config, _ = read_export(export_dir)
    router = ClusterRouter.from_state_dict(weights)
    assert router.config() == {k: config[k] for k in ("num_clusters", "num_models", "prompt_embedding_dim")}
    return router


def outcomes_by_prompt(data, split: str) -> dict[str, dict[str, dict]]:
    table: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in data.outcomes[split].to_list():
        table[row["prompt_id"]][row["model"]] = row
    return table


def expected_cost_usd(prompt: str, model: str) -> float:
    """tiny.yaml's rule written out: input tokens ~ characters / 4, 16 output tokens, RouterArena prices."""
    price_in, price_out = TINY_PRICES[model]
    return (len(prompt) / 4.0 * price_in + TINY_OUTPUT_TOKENS * price_out) / 1e6


def test_tiny_run_exports_exactly_the_expected_files(tiny_run, mmlu_data):
    result, export_dir = tiny_run
    assert result["export_dir"] == str(export_dir)
    assert sorted(p.name for p in export_dir.iterdir()) == EXPORT_FILES

    weights, config, manifest = read_export(export_dir)
    data = load_prepared(mmlu_data)
    assert sorted(weights) == ["centroids", "cost", "quality", "support"]
    assert weights["centroids"].shape == (6, 384) and weights["centroids"].dtype == torch.float32
    for name in ("quality", "cost", "support"):
        assert weights[name].shape == (6, 2)
    # config.json: the pool in order, k, the default λ and the encoder the centroids live in.
    assert config["router_type"] == "cluster" and config["model_pool"] == data.models == [STRONG_MODEL, WEAK_MODEL]
    assert config["num_clusters"] == 6 and config["cost_weight"] == 0.0
    assert config["encoder"] == data.encoder and config["encoder"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"

    assert manifest["recipe"] == "cluster" and manifest["model_pool"] == data.models
    assert manifest["data"]["fingerprint"] == data.fingerprint and manifest["encoder"] == data.encoder
    assert manifest["data"]["table_split_per_model"] == {STRONG_MODEL: "validation", WEAK_MODEL: "validation"}
    assert manifest["data"]["cost_source_per_model"] == {STRONG_MODEL: "prices", WEAK_MODEL: "prices"}
    kmeans = manifest["training"]["kmeans"]
    assert kmeans["init"] == "kmeans++" and kmeans["train_prompts"] == len(data.prompts["train"]) == 175
    assert sum(kmeans["cluster_sizes"]) == 175 and kmeans["objective"] < kmeans["initial_objective"]
    assert manifest["training"]["world_size"] == 1
    assert manifest["training"]["param_sha256_per_process"] == [parameter_digest(router_from_export(export_dir))]
    for name in ("model.safetensors", "config.json"):
        assert manifest["files"][name] == hashlib.sha256((export_dir / name).read_bytes()).hexdigest()


def test_table_is_each_models_validation_mean_score_and_cost_per_cluster(tiny_run, mmlu_data):
    _, export_dir = tiny_run
    router = router_from_export(export_dir)
    data = load_prepared(mmlu_data)
    emb = data.embedding_index()
    scores, costs = defaultdict(list), defaultdict(list)
    for pid, by_model in outcomes_by_prompt(data, "validation").items():
        cluster = int(router.assign(torch.from_numpy(emb[pid][None, :]))[0])
        for model, row in by_model.items():
            scores[(cluster, model)].append(row["score"])
            costs[(cluster, model)].append(expected_cost_usd(row["prompt"], model))
    pool = [STRONG_MODEL, WEAK_MODEL]
    assert len(scores) == 12  # every (cluster, model) cell has validation outcomes
    for (cluster, model), values in scores.items():
        j = pool.index(model)
        assert router.quality[cluster, j].item() == pytest.approx(np.mean(values))
        assert router.support[cluster, j].item() == len(values)
        assert router.cost[cluster, j].item() == pytest.approx(np.mean(costs[(cluster, model)]), rel=1e-5)
    assert (router.cost[:, 0] > 10 * router.cost[:, 1]).all()  # GPT-4 is >10x Mixtral's price per prompt


def test_routing_on_held_out_prompts_trades_quality_for_cost(tiny_run, mmlu_data):
    result, export_dir = tiny_run
    router = router_from_export(export_dir)
    data = load_prepared(mmlu_data)
    emb = data.embedding_index()
    test = outcomes_by_prompt(data, "test")
    pids = sorted(test)
    x = torch.from_numpy(np.stack([emb[p] for p in pids]))
    true_score = np.array([[test[p][STRONG_MODEL]["score"], test[p][WEAK_MODEL]["score"]] for p in pids])
    true_cost = np.array([[expected_cost_usd(test[p][m]["prompt"], m) for m in (STRONG_MODEL, WEAK_MODEL)]
                          for p in pids])
    rows = np.arange(len(pids))

    # λ = 0: the higher-quality model of the prompt's cluster (ties to the cheaper); on real MMLU both win
    # somewhere (Mixtral on high-school math, where RouteLLM's GPT-4 run mostly failed) ...
    choice0 = router.route(x, 0.0).numpy()
    cluster_quality = router.quality[router.assign(x)].numpy()
    np.testing.assert_array_equal(choice0, np.where(cluster_quality[:, 0] > cluster_quality[:, 1], 0, 1))
    assert set(choice0.tolist()) == {0, 1}
    # ... so on held-out prompts the router beats the best single model.
    routed_quality = true_score[rows, choice0].mean()
    assert routed_quality > true_score.mean(axis=0).max()
    at_lambda = result["metrics"]["at_cost_weight"]
    assert at_lambda["mean_quality"] == pytest.approx(routed_quality)
    assert result["metrics"]["best_single_model_quality"] == pytest.approx(true_score.mean(axis=0).max())
    assert result["metrics"]["prompts"] == len(pids) == 65

    # Large λ (1e4 quality per USD): the ~1e-3 USD difference outweighs any quality gap -> Mixtral always.
    choice_large = router.route(x, 1e4).numpy()
    assert (choice_large == 1).all()
    assert true_cost[rows, choice_large].mean() == pytest.approx(true_cost[:, 1].mean())
    assert true_cost[rows, choice_large].mean() < 0.2 * true_cost[rows, choice0].mean()


def test_unseen_model_is_added_from_a_small_sample_without_reclustering(mmlu_data, tmp_path):
    # A router that has only seen GPT-4 ...
    run_recipe_in_process("train_cluster", tiny_argv(mmlu_data, tmp_path, "run.name=base",
                                                     f"data.models=[{STRONG_MODEL}]"))
    base_dir = tmp_path / "cluster" / "base" / "final"
    base_weights, base_config, _ = read_export(base_dir)
    assert base_config["model_pool"] == [STRONG_MODEL]
    # ... gains Mixtral from at most 3 scored validation prompts per cluster.
    result = run_recipe_in_process("train_cluster", tiny_argv(mmlu_data, tmp_path, "run.name=added",
                                                              f"init.from_export={base_dir}"))
    added_dir = tmp_path / "cluster" / "added" / "final"
    assert result["model_pool"] == [STRONG_MODEL, WEAK_MODEL]
    weights, config, manifest = read_export(added_dir)
    assert sorted(p.name for p in added_dir.iterdir()) == EXPORT_FILES
    assert config["model_pool"] == [STRONG_MODEL, WEAK_MODEL]

    # The clusters and GPT-4's column are bit for bit the base router's.
    assert torch.equal(weights["centroids"], base_weights["centroids"])
    for name in ("quality", "cost", "support"):
        assert torch.equal(weights[name][:, :1], base_weights[name])

    # Mixtral's new column is the mean score of exactly the sampled prompts in each cluster.
    added = manifest["training"]["added_models"][WEAK_MODEL]
    assert manifest["training"]["base_model_pool"] == [STRONG_MODEL]
    assert added["split"] == "validation" and max(added["prompts_per_cluster"]) <= 3
    assert (0 < added["prompts"] == len(added["prompt_ids"]) <= 3 * 6
            < len(load_prepared(mmlu_data).prompts["validation"]))
    router = router_from_export(added_dir)
    data = load_prepared(mmlu_data)
    emb, validation = data.embedding_index(), outcomes_by_prompt(data, "validation")
    per_cluster = defaultdict(list)
    for pid in added["prompt_ids"]:
        per_cluster[int(router.assign(torch.from_numpy(emb[pid][None, :]))[0])].append(validation[pid][WEAK_MODEL])
    assert [len(per_cluster[c]) for c in range(6)] == added["prompts_per_cluster"]
    for cluster, rows in per_cluster.items():
        assert router.quality[cluster, 1].item() == pytest.approx(np.mean([r["score"] for r in rows]))
        assert router.cost[cluster, 1].item() == pytest.approx(
            np.mean([expected_cost_usd(r["prompt"], WEAK_MODEL) for r in rows]), rel=1e-5)
    # The extended router routes to the new model: always at large λ, and where it is better at λ = 0.
    test_x = torch.from_numpy(data.embeddings("test")[1])
    assert (router.route(test_x, 1e4) == 1).all() and (router.route(test_x, 0.0) == 1).any()


def test_model_without_validation_outcomes_falls_back_to_train_and_data_costs_win(tmp_path, request, capsys):
    # Costs recorded in the data (RouterArena prices, 8 output tokens) and no Mixtral validation outcomes.
    data_dir = build_tiny_outcomes_dataset(tmp_path / "data", name="no_mixtral_validation",
                                           prices=ROUTERARENA_PRICES, assumed_output_tokens=8,
                                           drop_outcomes=(("validation", WEAK_MODEL),),
                                           embedding_cache_dir=embedding_cache_dir(request))
    run_recipe_in_process("train_cluster", tiny_argv(data_dir, tmp_path, "data.eval_split="))
    assert (f"warning: no 'validation' outcomes for {WEAK_MODEL}: their per-cluster table uses 'train' outcomes"
            in capsys.readouterr().out)
    weights, _, manifest = read_export(tmp_path / "cluster" / "cluster-tiny" / "final")
    assert manifest["data"]["table_split_per_model"] == {STRONG_MODEL: "validation", WEAK_MODEL: "train"}
    assert manifest["data"]["cost_source_per_model"] == {STRONG_MODEL: "data", WEAK_MODEL: "data"}
    assert manifest["metrics"] == {}  # data.eval_split="" : no evaluation
    data = load_prepared(data_dir)
    # Mixtral's support is its train outcomes, GPT-4's its validation outcomes.
    assert weights["support"][:, 1].sum().item() == len(data.outcomes["train"]) // 2 == 175
    assert weights["support"][:, 0].sum().item() == len(data.outcomes["validation"]) == 60
    # Data costs (8 output tokens) win over tiny.yaml's prices (16 output tokens): GPT-4 pays 30 USD/M output.
    gpt4_costs = [r["cost"] for r in data.outcomes["validation"].to_list()]
    assert weights["cost"][:, 0] @ weights["support"][:, 0] / 60 == pytest.approx(np.mean(gpt4_costs), rel=1e-5)


def test_config_typo_names_the_key(mmlu_data, tmp_path):
    proc = run_recipe(SCRIPT, CONFIG, [f"data.path={mmlu_data}", f"run.output_dir={tmp_path}",
                                       "clusters.num_clustres=4"], check=False, timeout_s=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(
        ": unknown config key 'clusters.num_clustres'. Did you mean 'num_clusters'? "
        "Valid keys here: num_clusters, init, n_iterations, max_points_per_centroid.")
    assert not (tmp_path / "cluster").exists()


def test_default_and_tiny_configs_parse_with_their_documented_values():
    from routerforge.config import load_config
    from tests.fixtures.recipe_runner import load_recipe_module

    config_cls = load_recipe_module("train_cluster").ClusterConfig
    default = load_config(config_cls, REPO_ROOT / "configs/cluster/default.yaml")
    assert default.clusters.num_clusters == 32 and default.clusters.init == "kmeans++"
    assert default.data.table_split == "train" and default.data.eval_split == "validation"
    assert default.routing.cost_weight == 0.0
    tiny = load_config(config_cls, REPO_ROOT / CONFIG, ["routing.cost_weight=250"])
    assert tiny.costs.prices[STRONG_MODEL].output_usd_per_million_tokens == 30.0
    assert tiny.routing.cost_weight == 250.0 and tiny.clusters.num_clusters == 6


def test_bad_values_and_unknown_models_are_one_line_errors(mmlu_data, tmp_path):
    from routerforge.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="clusters.init must be one of kmeans\\+\\+, random, got 'kmeans'"):
        run_recipe_in_process("train_cluster", tiny_argv(mmlu_data, tmp_path, "clusters.init=kmeans"))
    with pytest.raises(DataError, match=r"data.models: \['gpt-5'\] have no outcomes"):
        run_recipe_in_process("train_cluster", tiny_argv(mmlu_data, tmp_path, "data.models=[gpt-5]"))
    with pytest.raises(DataError, match="has 175 prompts, fewer than clusters.num_clusters=500"):
        run_recipe_in_process("train_cluster", tiny_argv(mmlu_data, tmp_path, "clusters.num_clusters=500"))
    with pytest.raises(ConfigError, match="routing.cost_weight must be a finite number >= 0, got -1.0"):
        run_recipe_in_process("train_cluster", tiny_argv(mmlu_data, tmp_path, "routing.cost_weight=-1"))
    assert not (tmp_path / "cluster" / "cluster-tiny" / "final").exists()


@pytest.mark.slow
def test_accelerate_launch_single_process_with_wandb_offline(mmlu_data, tmp_path):
    # The documented command, as users type it (W&B offline: no key, no network).
    proc = subprocess.run(
        [ACCELERATE, "launch", "--num_processes", "1", str(REPO_ROOT / SCRIPT), "--config", str(REPO_ROOT / CONFIG),
         f"data.path={mmlu_data}", f"run.output_dir={tmp_path}", "tracking.report_to=wandb"],
        cwd=REPO_ROOT, env=recipe_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    export_dir = tmp_path / "cluster" / "cluster-tiny" / "final"
    _, _, manifest = read_export(export_dir)
    tracking = manifest["tracking"]
    assert tracking["tracker"] == "wandb" and tracking["mode"] == "offline"
    offline_dir = Path(tracking["local_dir"])
    assert offline_dir.parent == tmp_path / "cluster" / "cluster-tiny" / "wandb"
    assert offline_dir.is_dir() and offline_dir.name.startswith("offline-run-")
    assert f"checkpoint: {export_dir}" in proc.stdout
    assert f"W&B run {tracking['run_id']} (offline): {offline_dir}" in proc.stdout


@pytest.mark.slow
def test_two_processes_really_run_and_build_the_same_router(mmlu_data, tiny_run, tmp_path):
    proc = run_recipe(SCRIPT, CONFIG, [f"data.path={mmlu_data}", f"run.output_dir={tmp_path}"], processes=2)
    export_dir = tmp_path / "cluster" / "cluster-tiny" / "final"
    weights, _, manifest = read_export(export_dir)
    training = manifest["training"]
    assert training["world_size"] == 2 and training["distributed_type"] == "MULTI_CPU"
    # Both ranks hold identical tensors, and they are the exported ones.
    digests = training["param_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1] == parameter_digest(router_from_export(export_dir))
    # Only the main process exports and prints.
    assert sum(line.startswith("checkpoint: ") for line in proc.stdout.splitlines()) == 1
    # Same seed, same data: the 2-process router equals the 1-process one (sums are all-reduced shards).
    one_weights, _, _ = read_export(tiny_run[1])
    for name, tensor in one_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6)


def test_default_splits_and_a_table_without_costs_give_one_warning_line(mmlu_data, tmp_path, capsys):
    # The default config's splits (table from train, evaluation on validation), and no price for any model.
    run_recipe_in_process("train_cluster", tiny_argv(mmlu_data, tmp_path, "data.table_split=train",
                                                     "data.eval_split=validation", "costs.prices={}"))
    cost_lines = [line for line in capsys.readouterr().out.splitlines() if "no cost" in line]
    assert len(cost_lines) == 1 and "no cost for 2 of 2 models" in cost_lines[0]
    assert STRONG_MODEL in cost_lines[0] and WEAK_MODEL in cost_lines[0]
    _, _, manifest = read_export(tmp_path / "cluster" / "cluster-tiny" / "final")
    assert manifest["data"]["table_split_per_model"] == {STRONG_MODEL: "train", WEAK_MODEL: "train"}
    assert manifest["metrics"]  # evaluated on the validation split
