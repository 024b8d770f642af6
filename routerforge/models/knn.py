"""kNN router: each model's expected score on a prompt = a shrunk, similarity-weighted mean of its scores on
the k most similar training prompts.

The router keeps the training prompts' embeddings and a prompt x model score table (NaN where a model has
no outcome on a prompt). For a new prompt q with neighbours N_k(q) (cosine similarity, exact search):

    quality[q, m] = (Σ_{j ∈ N_k(q), m scored j} w_j · y[j, m] + α · μ_m) / (Σ_{j ∈ N_k(q), m scored j} w_j + α)

with w_j = exp(sim(q, j) / τ) (τ = `temperature`; τ = inf gives uniform weights) and μ_m the model's mean
training score: a model with few scored neighbours falls back towards its overall mean instead of
trusting two or three outcomes (α = `prior_strength`, in neighbour-weight units).

Why this family: nearest-neighbour lookup over frozen embeddings is among the strongest simple routers on
real benchmark outcomes (Hu et al. 2024, "RouterBench", and the kNN baselines of Shnitzer et al. 2023,
"Large Language Model Routing with Benchmark Datasets"), it costs one matrix product per batch, and it
learns from EVERY model's outcomes at once (one router serves every pair of the pool). A model is added
without retraining by appending its column of scores (`add_model_column`): the other columns and the
index stay bit for bit.

Search: exact inner product (the embeddings are L2-normalised, so inner product = cosine) with faiss's
IndexFlatIP, which batches the matrix product and keeps only the top-k per query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routerforge.errors import CheckpointError, DataError
from routerforge.io.safetensors_file import load_export_weights
from routerforge.models.cluster import embedding_matrix
from routerforge.models.family_scorer import (
    FamilyScorer,
    build_prompt_embedder,
    check_pool_width,
    expected_gain_scorer,
)

STATE_KEYS = ("embeddings", "scores", "prior_mean")
WEIGHTINGS = ("uniform", "softmax")


@dataclass(frozen=True)
class KNNSettings:
    """How neighbours are turned into predictions (also the exported router's config)."""

    k: int
    prior_strength: float  # α, in units of neighbour weight (uniform weighting: neighbours)
    weighting: str  # "uniform" or "softmax" (w = exp(sim / temperature), normalised per query)
    temperature: float  # cosine units; only with weighting="softmax"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.prior_strength < 0 or not math.isfinite(self.prior_strength):
            raise ValueError(f"prior_strength must be a finite number >= 0, got {self.prior_strength}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class KNNRouter:
    """The index (training prompt embeddings), the score table and the per-model prior means."""

    def __init__(self, embeddings: np.ndarray, scores: np.ndarray, prior_mean: np.ndarray | None = None):
        self.embeddings = embedding_matrix(embeddings, "embeddings")
        scores = np.asarray(scores, dtype=np.float32)
        if scores.ndim != 2 or scores.shape[0] != self.embeddings.shape[0] or scores.shape[1] == 0:
            raise DataError(f"scores must be [{self.embeddings.shape[0]}, models], got shape {scores.shape}.")
        observed = ~np.isnan(scores)
        if not observed.any(axis=0).all():
            empty = np.flatnonzero(~observed.any(axis=0)).tolist()
            raise DataError(f"model column(s) {empty} have no scored training prompt; drop them from the pool.")
        self.scores = scores
        if prior_mean is None:
            prior_mean = np.nansum(scores, axis=0) / observed.sum(axis=0)
        self.prior_mean = np.asarray(prior_mean, dtype=np.float32)
        self._index = None

    # -- persistence (safetensors-friendly: three float tensors) ---------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        return {"embeddings": self.embeddings, "scores": self.scores, "prior_mean": self.prior_mean}

    @classmethod
    def from_state_dict(cls, state: dict) -> KNNRouter:
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"missing tensors {missing}")
        as_np = {key: np.asarray(state[key].numpy() if hasattr(state[key], "numpy") else state[key])
                 for key in STATE_KEYS}
        return cls(as_np["embeddings"], as_np["scores"], as_np["prior_mean"])

    @property
    def num_models(self) -> int:
        return int(self.scores.shape[1])

    @property
    def prompt_embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    # -- search and prediction --------------------------------------------------------------------------
    def neighbours(self, queries: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(similarities [b, k], indices [b, k]) of each query's k nearest training prompts, best first.

        `exclude_self`: the queries ARE the training prompts (leave-one-out): each query's own row is skipped.
        """
        import faiss

        queries = embedding_matrix(queries, "query embeddings")
        if queries.shape[1] != self.prompt_embedding_dim:
            raise DataError(f"query embeddings have width {queries.shape[1]}, the router's index "
                            f"{self.prompt_embedding_dim}: another encoder.")
        if self._index is None:
            self._index = faiss.IndexFlatIP(self.prompt_embedding_dim)
            self._index.add(self.embeddings)
        want = min(k + int(exclude_self), self.embeddings.shape[0])
        sims, idx = self._index.search(queries, want)
        if exclude_self:
            own = idx == np.arange(len(queries))[:, None]
            # drop the own row where found, else the last (k+1-th) neighbour
            drop = np.where(own.any(axis=1), own.argmax(axis=1), want - 1)
            keep = np.ones_like(idx, dtype=bool)
            keep[np.arange(len(idx)), drop] = False
            sims = sims[keep].reshape(len(idx), want - 1)
            idx = idx[keep].reshape(len(idx), want - 1)
        return sims, idx

    def predict_from_neighbours(self, sims: np.ndarray, idx: np.ndarray, settings: KNNSettings) -> np.ndarray:
        """Expected score per (query, model), float64 [b, models], from precomputed neighbours (first k used)."""
        sims, idx = sims[:, :settings.k].astype(np.float64), idx[:, :settings.k]
        if settings.weighting == "softmax":
            logits = sims / settings.temperature
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            weights *= sims.shape[1]  # neighbour units: uniform weights sum to k, like "uniform"
        else:
            weights = np.ones_like(sims)
        table = self.scores[idx].astype(np.float64)  # [b, k, models]
        observed = ~np.isnan(table)
        weighted = np.where(observed, table, 0.0) * weights[:, :, None]
        mass = (observed * weights[:, :, None]).sum(axis=1)
        alpha = settings.prior_strength
        prior = self.prior_mean.astype(np.float64)[None, :]
        denominator = mass + alpha
        return np.where(denominator > 0, (weighted.sum(axis=1) + alpha * prior) / np.where(denominator > 0,
                                                                                            denominator, 1.0), prior)

    def predict(self, queries: np.ndarray, settings: KNNSettings) -> np.ndarray:
        sims, idx = self.neighbours(queries, settings.k)
        return self.predict_from_neighbours(sims, idx, settings)

    def add_model_column(self, scores: np.ndarray) -> KNNRouter:
        """A new router with one more model: its scores on the training prompts (NaN = not scored)."""
        column = np.asarray(scores, dtype=np.float32).reshape(-1, 1)
        if column.shape[0] != self.scores.shape[0]:
            raise DataError(f"the new model's score column has {column.shape[0]} rows, the index "
                            f"{self.scores.shape[0]} prompts.")
        return KNNRouter(self.embeddings, np.concatenate([self.scores, column], axis=1))


# ---------------------------------------------------------------------------------------------------- loading
def load_family_scorer(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                       embedding_cache_dir: str | None = None) -> FamilyScorer:
    """A kNN router (training/train_knn.py): quality = each model's neighbour-mean score; pair score =
    quality[strong] - quality[weak], the expected score gained by calling the strong model."""

    models = tuple(config["model_pool"])
    try:
        router = KNNRouter.from_state_dict(load_export_weights(directory))
        settings = KNNSettings(int(config["k"]), float(config["prior_strength"]), str(config["weighting"]),
                               float(config["temperature"]))
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{directory}: not a kNN router ({err}); re-export.") from None
    check_pool_width(directory, router.num_models, "a score table", models)
    embed, encoder_id = build_prompt_embedder(manifest["encoder"], router.prompt_embedding_dim,
                                              batch_size=batch_size, device=device,
                                              embedding_cache_dir=embedding_cache_dir)
    return expected_gain_scorer(
        "knn", models, embed, lambda embeddings: router.predict(np.asarray(embeddings, dtype=np.float32), settings),
        f"mean score of the {settings.k} nearest training prompts (kNN)", encoder_id)
