r"""Fit a linear router: one logistic-regression head per model on the frozen prompt embedding.

    accelerate launch training/train_linear.py --config configs/linear/default.yaml [key=value ...]
    accelerate launch training/train_linear.py --config configs/linear/default.yaml data.path=data/processed/mine
    accelerate launch training/train_linear.py --config configs/linear/default.yaml \
        select.strong=gpt-4o select.weak=llama-3-8b

Method (routerforge/models/linear.py): P(m answers q well) = σ(w_m · e(q) + b_m), one scikit-learn
LogisticRegression per model on its scores (soft targets for scores between 0 and 1); pair score =
P(strong) − P(weak). Preference pairs (Arena votes, judge labels) count as win (1) / loss (0) / tie (0.5)
results where a model has no measured outcome (`data.pairs_as_outcomes`).

The inverse L2 strength C is chosen by k-fold cross-validation over the prompts of `data.fit_splits`
(folds by prompt, seeded), scored by the mean APGR over every model pair with a quality gap (or over one
pair: select.strong / select.weak); the export is then fitted on all of them. Nothing is trained by
gradient descent in this recipe's own loop (lbfgs inside scikit-learn), so there are no epochs, step
checkpoints or resume: a fit takes seconds to a few minutes.

Reads top to bottom:
  1. config   2. accelerate, run dir, tracking   3. data (score table, embeddings)
  4. C by cross-validation   5. final fit and export (main process)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from routerforge.config import doc
from routerforge.models.linear import LinearRouter
from routerforge.registry.register import register_run_export
from routerforge.train.entrypoint import run_recipe
from routerforge.train.lifecycle import dataset_facts, start_run
from routerforge.train.run_config import ExportConfig, FitRunConfig, TrackingConfig, parse_recipe_args
from routerforge.train.score_tables import load_scored_prompts, mean_pair_apgr, selection_pairs

RECIPE = "linear"
REPO_DIR = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearDataConfig:
    path: str = doc("prepared dataset: a version directory, or its parent holding LATEST (path)",
                    default="data/processed/demo")
    fit_splits: list[str] = doc("splits whose prompts and scores the heads are fitted (and cross-validated) on",
                                default_factory=lambda: ["train", "validation"])
    pairs_as_outcomes: bool = doc("preference pairs add a win (1), loss (0) or tie (0.5) score for a model on "
                                  "a prompt where it has no measured outcome", default=True)
    models: list[str] | None = doc("model pool, in this order; null: every model with scores, in the dataset "
                                   "manifest's order", default=None)

    def __post_init__(self) -> None:
        if not self.fit_splits or len(set(self.fit_splits)) != len(self.fit_splits):
            raise ValueError(f"data.fit_splits must list distinct splits, got {self.fit_splits}")
        if self.models is not None and (not self.models or len(set(self.models)) != len(self.models)):
            raise ValueError(f"data.models must be null or a non-empty list without repeats, got {self.models}")


@dataclass(frozen=True)
class LinearSearchConfig:
    inverse_l2: list[float] = doc("values of C (scikit-learn's inverse L2 strength) to try; the first is used "
                                  "without a search", default_factory=lambda: [1.0, 0.1, 0.3, 3.0])
    folds: int = doc("cross-validation folds over the prompts (count); 0 or 1: no search", default=3)
    strong: str | None = doc("score candidates by this pair's APGR only (with select.weak); null: mean APGR "
                             "over every pool pair with a quality gap", default=None)
    weak: str | None = doc("the weak model of select.strong's pair", default=None)
    min_pair_prompts: int = doc("a pair counts in the mean APGR when both models scored at least this many "
                                "prompts (prompts)", default=30)
    min_quality_gap: float = doc("... and their mean scores differ by at least this (score units; when no pair "
                                 "does, every pair with enough prompts counts)", default=0.02)

    def __post_init__(self) -> None:
        if not self.inverse_l2 or any(not c > 0 for c in self.inverse_l2):
            raise ValueError(f"select.inverse_l2 must list values > 0, got {self.inverse_l2}")
        if self.folds < 0:
            raise ValueError(f"select.folds must be >= 0, got {self.folds}")
        if (self.strong is None) != (self.weak is None):
            raise ValueError("select.strong and select.weak go together (or neither)")


@dataclass(frozen=True)
class LinearConfig:
    run: FitRunConfig = doc("run name, output dir, seed of the folds", default_factory=FitRunConfig)
    data: LinearDataConfig = doc("prepared dataset, splits and model pool", default_factory=LinearDataConfig)
    select: LinearSearchConfig = doc("C grid, chosen by cross-validation", default_factory=LinearSearchConfig)
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)


# ----------------------------------------------------------------------------------------------------
# 4. C by k-fold cross-validation on the routing metric (folds by prompt, seeded)
# ----------------------------------------------------------------------------------------------------
def choose_inverse_l2(cfg: LinearConfig, accelerator, scored, embeddings: np.ndarray) -> tuple[float, list[dict], list]:
    """(chosen C, one row per C tried, the model pairs scored)."""
    scores, prompt_ids = scored.scores, scored.prompt_ids
    pairs = selection_pairs(scores, scored.pool, cfg.select.strong, cfg.select.weak, cfg.select.min_pair_prompts,
                            cfg.select.min_quality_gap)
    search: list[dict] = []
    best_c = cfg.select.inverse_l2[0]
    if pairs and cfg.select.folds >= 2 and len(prompt_ids) >= 2 * cfg.select.folds:
        fold_of = np.random.default_rng(cfg.run.seed).permutation(len(prompt_ids)) % cfg.select.folds
        for inverse_l2 in cfg.select.inverse_l2:
            predicted = np.full(scores.shape, np.nan)
            for fold in range(cfg.select.folds):
                held_out = fold_of == fold
                router = LinearRouter.fit(embeddings[~held_out], scores[~held_out], inverse_l2)
                predicted[held_out] = router.predict(embeddings[held_out])
            search.append({"inverse_l2": inverse_l2, "cv_mean_pair_apgr": mean_pair_apgr(predicted, scores, pairs)})
        finite = [row for row in search if np.isfinite(row["cv_mean_pair_apgr"])]
        if finite:
            best_c = max(finite, key=lambda row: row["cv_mean_pair_apgr"])["inverse_l2"]
        accelerator.print(f"[linear] C={best_c} by {cfg.select.folds}-fold cross-validation on {len(prompt_ids)} "
                          f"prompts x {len(pairs)} pair(s): " + ", ".join(
                              f"C={row['inverse_l2']}: {row['cv_mean_pair_apgr']:.3f}" for row in search))
    else:
        accelerator.print(f"[linear] no search (select.folds < 2, too few prompts, or no model pair with >= "
                          f"{cfg.select.min_pair_prompts} scored prompts): C={best_c}.")
    return best_c, search, pairs


def main(argv: list[str] | None = None) -> dict:
    # 1. Config
    cfg = parse_recipe_args(LinearConfig, argv, description=__doc__.splitlines()[0])
    # 2. accelerate, run directory, tracking (the fit is deterministic: every process computes the same)
    ctx = start_run(cfg, RECIPE, REPO_DIR, resumable=False)
    # 3. Data: a prompt x model score table over the fit splits, and the prompts' embeddings
    scored = load_scored_prompts(cfg.data.path, list(cfg.data.fit_splits), cfg.data.models, cfg.data.pairs_as_outcomes,
                                 "data.fit_splits")
    embeddings = scored.embeddings.astype(np.float64)
    # 4. C by cross-validation
    best_c, search, pairs = choose_inverse_l2(cfg, ctx.accelerator, scored, embeddings)
    # 5. Final fit on every prompt of the fit splits, export (main process only)
    router = LinearRouter.fit(embeddings, scored.scores, best_c)
    best_value = next((row["cv_mean_pair_apgr"] for row in search if row["inverse_l2"] == best_c), None)
    metrics = {"cv_mean_pair_apgr": best_value} if best_value is not None else {}
    result = ctx.result(model_pool=scored.pool, inverse_l2=best_c, metrics=metrics)
    if ctx.accelerator.is_main_process:
        data, pool = scored.data, scored.pool
        ctx.accelerator.log({f"select/{k}": v for k, v in metrics.items()}, step=0)
        ctx.export(
            {key: torch.from_numpy(value) for key, value in router.state_dict().items()},
            {"router_type": RECIPE, "model_pool": pool, "inverse_l2": best_c,
             "prompt_embedding_dim": router.prompt_embedding_dim, "encoder": data.encoder,
             "quality": "P(the model answers the prompt well), a logistic head per model"},
            model_pool=pool, encoder=data.encoder, register=register_run_export,
            data={**dataset_facts(data), "fit_prompts": len(scored.prompt_ids),
                  "fit_splits": list(cfg.data.fit_splits), **scored.counts},
            training={"search": search, "selection_pairs": len(pairs), "inverse_l2": best_c,
                      "train_samples": int((~np.isnan(scored.scores)).sum())},
            metrics=metrics)
    ctx.finish()
    return result


if __name__ == "__main__":
    run_recipe(main)
