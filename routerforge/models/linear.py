"""Linear router: one logistic-regression head per model on the frozen prompt embedding.

    P(model m answers prompt q well) = σ(w_m · e(q) + b_m)

Each head is fitted on that model's scores over the training prompts (a score s in [0, 1] is a soft target:
the row counts as a success with weight s and a failure with weight 1 − s, i.e. cross-entropy against s),
with scikit-learn's LogisticRegression (L2, lbfgs). The pair score is P(strong) − P(weak), the expected
score gained by calling the strong model. One router serves every pair of the pool, and a model is added
by fitting one more head; the other heads do not change.

Why this family: on small outcome tables a global linear model over a good sentence embedding generalises
better than local averaging (kNN) or a model trained on pairs only, and logistic regression on frozen
embeddings is the standard strong baseline of the routing literature (e.g. the "LR" routers of Hu et al.
2024, RouterBench). The L2 strength is chosen by cross-validation on the routing metric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routerforge.errors import CheckpointError, DataError
from routerforge.io.safetensors_file import load_export_weights
from routerforge.models.family_scorer import (
    FamilyScorer,
    build_prompt_embedder,
    check_pool_width,
    expected_gain_scorer,
)

STATE_KEYS = ("weight", "bias")


def fit_head(embeddings: np.ndarray, scores: np.ndarray, inverse_l2: float, max_iter: int = 1000
             ) -> tuple[np.ndarray, float]:
    """(w [dim], b) of one model's logistic head on its scored prompts (NaN scores are skipped)."""
    from sklearn.linear_model import LogisticRegression

    scored = ~np.isnan(scores)
    x, y = embeddings[scored], np.clip(scores[scored].astype(np.float64), 0.0, 1.0)
    if len(y) == 0:
        raise DataError("a model has no scored prompt to fit its head on")
    if y.min() == y.max():  # every answer right (or wrong): a constant head, the logit of the smoothed rate
        rate = (y.sum() + 0.5) / (len(y) + 1.0)
        return np.zeros(x.shape[1]), float(np.log(rate / (1.0 - rate)))
    features = np.concatenate([x, x])
    targets = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weights = np.concatenate([y, 1.0 - y])
    keep = weights > 0
    model = LogisticRegression(C=inverse_l2, max_iter=max_iter)
    model.fit(features[keep], targets[keep], sample_weight=weights[keep])
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


class LinearRouter:
    """Per-model logistic heads over prompt embeddings: weight [models, dim], bias [models]."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if self.weight.ndim != 2 or self.weight.shape[0] != self.bias.shape[0]:
            raise ValueError(f"weight {self.weight.shape} and bias {self.bias.shape} do not fit")

    @classmethod
    def fit(cls, embeddings: np.ndarray, scores: np.ndarray, inverse_l2: float) -> LinearRouter:
        heads = [fit_head(embeddings, scores[:, m], inverse_l2) for m in range(scores.shape[1])]
        return cls(np.stack([w for w, _ in heads]), np.array([b for _, b in heads]))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    @classmethod
    def from_state_dict(cls, state: dict) -> LinearRouter:
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"missing tensors {missing}")
        as_np = {key: np.asarray(state[key].numpy() if hasattr(state[key], "numpy") else state[key])
                 for key in STATE_KEYS}
        return cls(as_np["weight"], as_np["bias"])

    @property
    def num_models(self) -> int:
        return int(self.weight.shape[0])

    @property
    def prompt_embedding_dim(self) -> int:
        return int(self.weight.shape[1])

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """P(each model answers well), float64 [prompts, models]."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.prompt_embedding_dim:
            raise DataError(f"prompt embeddings have shape {x.shape}, the router expects width "
                            f"{self.prompt_embedding_dim}: another encoder.")
        logits = x @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logits))


# ---------------------------------------------------------------------------------------------------- loading
def load_family_scorer(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                       embedding_cache_dir: str | None = None) -> FamilyScorer:
    """A linear router (training/train_linear.py): quality = P(each model answers well) from its logistic head;
    pair score = P(strong) - P(weak)."""

    models = tuple(config["model_pool"])
    try:
        router = LinearRouter.from_state_dict(load_export_weights(directory))
    except ValueError as err:
        raise CheckpointError(f"{directory}: not a linear router ({err}); re-export.") from None
    check_pool_width(directory, router.num_models, "logistic heads", models)
    embed, encoder_id = build_prompt_embedder(manifest["encoder"], router.prompt_embedding_dim,
                                              batch_size=batch_size, device=device,
                                              embedding_cache_dir=embedding_cache_dir)
    return expected_gain_scorer("linear", models, embed, router.predict,
                                "P(answers well) from a logistic head on the prompt embedding", encoder_id)
