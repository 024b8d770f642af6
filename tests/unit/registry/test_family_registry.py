"""One family registry: a new family is its model module plus one `register_family` line.

The "model module" of the family below is this file's `PromptLengthRouter` and its `load_family_scorer`
(a real nn.Module exported with safetensors: per model, quality = a·log(1 + prompt characters) + b).
Registered once, it is exported and versioned by the registry, gets its card text, and is loaded, scored and
routed by `Router.from_pretrained`, without any other file of RouterForge knowing it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from routerforge.errors import CheckpointError
from routerforge.io.safetensors_file import load_export_weights
from routerforge.models.family_scorer import FamilyScorer, expected_gain_scorer
from routerforge.registry import families
from routerforge.registry.families import FAMILIES, Family, register_family
from routerforge.registry.register import finalize_export
from routerforge.router import Router
from routerforge.train.final_export import build_manifest, export_router

POOL = ["small-model", "large-model"]
CARD_TEXT = "Prompt-length router: each model's quality is a line in log(1 + prompt characters)."


# ------------------------------------------------------------------------------------- the family's model module
class PromptLengthRouter(nn.Module):
    def __init__(self, num_models: int):
        super().__init__()
        self.slope = nn.Parameter(torch.zeros(num_models))
        self.intercept = nn.Parameter(torch.zeros(num_models))

    def forward(self, log_length: torch.Tensor) -> torch.Tensor:  # [n] -> quality [n, models]
        return log_length[:, None] * self.slope[None, :] + self.intercept[None, :]


def load_family_scorer(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                       embedding_cache_dir: str | None = None) -> FamilyScorer:
    models = tuple(config["model_pool"])
    router = PromptLengthRouter(len(models))
    router.load_state_dict(load_export_weights(directory))

    def predict(log_length: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return router(torch.from_numpy(log_length)).double().numpy()

    return expected_gain_scorer("prompt_length", models, lambda prompts: np.log1p([len(p) for p in prompts]),
                                predict, "a line in log(1 + prompt characters)", encoder_id="prompt-length")


# ----------------------------------------------------------------------------------------------------- tests
@pytest.fixture
def prompt_length_family():
    family = register_family(Family("prompt_length", load_family_scorer, card_text=CARD_TEXT))  # the one line
    yield family
    FAMILIES.pop(family.name)


def _export(directory: Path) -> Path:
    """What a recipe's end of run writes: weights + config.json + manifest (train/final_export.py)."""
    model = PromptLengthRouter(len(POOL))
    with torch.no_grad():  # the large model gains on long prompts, the small one loses
        model.slope.copy_(torch.tensor([-0.1, 0.2]))
        model.intercept.copy_(torch.tensor([0.8, 0.1]))
    manifest = build_manifest(recipe="prompt_length", router_type="prompt_length", resolved_config={},
                              model_pool=POOL, encoder={"id": "prompt-length"}, data={}, training={}, metrics={},
                              tracking={}, repo_dir=directory)
    return export_router(directory / "final", model.state_dict(),
                         {"router_type": "prompt_length", "model_pool": POOL}, manifest)


def test_a_family_defined_here_is_exported_carded_loaded_and_routed(prompt_length_family, tmp_path):
    checkpoint = finalize_export(_export(tmp_path / "run"), tmp_path / "checkpoints")
    card = (checkpoint / "README.md").read_text(encoding="utf-8")
    assert CARD_TEXT in card and "A `prompt_length` router." not in card

    router = Router.from_pretrained(checkpoint)
    assert router.router_type == "prompt_length" and router.models == tuple(POOL)
    prompts = ["hi", "Explain, step by step, why the sum of the angles of a triangle is 180 degrees." * 3]
    quality = router.predict(prompts)["quality"]
    for prompt, row in zip(prompts, quality, strict=True):
        x = math.log1p(len(prompt))
        assert row == pytest.approx([0.8 - 0.1 * x, 0.1 + 0.2 * x], rel=1e-6)
    gain = router.score(prompts, strong="large-model", weak="small-model")
    assert gain == pytest.approx(quality[:, 1] - quality[:, 0])
    assert router.route(prompts, cost_weight=0.0) == ["small-model", "large-model"]


def test_without_its_registration_the_checkpoint_is_refused(prompt_length_family, tmp_path):
    checkpoint = finalize_export(_export(tmp_path / "run"), tmp_path / "checkpoints")
    FAMILIES.pop("prompt_length")
    try:
        with pytest.raises(CheckpointError, match=r"router_type 'prompt_length' has no loader .*known: cluster, "
                                                  r"difficulty, knn, linear, mf, probe\)"):
            Router.from_pretrained(checkpoint)
    finally:
        FAMILIES["prompt_length"] = prompt_length_family
    with pytest.raises(ValueError, match="already registered"):
        register_family(Family("prompt_length", None))


def test_every_registered_family_has_its_files():
    """Each family's recipe, default config, demo commands and loader exist (the demo and bench read them)."""
    root = Path(__file__).resolve().parents[3]
    assert list(FAMILIES) == ["knn", "linear", "mf", "difficulty", "cluster", "probe", "router_r1"]
    for name, family in FAMILIES.items():
        assert (root / "training" / f"train_{family.recipe.replace('-', '_')}.py").is_file(), name
        assert (root / "configs" / name / "default.yaml").is_file() or name == "router_r1", name
        for step in family.demo:
            assert (root / step.script).is_file() and (root / step.config).is_file(), step
        if family.loader is not None:
            assert callable(family.load_scorer()), name
    assert families.card_text("mf").startswith("RouteLLM matrix-factorization router")
    assert families.card_text("probe") == "A `probe` router."  # no card text registered: the generic line
