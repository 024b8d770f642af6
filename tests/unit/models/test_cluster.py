"""routerforge.models.cluster on REAL data: RouteLLM MMLU outcomes with all-MiniLM-L6-v2 prompt embeddings."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from routerforge.data.dataset_io import load_prepared
from routerforge.errors import DataError
from routerforge.models.cluster import (
    STATE_KEYS,
    ClusterRouter,
    TableStats,
    add_models,
    finalize_tables,
    fit_kmeans,
    kmeans_objective,
    kmeans_plus_plus_seeds,
    nearest_centroid,
    sample_per_cluster,
    table_stats,
)
from tests.fixtures.tiny_outcomes_dataset import STRONG_MODEL, WEAK_MODEL, build_tiny_outcomes_dataset

POOL = [STRONG_MODEL, WEAK_MODEL]


@pytest.fixture(scope="session")
def mmlu(tmp_path_factory, request):
    cache = getattr(request.config, "cache", None)
    cache_dir = Path(cache.mkdir("routerforge-embeddings")) if cache is not None else None
    return load_prepared(build_tiny_outcomes_dataset(tmp_path_factory.mktemp("mmlu"), embedding_cache_dir=cache_dir))


@pytest.fixture(scope="session")
def train_embeddings(mmlu) -> np.ndarray:
    return mmlu.embeddings("train")[1]


def outcome_rows(mmlu, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(prompt ids, model index in POOL, score) of a split's outcomes."""
    table = mmlu.outcomes[split]
    return (list(table["prompt_id"]), np.array([POOL.index(m) for m in table["model"]]),
            np.array(table["score"], dtype=np.float64))


# -- k-means++ and k-means ------------------------------------------------------------------------------
def test_kmeans_plus_plus_seeds_are_distinct_data_points_and_reproducible(train_embeddings):
    x = train_embeddings
    seeds = kmeans_plus_plus_seeds(x, 16, seed=3)
    assert seeds.shape == (16, x.shape[1]) and seeds.dtype == np.float32
    rows = [int(np.flatnonzero((x == s).all(axis=1))[0]) for s in seeds]  # every seed IS a prompt embedding
    assert len(set(rows)) == 16
    np.testing.assert_array_equal(seeds, kmeans_plus_plus_seeds(x, 16, seed=3))
    assert not np.array_equal(seeds, kmeans_plus_plus_seeds(x, 16, seed=4))


def test_kmeans_plus_plus_spreads_seeds_better_than_uniform_draws(train_embeddings):
    # D² sampling places seeds far apart: over 20 seeds its seed sets cover the data better (lower
    # objective of the seeds themselves) than k uniformly drawn prompts, faiss's default initialisation.
    # Measured: 1.030 vs 1.049 (MiniLM embeddings are unit vectors: all distances are alike).
    x, k = train_embeddings, 16
    rng = np.random.default_rng(0)
    plus = [kmeans_objective(x, kmeans_plus_plus_seeds(x, k, seed=s)) for s in range(20)]
    uniform = [kmeans_objective(x, x[rng.choice(len(x), k, replace=False)]) for _ in range(20)]
    assert np.mean(plus) < np.mean(uniform)


def test_too_few_distinct_prompts_for_k_is_a_data_error(train_embeddings):
    three = np.repeat(train_embeddings[:3], 4, axis=0)  # 12 rows, 3 distinct
    with pytest.raises(DataError, match="only 3 distinct embeddings"):
        kmeans_plus_plus_seeds(three, 4, seed=0)
    with pytest.raises(DataError, match="k=200 clusters needs at least k training prompts; got 175"):
        fit_kmeans(train_embeddings, 200, seed=0)


@pytest.mark.parametrize("k", [16, 32])
def test_kmeans_plus_plus_init_beats_faiss_random_init_on_real_embeddings(train_embeddings, k):
    """The issue's claim, measured: mean objective (mean squared L2 to the nearest centroid) over 5 seeds.

    Measured on these 175 train prompts (25 Lloyd iterations, 10 seeds): k=16 kmeans++ 0.551 vs random
    0.563, k=32 0.453 vs 0.483. On 1,709 MMLU prompts (30 per subject, all 57 subjects) the gap closes
    once Lloyd converges: k=32 0.7530 vs 0.7552, k=64 0.7071 vs 0.7076, k=16 0.7967 vs 0.7960 (std
    ~0.002): k-means++ matters most when clusters hold few prompts.
    """
    plus = [fit_kmeans(train_embeddings, k, seed=s, init="kmeans++").objective for s in range(5)]
    random = [fit_kmeans(train_embeddings, k, seed=s, init="random").objective for s in range(5)]
    assert np.mean(plus) < np.mean(random)


def test_fit_kmeans_lloyd_improves_on_its_seeds_and_reports_sizes(train_embeddings):
    fit = fit_kmeans(train_embeddings, 6, seed=0, n_iterations=20)
    assert fit.centroids.shape == (6, 384) and fit.init == "kmeans++"
    assert fit.objective < fit.initial_objective
    assert fit.objective == pytest.approx(kmeans_objective(train_embeddings, fit.centroids))
    assignment, _ = nearest_centroid(train_embeddings, fit.centroids)
    np.testing.assert_array_equal(fit.cluster_sizes, np.bincount(assignment, minlength=6))
    assert fit.cluster_sizes.sum() == len(train_embeddings) and (fit.cluster_sizes > 0).all()
    # Same seed, same centroids (the 2-process recipe relies on the broadcast, but a rerun must agree too).
    np.testing.assert_array_equal(fit.centroids, fit_kmeans(train_embeddings, 6, seed=0, n_iterations=20).centroids)


def test_own_kmeans_plus_plus_is_on_par_with_faiss_builtin_when_faiss_has_one(train_embeddings):
    if not hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        pytest.skip(f"faiss {faiss.__version__} has no built-in k-means++ (added in recent releases)")
    k, ours, builtin = 16, [], []
    for s in range(5):
        ours.append(fit_kmeans(train_embeddings, k, seed=s).objective)
        km = faiss.Kmeans(384, k, niter=25, seed=s, min_points_per_centroid=1,
                          init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
        km.train(train_embeddings)
        builtin.append(kmeans_objective(train_embeddings, km.centroids))
    assert abs(np.mean(ours) - np.mean(builtin)) < 0.01


def test_nearest_centroid_agrees_with_faiss_and_the_router(mmlu, train_embeddings):
    fit = fit_kmeans(train_embeddings, 6, seed=0)
    _, queries = mmlu.embeddings("test")
    index = faiss.IndexFlatL2(384)
    index.add(fit.centroids)
    _, faiss_ids = index.search(queries, 1)
    ours, _ = nearest_centroid(queries, fit.centroids)
    router = ClusterRouter(torch.from_numpy(fit.centroids), torch.zeros(6, 2), torch.zeros(6, 2))
    np.testing.assert_array_equal(ours, faiss_ids[:, 0])
    np.testing.assert_array_equal(router.assign(torch.from_numpy(queries)).numpy(), ours)


# -- the per-cluster table ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fitted(mmlu, train_embeddings):
    """6 clusters of the train prompts; the validation outcomes with their cluster ids."""
    fit = fit_kmeans(train_embeddings, 6, seed=0)
    emb = mmlu.embedding_index()
    prompt_ids, model_ids, scores = outcome_rows(mmlu, "validation")
    clusters, _ = nearest_centroid(np.stack([emb[p] for p in prompt_ids]), fit.centroids)
    return fit, prompt_ids, model_ids, scores, clusters


def test_table_is_each_models_mean_score_per_cluster(fitted):
    _, _, model_ids, scores, clusters = fitted
    # Real prompt lengths give real, unequal costs: Mixtral's RouterArena price per prompt ~ 4e-5 USD.
    costs = np.where(model_ids == 0, 1e-3, 4e-5) * (1 + clusters / 10)
    quality, cost, support = finalize_tables(table_stats(clusters, model_ids, scores, costs, 6, 2))
    groups: dict[tuple[int, int], list[float]] = defaultdict(list)
    for c, m, s in zip(clusters.tolist(), model_ids.tolist(), scores.tolist(), strict=True):
        groups[(c, m)].append(s)
    for (c, m), values in groups.items():
        assert quality[c, m] == pytest.approx(np.mean(values))
        assert support[c, m] == len(values)
        assert cost[c, m] == pytest.approx((1e-3 if m == 0 else 4e-5) * (1 + c / 10))
    assert support.sum() == len(scores) == 120
    # On RouteLLM's MMLU, GPT-4 is not better everywhere: its high-school-math run mostly failed.
    assert (quality[:, 0] > quality[:, 1]).any() and (quality[:, 1] > quality[:, 0]).any()


def test_empty_cells_take_the_models_overall_mean_and_prior_shrinks(fitted):
    _, _, model_ids, scores, clusters = fitted
    no_cost = np.full(len(scores), np.nan)
    keep = ~((clusters == 2) & (model_ids == 1))  # Mixtral has no outcome in cluster 2
    stats = table_stats(clusters[keep], model_ids[keep], scores[keep], no_cost[keep], 6, 2)
    quality, cost, support = finalize_tables(stats)
    mixtral_mean = scores[keep & (model_ids == 1)].mean()
    assert support[2, 1] == 0 and quality[2, 1] == pytest.approx(mixtral_mean)
    assert (cost == 0).all()  # no cost known anywhere: 0 USD
    # alpha pseudo-outcomes at the model's mean: (sum + alpha * mean) / (n + alpha).
    shrunk, _, _ = finalize_tables(stats, prior_pseudo_count=4.0)
    cell = (clusters == 0) & (model_ids == 0) & keep
    gpt4_mean = scores[keep & (model_ids == 0)].mean()
    assert shrunk[0, 0] == pytest.approx((scores[cell].sum() + 4 * gpt4_mean) / (cell.sum() + 4))
    assert abs(shrunk[0, 0] - gpt4_mean) < abs(quality[0, 0] - gpt4_mean) or quality[0, 0] == gpt4_mean


def test_unknown_costs_are_left_out_of_the_cost_mean(fitted):
    _, _, model_ids, scores, clusters = fitted
    costs = np.where(model_ids == 0, 2e-3, np.nan)
    costs[np.flatnonzero(model_ids == 0)[::2]] = np.nan  # half of GPT-4's costs unknown
    _, cost, _ = finalize_tables(table_stats(clusters, model_ids, scores, costs, 6, 2))
    assert cost[:, 0] == pytest.approx(np.full(6, 2e-3)) and (cost[:, 1] == 0).all()


def test_shard_sums_equal_the_whole(fitted):
    # What the recipe's all-reduce relies on: sums of per-process shards are the statistics of all rows.
    _, _, model_ids, scores, clusters = fitted
    costs = np.linspace(1e-5, 1e-3, len(scores))
    whole = table_stats(clusters, model_ids, scores, costs, 6, 2).stacked()
    shards = [table_stats(clusters[r::2], model_ids[r::2], scores[r::2], costs[r::2], 6, 2).stacked() for r in (0, 1)]
    np.testing.assert_allclose(shards[0] + shards[1], whole, rtol=1e-12)
    assert TableStats.from_stacked(whole).score_count.sum() == len(scores)


def test_bad_outcomes_are_rejected(fitted):
    _, _, model_ids, scores, clusters = fitted
    with pytest.raises(DataError, match=r"scores must be finite and in \[0, 1\]"):
        table_stats(clusters, model_ids, scores * 2, np.zeros(len(scores)), 6, 2)
    with pytest.raises(DataError, match="costs must be >= 0"):
        table_stats(clusters, model_ids, scores, -np.ones(len(scores)), 6, 2)
    with pytest.raises(DataError, match=r"model column\(s\) \[1\] have no outcomes"):
        finalize_tables(table_stats(clusters[model_ids == 0], model_ids[model_ids == 0], scores[model_ids == 0],
                                    np.zeros(int((model_ids == 0).sum())), 6, 2))


# -- the router ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def router(fitted) -> ClusterRouter:
    fit, _, model_ids, scores, clusters = fitted
    costs = np.where(model_ids == 0, 1e-3, 4e-5)
    quality, cost, support = finalize_tables(table_stats(clusters, model_ids, scores, costs, 6, 2))
    return ClusterRouter(torch.from_numpy(fit.centroids), torch.from_numpy(quality), torch.from_numpy(cost),
                         torch.from_numpy(support))


def test_route_maximises_quality_minus_lambda_cost(router, mmlu):
    _, test_emb = mmlu.embeddings("test")
    emb = torch.from_numpy(test_emb)
    clusters = router.assign(emb)
    q, c = router.quality[clusters], router.cost[clusters]
    best_quality = router.route(emb, cost_weight=0.0)
    # Strictly better quality wins; equal quality goes to the cheaper model (Mixtral, index 1).
    expected = torch.where(q[:, 0] > q[:, 1], 0, 1)
    assert torch.equal(best_quality, expected)
    assert set(best_quality.tolist()) == {0, 1}  # both models are best somewhere on real data
    # λ large enough that 1e-3 USD outweighs any quality gap: always the cheaper model.
    assert (router.route(emb, cost_weight=1e4) == 1).all() and (router.route(emb, float("inf")) == 1).all()
    utility = router(emb, cost_weight=300.0)
    torch.testing.assert_close(utility, q - 300.0 * c)
    assert torch.equal(router.route(emb, 300.0), torch.where(utility[:, 0] > utility[:, 1], 0, 1))
    with pytest.raises(ValueError, match="cost_weight must be >= 0"):
        router.route(emb, -1.0)


def test_state_dict_round_trips_through_safetensors(router, mmlu, tmp_path):
    state = router.state_dict()
    assert sorted(state) == sorted(STATE_KEYS)
    assert state["centroids"].shape == (6, 384) and state["quality"].shape == (6, 2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    loaded = ClusterRouter.from_state_dict(load_file(str(tmp_path / "model.safetensors")))
    emb = torch.from_numpy(mmlu.embeddings("test")[1])
    assert torch.equal(loaded.route(emb, 50.0), router.route(emb, 50.0))
    assert loaded.config() == {"num_clusters": 6, "num_models": 2, "prompt_embedding_dim": 384}
    with pytest.raises(ValueError, match="prompt embeddings must be"):
        loaded.assign(emb[:, :100])


def test_sample_per_cluster_takes_at_most_n_from_every_cluster(fitted):
    clusters = fitted[4]
    picked = sample_per_cluster(clusters, 3, seed=0)
    counts = np.bincount(clusters[picked], minlength=6)
    assert (counts == np.minimum(3, np.bincount(clusters, minlength=6))).all()
    assert np.array_equal(picked, np.sort(picked)) and len(set(picked.tolist())) == len(picked)
    assert np.array_equal(picked, sample_per_cluster(clusters, 3, seed=0))
    assert not np.array_equal(picked, sample_per_cluster(clusters, 3, seed=1))


def test_adding_an_unseen_model_appends_its_column_and_changes_nothing_else(fitted):
    # A router that knows only GPT-4; Mixtral is added from 2 validation prompts per cluster.
    fit, prompt_ids, model_ids, scores, clusters = fitted
    gpt4 = model_ids == 0
    q, c, s = finalize_tables(table_stats(clusters[gpt4], np.zeros(int(gpt4.sum()), dtype=np.int64), scores[gpt4],
                                          np.full(int(gpt4.sum()), 1e-3), 6, 1))
    base = ClusterRouter(torch.from_numpy(fit.centroids), torch.from_numpy(q), torch.from_numpy(c),
                         torch.from_numpy(s))
    mixtral_rows = np.flatnonzero(model_ids == 1)
    sample = mixtral_rows[sample_per_cluster(clusters[mixtral_rows], 2, seed=0)]
    stats = table_stats(clusters[sample], np.zeros(len(sample), dtype=np.int64), scores[sample],
                        np.full(len(sample), 4e-5), 6, 1)
    extended = add_models(base, stats)

    assert extended.num_models == 2 and extended.num_clusters == 6
    assert torch.equal(extended.centroids, base.centroids)
    assert torch.equal(extended.quality[:, :1], base.quality) and torch.equal(extended.cost[:, :1], base.cost)
    for cluster in range(6):
        in_cluster = sample[clusters[sample] == cluster]
        assert len(in_cluster) == min(2, int((clusters[mixtral_rows] == cluster).sum()))
        assert extended.quality[cluster, 1].item() == pytest.approx(scores[in_cluster].mean())
        assert extended.support[cluster, 1].item() == len(in_cluster)
    assert (extended.route(torch.from_numpy(fit.centroids), cost_weight=1e4) == 1).all()
