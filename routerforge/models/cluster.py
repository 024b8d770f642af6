"""UniRoute's cluster-based router: k-means clusters of prompt embeddings + a per-cluster quality/cost table.

Jitkrittum et al., "Universal Model Routing for Efficient LLM Inference" (arXiv 2502.08773), the
cluster-based instantiation of UniRoute:

1. Cluster the (unlabelled) training prompts' embeddings with k-means into K clusters.
2. Represent every LLM h by a K-vector Ψ(h): its mean error (here: mean score, quality = 1 − error for
   0/1 scores) on the prompts of each cluster, measured on a SMALL labelled validation set.
3. Route a prompt x to  argmax_h  quality_h[c(x)] − λ · cost_h[c(x)],  c(x) = nearest centroid.

Because a model is only a column of the table, a model never seen when the clusters were fitted is
added by scoring it on a small per-cluster sample of prompts and appending its column (`add_models`);
the centroids and the other models' columns do not change. That is the point of UniRoute.

k-means is faiss's (`faiss.Kmeans`), seeded with k-means++ (Arthur & Vassilvitskii 2007) computed here
in numpy and passed as `init_centroids`: faiss's default initialisation samples k points uniformly,
which gives worse clusters, and faiss only gained a k-means++ option in recent releases (the project
supports faiss >= 1.9, where `init_method` does not exist). The numpy seeds are also identical on every
platform and process for one seed.

The table is built from sufficient statistics (`TableStats`: sums and counts per cluster x model), so
processes can each count a shard of the outcomes and sum them (an all-reduce) before `finalize_tables`.

Units: quality is the mean score in [0, 1]; cost is USD per prompt; λ (`cost_weight`) is quality per
USD (λ = 100 means one cent must buy at least 0.01 of expected score).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from routerforge.errors import CheckpointError, DataError
from routerforge.io.safetensors_file import load_export_weights
from routerforge.models.family_scorer import (
    WEIGHTS_FILE,
    FamilyScorer,
    build_prompt_embedder,
    check_pool_width,
    index_of,
)

KMEANS_INITS = ("kmeans++", "random")
STATE_KEYS = ("centroids", "quality", "cost", "support")


# -- k-means ------------------------------------------------------------------------------------------
def embedding_matrix(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """x as a C-contiguous float32 [n, dim] matrix; a clear error for another shape or a NaN/inf value."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty [n, dim] matrix, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contain NaN or inf values (row {int(np.argwhere(~np.isfinite(arr))[0, 0])}); "
                        f"re-embed the data.")
    return arr


def kmeans_plus_plus_seeds(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k initial centroids by k-means++ D² sampling (Arthur & Vassilvitskii 2007), float32 [k, dim].

    The first seed is a uniformly random point; each next one is point i with probability
    D(i)² / Σ D², D(i) the distance from point i to its nearest seed so far. Deterministic for a seed.
    """
    x = embedding_matrix(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise DataError(f"k-means++ needs 1 <= k <= number of points; got k={k} for {n} points.")
    rng = np.random.default_rng(seed)
    x64 = x.astype(np.float64)
    chosen = [int(rng.integers(n))]
    nearest_sq = ((x64 - x64[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = float(nearest_sq.sum())
        if total <= 0.0:
            raise DataError(f"only {len(chosen)} distinct embeddings among {n} points, fewer than k={k} clusters; "
                            f"lower clusters.num_clusters.")
        nxt = int(rng.choice(n, p=nearest_sq / total))
        chosen.append(nxt)
        nearest_sq = np.minimum(nearest_sq, ((x64 - x64[nxt]) ** 2).sum(axis=1))
    return x[chosen].copy()


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centroid [n] int64, squared L2 distance to it [n] float64), in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    c64 = np.asarray(centroids, dtype=np.float64)
    sq = (x64 ** 2).sum(1)[:, None] - 2.0 * x64 @ c64.T + (c64 ** 2).sum(1)[None, :]
    idx = sq.argmin(axis=1)
    return idx.astype(np.int64), np.maximum(sq[np.arange(len(x64)), idx], 0.0)


def kmeans_objective(x: np.ndarray, centroids: np.ndarray) -> float:
    """Mean squared L2 distance of the points to their nearest centroid (k-means inertia / n)."""
    return float(nearest_centroid(x, centroids)[1].mean())


@dataclass(frozen=True)
class KMeansFit:
    """Fitted centroids and how good they are (objective = mean squared distance to the nearest centroid)."""

    centroids: np.ndarray  # float32 [k, dim]
    init: str
    objective: float
    initial_objective: float  # of the seeds, before any Lloyd iteration
    cluster_sizes: np.ndarray  # int64 [k]: training points per cluster


def fit_kmeans(x: np.ndarray, k: int, *, seed: int, n_iterations: int = 25, init: str = "kmeans++",
               max_points_per_centroid: int = 256) -> KMeansFit:
    """faiss k-means (Lloyd) with k-means++ seeds (default) or faiss's own uniform random init.

    faiss trains on at most k * max_points_per_centroid points (a seeded random subsample; faiss's
    default 256); the centroids are then evaluated on all of `x`.
    """
    import faiss  # imported here: only fitting needs it, routing does not

    x = embedding_matrix(x)
    n, dim = x.shape
    if init not in KMEANS_INITS:
        raise ValueError(f"init must be one of {', '.join(KMEANS_INITS)}, got '{init}'")
    if not 1 <= k <= n:
        raise DataError(f"k-means with k={k} clusters needs at least k training prompts; got {n}. "
                        f"Lower clusters.num_clusters or add data.")
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    # min_points_per_centroid=1: small data is legitimate here (faiss otherwise only prints a warning).
    kmeans = faiss.Kmeans(dim, k, niter=n_iterations, seed=seed, min_points_per_centroid=1,
                          max_points_per_centroid=max_points_per_centroid, verbose=False)
    if init == "kmeans++":
        seeds = kmeans_plus_plus_seeds(x, k, seed)
        kmeans.train(x, init_centroids=seeds)
        initial = kmeans_objective(x, seeds)
    else:
        kmeans.train(x)
        initial = float("nan")  # faiss does not expose its random seeds
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32).reshape(k, dim)
    assignment, sq = nearest_centroid(x, centroids)
    return KMeansFit(centroids=centroids, init=init, objective=float(sq.mean()), initial_objective=initial,
                     cluster_sizes=np.bincount(assignment, minlength=k).astype(np.int64))


# -- per-cluster table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableStats:
    """Sufficient statistics of the table, float64 [k, n_models] each; summable across processes.

    score_count counts outcomes; cost_count counts the outcomes whose cost is known (not NaN).
    """

    score_sum: np.ndarray
    score_count: np.ndarray
    cost_sum: np.ndarray
    cost_count: np.ndarray

    def stacked(self) -> np.ndarray:
        """[4, k, m] float64 (for one all-reduce)."""
        return np.stack([self.score_sum, self.score_count, self.cost_sum, self.cost_count])

    @classmethod
    def from_stacked(cls, arr: np.ndarray) -> TableStats:
        arr = np.asarray(arr, dtype=np.float64)
        return cls(arr[0].copy(), arr[1].copy(), arr[2].copy(), arr[3].copy())


def table_stats(cluster_ids: np.ndarray, model_ids: np.ndarray, scores: np.ndarray, costs_usd: np.ndarray,
                num_clusters: int, num_models: int) -> TableStats:
    """Sum and count scores and known costs per (cluster, model) over outcome rows (NaN cost = unknown)."""
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    model_ids = np.asarray(model_ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs_usd, dtype=np.float64)
    if not (cluster_ids.shape == model_ids.shape == scores.shape == costs.shape) or cluster_ids.ndim != 1:
        raise ValueError("cluster_ids, model_ids, scores and costs_usd must be 1-D arrays of equal length")
    if len(cluster_ids) and (cluster_ids.min() < 0 or cluster_ids.max() >= num_clusters):
        raise ValueError(f"cluster ids must be in [0, {num_clusters})")
    if len(model_ids) and (model_ids.min() < 0 or model_ids.max() >= num_models):
        raise ValueError(f"model ids must be in [0, {num_models})")
    if np.any(~np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
        raise DataError("outcome scores must be finite and in [0, 1].")
    if np.any(costs < 0):
        raise DataError("outcome costs must be >= 0 USD.")
    shape = (num_clusters, num_models)
    score_sum, score_count = np.zeros(shape), np.zeros(shape)
    cost_sum, cost_count = np.zeros(shape), np.zeros(shape)
    np.add.at(score_sum, (cluster_ids, model_ids), scores)
    np.add.at(score_count, (cluster_ids, model_ids), 1.0)
    known = ~np.isnan(costs)
    np.add.at(cost_sum, (cluster_ids[known], model_ids[known]), costs[known])
    np.add.at(cost_count, (cluster_ids[known], model_ids[known]), 1.0)
    return TableStats(score_sum, score_count, cost_sum, cost_count)


def finalize_tables(stats: TableStats, prior_pseudo_count: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quality, cost, support), float32 [k, m] each, from summed statistics.

    quality[c, h] = (Σ scores + α · q̄_h) / (n + α): the model's mean score in the cluster, shrunk toward
    its mean over all clusters q̄_h by α = prior_pseudo_count pseudo-outcomes (α = 0 is UniRoute's
    plain mean). A cluster in which a model has no outcome gets q̄_h. cost[c, h] is the mean known
    cost (USD) in the cluster, else the model's mean known cost, else 0. support is n (outcomes).
    A model with no outcome at all is an error (it cannot be routed to).
    """
    if prior_pseudo_count < 0:
        raise ValueError(f"prior_pseudo_count must be >= 0, got {prior_pseudo_count}")
    n = stats.score_count
    model_n = n.sum(axis=0)
    if np.any(model_n == 0):
        missing = [int(j) for j in np.flatnonzero(model_n == 0)]
        raise DataError(f"model column(s) {missing} have no outcomes to build their table from.")
    model_mean = stats.score_sum.sum(axis=0) / model_n
    alpha = float(prior_pseudo_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        quality = (stats.score_sum + alpha * model_mean) / (n + alpha)
    quality = np.where(n + alpha > 0, quality, model_mean[None, :])
    cost_n = stats.cost_count
    model_cost_n = cost_n.sum(axis=0)
    model_cost = np.divide(stats.cost_sum.sum(axis=0), model_cost_n, out=np.zeros_like(model_cost_n),
                           where=model_cost_n > 0)
    cost = np.divide(stats.cost_sum, cost_n, out=np.broadcast_to(model_cost, cost_n.shape).copy(), where=cost_n > 0)
    return quality.astype(np.float32), cost.astype(np.float32), n.astype(np.float32)


def sample_per_cluster(cluster_ids: np.ndarray, per_cluster: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `per_cluster` items of every cluster, drawn without replacement (seeded).

    UniRoute's small labelled set for a new model: a few prompts from each cluster, so every entry of
    its Ψ vector is estimated.
    """
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be >= 1, got {per_cluster}")
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(cluster_ids):
        members = np.flatnonzero(cluster_ids == c)
        picked.append(members if len(members) <= per_cluster else rng.choice(members, per_cluster, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


# -- the router ---------------------------------------------------------------------------------------
class ClusterRouter(nn.Module):
    """Nearest-centroid lookup into a per-cluster quality/cost table; no trainable parameters.

    Buffers (what model.safetensors holds): centroids [k, dim]; quality, cost (USD per prompt) and
    support (validation outcomes behind each cell) [k, n_models], columns in model-pool order.
    """

    def __init__(self, centroids: torch.Tensor, quality: torch.Tensor, cost: torch.Tensor,
                 support: torch.Tensor | None = None) -> None:
        super().__init__()
        centroids = torch.as_tensor(centroids, dtype=torch.float32)
        quality = torch.as_tensor(quality, dtype=torch.float32)
        cost = torch.as_tensor(cost, dtype=torch.float32)
        support = torch.zeros_like(quality) if support is None else torch.as_tensor(support, dtype=torch.float32)
        if centroids.ndim != 2 or centroids.shape[0] < 1:
            raise ValueError(f"centroids must be [k >= 1, dim], got {tuple(centroids.shape)}")
        k = centroids.shape[0]
        if quality.ndim != 2 or quality.shape[0] != k or quality.shape[1] < 1:
            raise ValueError(f"quality must be [k={k}, n_models >= 1], got {tuple(quality.shape)}")
        if cost.shape != quality.shape or support.shape != quality.shape:
            raise ValueError(f"cost {tuple(cost.shape)} and support {tuple(support.shape)} must match quality "
                             f"{tuple(quality.shape)}")
        self.register_buffer("centroids", centroids.contiguous())
        self.register_buffer("quality", quality.contiguous())
        self.register_buffer("cost", cost.contiguous())
        self.register_buffer("support", support.contiguous())

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def num_models(self) -> int:
        return int(self.quality.shape[1])

    @property
    def prompt_embedding_dim(self) -> int:
        return int(self.centroids.shape[1])

    def config(self) -> dict:
        """Shapes (the export's config.json adds the model pool, λ and the encoder)."""
        return {"num_clusters": self.num_clusters, "num_models": self.num_models,
                "prompt_embedding_dim": self.prompt_embedding_dim}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ClusterRouter:
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"cluster router state lacks {', '.join(missing)}")
        return cls(state["centroids"], state["quality"], state["cost"], state["support"])

    @torch.no_grad()
    def assign(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (squared L2, computed in float64) of each prompt: [n, dim] -> [n] int64."""
        if prompt_embeddings.ndim != 2 or prompt_embeddings.shape[1] != self.prompt_embedding_dim:
            raise ValueError(f"prompt embeddings must be [n, {self.prompt_embedding_dim}], "
                             f"got {tuple(prompt_embeddings.shape)}")
        x = prompt_embeddings.to(device=self.centroids.device, dtype=torch.float64)
        c = self.centroids.to(torch.float64)
        sq = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
        return sq.argmin(dim=1)

    @torch.no_grad()
    def predicted_quality(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Per-prompt predicted quality of every model: [n, n_models]."""
        return self.quality[self.assign(prompt_embeddings)]

    @torch.no_grad()
    def predicted_cost(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Per-prompt predicted cost (USD) of every model: [n, n_models]."""
        return self.cost[self.assign(prompt_embeddings)]

    @torch.no_grad()
    def forward(self, prompt_embeddings: torch.Tensor, cost_weight: float = 0.0) -> torch.Tensor:
        """Utility quality − λ·cost of every model for every prompt: [n, n_models]."""
        clusters = self.assign(prompt_embeddings)
        return self.quality[clusters] - float(cost_weight) * self.cost[clusters]

    @torch.no_grad()
    def route(self, prompt_embeddings: torch.Tensor, cost_weight: float = 0.0) -> torch.Tensor:
        """Index of the chosen model per prompt: argmax quality − λ·cost; [n] int64.

        Ties go to the cheaper model, then to the lower index (as routerforge.eval.multi), so equal
        predicted utility never buys a more expensive answer. λ = inf picks the cheapest model.
        """
        if cost_weight < 0:
            raise ValueError(f"cost_weight must be >= 0, got {cost_weight}")
        clusters = self.assign(prompt_embeddings)
        quality, cost = self.quality[clusters], self.cost[clusters]
        if np.isinf(cost_weight):
            tied = cost == cost.min(dim=1, keepdim=True).values
            return torch.where(tied, quality, torch.full_like(quality, -torch.inf)).argmax(dim=1)
        utility = quality - float(cost_weight) * cost
        tied = utility == utility.max(dim=1, keepdim=True).values
        return torch.where(tied, cost, torch.full_like(cost, torch.inf)).argmin(dim=1)


def add_models(router: ClusterRouter, stats: TableStats, prior_pseudo_count: float = 0.0) -> ClusterRouter:
    """A new router with the columns built from `stats` ([k, n_new] sums) appended; nothing else changes.

    UniRoute's unseen-model step: the centroids and the existing columns are copied bit for bit; only
    the new models' quality/cost/support columns are computed (from a small per-cluster sample).
    """
    if stats.score_sum.shape[0] != router.num_clusters:
        raise ValueError(f"stats have {stats.score_sum.shape[0]} clusters, the router {router.num_clusters}")
    quality, cost, support = finalize_tables(stats, prior_pseudo_count)
    return ClusterRouter(
        router.centroids.detach().clone(),
        torch.cat([router.quality, torch.from_numpy(quality).to(router.quality.device)], dim=1),
        torch.cat([router.cost, torch.from_numpy(cost).to(router.cost.device)], dim=1),
        torch.cat([router.support, torch.from_numpy(support).to(router.support.device)], dim=1),
    )


# ---------------------------------------------------------------------------------------------------- loading
def load_family_scorer(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                       embedding_cache_dir: str | None = None) -> FamilyScorer:
    """UniRoute: quality / cost = the nearest cluster's mean score / mean cost (USD per prompt) per model;
    pair score = quality[strong] − quality[weak], the expected score gained by calling the strong model."""
    models = tuple(config["model_pool"])
    try:
        router = ClusterRouter.from_state_dict(load_export_weights(directory))
    except ValueError as err:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: not a cluster router ({err}); re-export.") from None
    check_pool_width(directory, router.num_models, "a quality/cost table", models)
    router.to(device)
    embed, encoder_id = build_prompt_embedder(manifest["encoder"], router.prompt_embedding_dim,
                                              batch_size=batch_size, device=device,
                                              embedding_cache_dir=embedding_cache_dir)
    index = index_of(models)

    def head(embeddings: np.ndarray) -> dict[str, np.ndarray]:
        clusters = router.assign(torch.from_numpy(embeddings).to(device))
        return {"quality": router.quality[clusters].double().cpu().numpy(),
                "cost": router.cost[clusters].double().cpu().numpy(),
                "cluster": clusters.cpu().numpy()}

    def pair_rule(strong: str, weak: str) -> str | None:
        if strong in index and weak in index:
            return (f"quality[{strong}] - quality[{weak}] of the prompt's nearest cluster (UniRoute): expected score "
                    f"gained by the strong model")
        return None

    def pair_score(outputs: dict[str, np.ndarray], strong: str, weak: str) -> np.ndarray:
        quality = outputs["quality"]
        return quality[:, index[strong]] - quality[:, index[weak]]

    return FamilyScorer("cluster", models, embed, head, pair_rule, pair_score, models, has_quality=True,
                        has_cost=True, default_cost_weight=float(config.get("cost_weight", 0.0)),
                        encoder_id=encoder_id)
