"""RouteLLM's matrix-factorization (MF) router.

Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data" (2024), section 4.1; reference code
lm-sys/RouteLLM `routellm/routers/matrix_factorization/{model,train_matrix_factorization}.py`.

A bilinear score of model m on prompt q:

    δ(m, q) = w · ( v_m/‖v_m‖ ⊙ W q )

    v_m  learned model embedding (row m of `P`), L2-normalised
    W    projection of the prompt embedding q to the model-embedding dim (`text_proj`, no bias)
    w    scoring vector (`classifier`, no bias: a bias would cancel in δ(a) - δ(b))

P(model a beats model b on q) = σ(δ(a, q) − δ(b, q)), trained with binary cross-entropy on human
preference pairs. Parameter names (P, text_proj, classifier) follow RouteLLM's so its published
weights map onto this module (their Sequential wrappers add a `.0`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from routerforge.errors import CheckpointError
from routerforge.io.safetensors_file import load_export_weights
from routerforge.models.family_scorer import (
    WEIGHTS_FILE,
    FamilyScorer,
    build_prompt_embedder,
    index_of,
    sigmoid,
)


class MFModel(nn.Module):
    """δ(m, q) for every model in a pool of `num_models`, from a precomputed prompt embedding q."""

    def __init__(self, num_models: int, prompt_embedding_dim: int, model_embedding_dim: int = 128,
                 use_projection: bool = True) -> None:
        super().__init__()
        if not use_projection and prompt_embedding_dim != model_embedding_dim:
            raise ValueError(f"without a projection the prompt embedding dim ({prompt_embedding_dim}) must equal "
                             f"the model embedding dim ({model_embedding_dim})")
        self.num_models = num_models
        self.prompt_embedding_dim = prompt_embedding_dim
        self.model_embedding_dim = model_embedding_dim
        self.use_projection = use_projection
        self.P = nn.Embedding(num_models, model_embedding_dim)  # v_m
        self.text_proj = nn.Linear(prompt_embedding_dim, model_embedding_dim, bias=False) if use_projection \
            else nn.Identity()  # W
        self.classifier = nn.Linear(model_embedding_dim, 1, bias=False)  # w

    def config(self) -> dict:
        """Constructor arguments (the export's config.json adds the model pool)."""
        return {"num_models": self.num_models, "prompt_embedding_dim": self.prompt_embedding_dim,
                "model_embedding_dim": self.model_embedding_dim, "use_projection": self.use_projection}

    @classmethod
    def from_config(cls, config: dict) -> MFModel:
        """A freshly initialised model of the shape `config` (an export's config.json, or `config()`) describes;
        other keys (model_pool, router_type) are ignored."""
        return cls(int(config["num_models"]), int(config["prompt_embedding_dim"]),
                   int(config["model_embedding_dim"]), bool(config["use_projection"]))

    def project_prompts(self, prompt_embeddings: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
        """W (q + ε), ε ~ N(0, noise_std²): RouteLLM adds this noise in training "to stabilize" it."""
        if noise_std > 0:
            prompt_embeddings = prompt_embeddings + torch.randn_like(prompt_embeddings) * noise_std
        return self.text_proj(prompt_embeddings)

    def scores(self, model_ids: torch.Tensor, projected_prompts: torch.Tensor) -> torch.Tensor:
        """δ(m_i, q_i) for paired rows: model_ids [B], projected_prompts [B, dim] -> [B]."""
        model_vectors = F.normalize(self.P(model_ids), p=2, dim=-1)
        return self.classifier(model_vectors * projected_prompts).squeeze(-1)

    def forward(self, model_a: torch.Tensor, model_b: torch.Tensor, prompt_embeddings: torch.Tensor,
                noise_std: float = 0.0) -> torch.Tensor:
        """Logit of P(model_a beats model_b): δ(a, q) − δ(b, q), shape [B]."""
        projected = self.project_prompts(prompt_embeddings, noise_std)
        return self.scores(model_a, projected) - self.scores(model_b, projected)

    @torch.no_grad()
    def score_all_models(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """δ(m, q) for every model of the pool: [B, prompt_dim] -> [B, num_models]."""
        projected = self.text_proj(prompt_embeddings)  # [B, d]
        model_vectors = F.normalize(self.P.weight, p=2, dim=-1)  # [M, d]
        return (projected.unsqueeze(1) * model_vectors.unsqueeze(0)) @ self.classifier.weight.squeeze(0)

    @torch.no_grad()
    def win_probability(self, model_a: torch.Tensor, model_b: torch.Tensor,
                        prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """P(model_a beats model_b | q) = σ(δ(a, q) − δ(b, q))."""
        return torch.sigmoid(self(model_a, model_b, prompt_embeddings))


def extend_model_pool(model: MFModel, num_new_models: int) -> MFModel:
    """A copy of `model` whose pool has `num_new_models` more models appended (new rows of P are N(0, 1)).

    Existing models keep their rows and indices; W and w are copied unchanged.
    """
    if num_new_models < 1:
        raise ValueError(f"num_new_models must be >= 1, got {num_new_models}")
    extended = MFModel(model.num_models + num_new_models, model.prompt_embedding_dim, model.model_embedding_dim,
                       model.use_projection).to(model.P.weight.device)
    with torch.no_grad():
        extended.P.weight[: model.num_models].copy_(model.P.weight)
        extended.text_proj.load_state_dict(model.text_proj.state_dict())
        extended.classifier.load_state_dict(model.classifier.state_dict())
    return extended


def freeze_all_but_new_models(model: MFModel, num_frozen_models: int) -> torch.Tensor:
    """Make only the embeddings of models >= `num_frozen_models` trainable; return the row mask [M, 1].

    W and w stop requiring gradients; a gradient hook zeroes P's rows of the frozen models. With
    zero gradients Adam leaves those rows exactly unchanged, as long as the optimizer adds no weight
    decay to them: recipes that freeze must apply weight decay to the new rows only (see
    `new_model_l2_penalty`) and build the optimizer with weight_decay=0.
    """
    model.text_proj.requires_grad_(False)
    model.classifier.requires_grad_(False)
    mask = torch.zeros(model.num_models, 1, device=model.P.weight.device)
    mask[num_frozen_models:] = 1.0
    model.P.weight.register_hook(lambda grad: grad * mask.to(grad.device))  # the model may move after this
    return mask


def new_model_l2_penalty(model: MFModel, num_frozen_models: int, weight_decay: float) -> torch.Tensor:
    """(weight_decay / 2)·‖P_new‖²: its gradient weight_decay·P_new is exactly Adam's coupled L2 decay."""
    new_rows = model.P.weight[num_frozen_models:]
    return 0.5 * weight_decay * new_rows.pow(2).sum()


# ---------------------------------------------------------------------------------------------------- loading
def load_family_scorer(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                       embedding_cache_dir: str | None = None) -> FamilyScorer:
    """RouteLLM matrix factorisation: quality = δ(m, q) per model; pair score = P(strong beats weak | q)
    = σ(δ(strong, q) − δ(weak, q)), RouteLLM's router score."""
    models = tuple(config["model_pool"])
    if int(config["num_models"]) != len(models):
        raise CheckpointError(f"{directory / 'config.json'}: num_models {config['num_models']} but {len(models)} "
                              f"models in the pool: another model pool; re-export.")
    model = MFModel(int(config["num_models"]), int(config["prompt_embedding_dim"]),
                    int(config["model_embedding_dim"]), bool(config["use_projection"]))
    try:
        model.load_state_dict(load_export_weights(directory))
    except RuntimeError as err:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: weights do not fit config.json "
                              f"({str(err).splitlines()[0]}); re-export.") from None
    model.eval().to(device)
    embed, encoder_id = build_prompt_embedder(manifest["encoder"], int(config["prompt_embedding_dim"]),
                                              batch_size=batch_size, device=device,
                                              embedding_cache_dir=embedding_cache_dir)
    index = index_of(models)

    def head(embeddings: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            delta = model.score_all_models(torch.from_numpy(embeddings).to(device))
        return {"quality": delta.double().cpu().numpy()}

    def pair_rule(strong: str, weak: str) -> str | None:
        if strong in index and weak in index:
            return f"P({strong} beats {weak} | prompt) = sigmoid(delta(strong) - delta(weak)) (RouteLLM MF)"
        return None

    def pair_score(outputs: dict[str, np.ndarray], strong: str, weak: str) -> np.ndarray:
        delta = outputs["quality"]
        return sigmoid(delta[:, index[strong]] - delta[:, index[weak]])

    return FamilyScorer("mf", models, embed, head, pair_rule, pair_score, models, has_quality=True,
                        has_cost=False, encoder_id=encoder_id)
