"""training/train_knn.py and training/train_linear.py end to end on real RouteLLM MMLU outcomes with real
MiniLM embeddings: each exported router computes exactly what it claims (the neighbour mean; the logistic
heads scikit-learn fits), its hyperparameters were searched, and it routes better than random and than a
TF-IDF + logistic-regression baseline on held-out questions (paired bootstrap, fixed seeds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from routerforge.data.dataset_io import load_prepared
from routerforge.eval.binary import binary_report
from routerforge.models.knn import KNNRouter, KNNSettings
from routerforge.models.linear import LinearRouter, fit_head
from tests.fixtures.recipe_runner import REPO_ROOT, read_export, run_recipe_in_process
from tests.fixtures.tiny_outcomes_dataset import STRONG_MODEL, WEAK_MODEL, build_tiny_outcomes_dataset

sys.path.insert(0, str(REPO_ROOT / "bench"))
from bench_quality import paired_difference  # noqa: E402  (the benchmark's own paired bootstrap)

CONFIG = "configs/knn/tiny.yaml"
# Subjects with different gaps between GPT-4-1106 and Mixtral (RouteLLM's full-subject accuracy): far apart on
# moral_scenarios (0.81 vs 0.43) and college_computer_science (0.67 vs 0.38), close on geography, Mixtral ahead
# on world_religions. A router that learns where the gap is should beat random clearly.
SUBJECTS = ("moral_scenarios", "world_religions", "high_school_geography", "conceptual_physics",
            "college_computer_science")


@pytest.fixture(scope="module")
def mmlu_data(tmp_path_factory, request) -> Path:
    cache = getattr(request.config, "cache", None)
    cache_dir = Path(cache.mkdir("routerforge-embeddings")) if cache is not None else None
    return build_tiny_outcomes_dataset(tmp_path_factory.mktemp("data"), subjects=SUBJECTS, per_subject=80,
                                       embedding_cache_dir=cache_dir)


@pytest.fixture(scope="module")
def fitted(mmlu_data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run")
    result = run_recipe_in_process("train_knn", ["--config", str(REPO_ROOT / CONFIG), f"data.path={mmlu_data}",
                                                 f"run.output_dir={out}"])
    return result, out / "knn" / "knn-tiny" / "final"


@pytest.fixture(scope="module")
def fitted_linear(mmlu_data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run")
    result = run_recipe_in_process("train_linear", ["--config", str(REPO_ROOT / "configs/linear/tiny.yaml"),
                                                    f"data.path={mmlu_data}", f"run.output_dir={out}"])
    return result, out / "linear" / "linear-tiny" / "final"


def split_columns(data, split: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(prompt ids, prompts, strong scores, weak scores) of the split's prompts that both models answered."""
    by_prompt: dict[str, dict[str, dict]] = {}
    for row in data.outcomes[split].to_list():
        by_prompt.setdefault(row["prompt_id"], {})[row["model"]] = row
    ids = sorted(p for p, cells in by_prompt.items() if STRONG_MODEL in cells and WEAK_MODEL in cells)
    return (ids, [by_prompt[p][STRONG_MODEL]["prompt"] for p in ids],
            np.array([by_prompt[p][STRONG_MODEL]["score"] for p in ids]),
            np.array([by_prompt[p][WEAK_MODEL]["score"] for p in ids]))


def test_export_files_and_manifest(fitted, mmlu_data):
    result, export = fitted
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    config = json.loads((export / "config.json").read_text())
    manifest = json.loads((export / "manifest.json").read_text())
    assert config["router_type"] == manifest["router_type"] == "knn"
    assert config["model_pool"] == [STRONG_MODEL, WEAK_MODEL]
    data = load_prepared(mmlu_data)
    # k was searched on validation (3 k x 2 priors) and the export indexes train + validation prompts
    assert len(manifest["training"]["search"]) == 6
    assert config["k"] in (5, 10, 25) and config["k"] == result["settings"]["k"]
    assert config["indexed_prompts"] == len(data.prompts["train"]) + len(data.prompts["validation"])


def test_prediction_is_the_neighbour_mean(fitted, mmlu_data):
    """quality[q, m] = (Σ_kNN y + α μ_m) / (n + α), recomputed here by brute force from the dataset."""
    _, export = fitted
    weights, config, _ = read_export(export)
    router = KNNRouter.from_state_dict(weights)
    settings = KNNSettings(config["k"], config["prior_strength"], config["weighting"], config["temperature"])
    data = load_prepared(mmlu_data)
    ids, _, _, _ = split_columns(data, "test")
    emb = data.embedding_index()
    queries = np.stack([emb[p] for p in ids[:5]])
    predicted = router.predict(queries, settings)
    index = router.embeddings.astype(np.float64)
    table = router.scores.astype(np.float64)
    for q, row in zip(queries.astype(np.float64), predicted, strict=True):
        nearest = np.argsort(-(index @ q), kind="stable")[:settings.k]
        for m in range(table.shape[1]):
            scored = table[nearest, m][~np.isnan(table[nearest, m])]
            expected = ((scored.sum() + settings.prior_strength * router.prior_mean[m])
                        / (len(scored) + settings.prior_strength))
            assert row[m] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("family", ["knn", "linear"])
def test_routes_better_than_random_and_tfidf(family, fitted, fitted_linear, mmlu_data):
    _, export = fitted if family == "knn" else fitted_linear
    weights, config, _ = read_export(export)
    data = load_prepared(mmlu_data)
    test_ids, test_prompts, strong, weak = split_columns(data, "test")
    _, train_prompts, train_strong, train_weak = split_columns(data, "train")
    emb = data.embedding_index()
    test_emb = np.stack([emb[p] for p in test_ids])
    if family == "knn":
        settings = KNNSettings(config["k"], config["prior_strength"], config["weighting"], config["temperature"])
        quality = KNNRouter.from_state_dict(weights).predict(test_emb, settings)
    else:
        quality = LinearRouter.from_state_dict(weights).predict(test_emb)
    pool = config["model_pool"]
    knn_scores = quality[:, pool.index(STRONG_MODEL)] - quality[:, pool.index(WEAK_MODEL)]
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    baseline = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train_prompts),
                                                     (train_strong > train_weak).astype(int))
    tfidf_scores = baseline.predict_proba(vectorizer.transform(test_prompts))[:, 1]

    report = binary_report(knn_scores, weak, strong, n_bootstrap=500, seed=0)
    assert report.intervals["apgr"].lo > 0.5, report.intervals["apgr"]  # random's APGR is 0.5
    difference = paired_difference(knn_scores, tfidf_scores, weak, strong, seed=0)
    assert difference["low"] > 0.0, difference


def test_adding_a_model_keeps_every_other_column(fitted):
    _, export = fitted
    weights, _, _ = read_export(export)
    router = KNNRouter.from_state_dict(weights)
    column = np.where(np.arange(len(router.scores)) % 3 == 0, np.nan, 1.0)
    grown = router.add_model_column(column)
    assert grown.scores.shape[1] == router.scores.shape[1] + 1
    np.testing.assert_array_equal(grown.scores[:, :-1], router.scores)
    np.testing.assert_array_equal(grown.embeddings, router.embeddings)
    settings = KNNSettings(5, 0.0, "uniform", 0.05)
    before, after = router.predict(router.embeddings[:4], settings), grown.predict(router.embeddings[:4], settings)
    np.testing.assert_array_equal(after[:, :-1], before)


def test_linear_heads_are_scikit_learns_fit(fitted_linear, mmlu_data):
    """The exported heads are the logistic regressions fitted on train + validation with the chosen C."""
    result, export = fitted_linear
    weights, config, manifest = read_export(export)
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    assert config["router_type"] == "linear" and config["inverse_l2"] in (1.0, 0.1)
    assert [row["inverse_l2"] for row in manifest["training"]["search"]] == [1.0, 0.1]
    router = LinearRouter.from_state_dict(weights)
    data = load_prepared(mmlu_data)
    emb = data.embedding_index()
    rows: dict[str, dict[str, float]] = {}
    for split in ("train", "validation"):
        for row in data.outcomes[split].to_list():
            rows.setdefault(row["prompt_id"], {})[row["model"]] = row["score"]
    ids = sorted(rows)
    x = np.stack([emb[p] for p in ids]).astype(np.float64)
    for m, model in enumerate(config["model_pool"]):
        y = np.array([rows[p].get(model, np.nan) for p in ids])
        w, b = fit_head(x, y, config["inverse_l2"])
        np.testing.assert_allclose(router.weight[m], w, rtol=1e-5, atol=1e-6)
        assert router.bias[m] == pytest.approx(b, abs=1e-5)
