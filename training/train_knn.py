r"""Fit a kNN router: the training prompts' embeddings + every model's scores, k chosen on validation.

    accelerate launch training/train_knn.py --config configs/knn/default.yaml [key=value ...]
    accelerate launch training/train_knn.py --config configs/knn/default.yaml data.path=data/processed/mine
    accelerate launch training/train_knn.py --config configs/knn/default.yaml \
        select.strong=gpt-4o select.weak=llama-3-8b

Method (routerforge/models/knn.py): a model's expected score on a prompt is the similarity-weighted mean of
its scores on the k nearest training prompts, shrunk towards its overall mean when few neighbours were
scored for it. One router serves every pair of the pool (the pair score is quality[strong] -
quality[weak], the expected score gained by calling the strong model), and it learns from every model's
outcomes, not only the routed pair's. Preference pairs (Arena votes, judge labels) add win/loss outcomes
(1 / 0, tie 0.5) for the prompts where a model has no measured outcome (`data.pairs_as_outcomes`).

Hyperparameters (k, the prior strength α and the weighting) are chosen by a grid search, leave-one-out:
every indexed prompt (train + validation by default) is predicted from the others, and each candidate is
scored by its mean APGR over every model pair with a quality gap (or over one pair: select.strong /
select.weak). Leave-one-out is free for a kNN router and scores thousands of held-out predictions instead
of a validation split's few hundred, so the choice is far less noisy. Nothing is trained by gradient
descent, so there are no epochs, step checkpoints or resume: a fit takes seconds.

Reads top to bottom:
  1. config   2. accelerate, run dir, tracking   3. data (score table, embeddings)
  4. hyperparameter search (leave-one-out)   5. export (main process)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from routerforge.config import doc
from routerforge.models.knn import WEIGHTINGS, KNNRouter, KNNSettings
from routerforge.registry.register import register_run_export
from routerforge.train.entrypoint import run_recipe
from routerforge.train.lifecycle import dataset_facts, start_run
from routerforge.train.run_config import ExportConfig, FitRunConfig, TrackingConfig, parse_recipe_args
from routerforge.train.score_tables import load_scored_prompts, mean_pair_apgr, selection_pairs

RECIPE = "knn"
REPO_DIR = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KNNDataConfig:
    path: str = doc("prepared dataset: a version directory, or its parent holding LATEST (path)",
                    default="data/processed/demo")
    index_splits: list[str] = doc("splits whose prompts and scores form the index (and the leave-one-out "
                                  "search)", default_factory=lambda: ["train", "validation"])
    pairs_as_outcomes: bool = doc("preference pairs add a win (1), loss (0) or tie (0.5) score for a model on "
                                  "a prompt where it has no measured outcome", default=True)
    models: list[str] | None = doc("model pool, in this order; null: every model with scores, in the dataset "
                                   "manifest's order", default=None)

    def __post_init__(self) -> None:
        if not self.index_splits or len(set(self.index_splits)) != len(self.index_splits):
            raise ValueError(f"data.index_splits must list distinct splits, got {self.index_splits}")
        if self.models is not None and (not self.models or len(set(self.models)) != len(self.models)):
            raise ValueError(f"data.models must be null or a non-empty list without repeats, got {self.models}")


@dataclass(frozen=True)
class KNNSearchConfig:
    search: bool = doc("choose k / prior_strength / weighting by leave-one-out over the index; false: the first "
                       "value of each list", default=True)
    k: list[int] = doc("neighbours per prompt to try (count); the first is used without a search",
                       default_factory=lambda: [50, 10, 25, 100, 200])
    prior_strength: list[float] = doc("α values to try: weight of the model's overall mean, in neighbours",
                                      default_factory=lambda: [4.0, 0.0, 16.0])
    weighting: list[str] = doc("neighbour weightings to try: uniform, softmax (w = exp(cosine / temperature))",
                               default_factory=lambda: ["uniform", "softmax"])
    temperature: float = doc("softmax weighting's temperature (cosine units)", default=0.05)
    strong: str | None = doc("score candidates by this pair's validation APGR only (with select.weak); "
                             "null: mean APGR over every pool pair with a quality gap", default=None)
    weak: str | None = doc("the weak model of select.strong's pair", default=None)
    min_pair_prompts: int = doc("a pair counts in the mean APGR when both models scored at least this many "
                                "indexed prompts (prompts)", default=30)
    min_quality_gap: float = doc("... and their mean scores differ by at least this (score units; when no pair "
                                 "does, every pair with enough prompts counts)", default=0.02)

    def __post_init__(self) -> None:
        if not self.k or any(k < 1 for k in self.k):
            raise ValueError(f"select.k must list neighbour counts >= 1, got {self.k}")
        if not self.prior_strength or any(a < 0 for a in self.prior_strength):
            raise ValueError(f"select.prior_strength must list values >= 0, got {self.prior_strength}")
        bad = [w for w in self.weighting if w not in WEIGHTINGS]
        if not self.weighting or bad:
            raise ValueError(f"select.weighting must list {' / '.join(WEIGHTINGS)}, got {self.weighting}")
        if self.temperature <= 0:
            raise ValueError(f"select.temperature must be > 0, got {self.temperature}")
        if (self.strong is None) != (self.weak is None):
            raise ValueError("select.strong and select.weak go together (or neither)")


@dataclass(frozen=True)
class KNNConfig:
    run: FitRunConfig = doc("run name and output dir", default_factory=FitRunConfig)
    data: KNNDataConfig = doc("prepared dataset, splits and model pool", default_factory=KNNDataConfig)
    select: KNNSearchConfig = doc("hyperparameter grid searched on the select split",
                                  default_factory=KNNSearchConfig)
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)


# ----------------------------------------------------------------------------------------------------
# 4. Hyperparameters: grid search, leave-one-out over every indexed prompt: a kNN router predicts each
#    indexed prompt from the others for free, so the search scores thousands of held-out predictions
#    instead of the few hundred prompts of a validation split.
# ----------------------------------------------------------------------------------------------------
def search_settings(cfg: KNNConfig, accelerator, router: KNNRouter, scored) -> tuple[KNNSettings, list[dict], list]:
    """(chosen settings, one row per searched setting, the model pairs scored)."""
    index_scores = scored.scores
    grid = [KNNSettings(k, alpha, weighting, cfg.select.temperature)
            for k, alpha, weighting in itertools.product(cfg.select.k, cfg.select.prior_strength, cfg.select.weighting)]
    search: list[dict] = []
    best = grid[0]
    pairs = selection_pairs(index_scores, scored.pool, cfg.select.strong, cfg.select.weak, cfg.select.min_pair_prompts,
                            cfg.select.min_quality_gap)
    if pairs and cfg.select.search:
        sims, idx = router.neighbours(router.embeddings, max(cfg.select.k), exclude_self=True)
        for settings in grid:
            value = mean_pair_apgr(router.predict_from_neighbours(sims, idx, settings), index_scores, pairs)
            search.append({"k": settings.k, "prior_strength": settings.prior_strength,
                           "weighting": settings.weighting, "mean_pair_apgr": value})
        finite = [(row["mean_pair_apgr"], -i) for i, row in enumerate(search) if np.isfinite(row["mean_pair_apgr"])]
        if finite:
            best = grid[-max(finite)[1]]
        accelerator.print(f"[knn] searched {len(grid)} settings, leave-one-out on {len(scored.prompt_ids)} prompts x "
                          f"{len(pairs)} pair(s): k={best.k}, prior_strength={best.prior_strength}, "
                          f"weighting={best.weighting} (mean APGR {max(finite)[0]:.3f})"
                          if finite else "[knn] no finite leave-one-out APGR; using the first grid values")
    else:
        accelerator.print(f"[knn] no search (select.search=false, or no model pair with >= "
                          f"{cfg.select.min_pair_prompts} scored prompts): k={best.k}, "
                          f"prior_strength={best.prior_strength}, weighting={best.weighting}.")
    return best, search, pairs


def main(argv: list[str] | None = None) -> dict:
    # 1. Config
    cfg = parse_recipe_args(KNNConfig, argv, description=__doc__.splitlines()[0])
    # 2. accelerate, run directory, tracking (the fit is deterministic: every process computes the same)
    ctx = start_run(cfg, RECIPE, REPO_DIR, resumable=False)
    # 3. Data: a prompt x model score table per split, and the prompts' embeddings
    scored = load_scored_prompts(cfg.data.path, list(cfg.data.index_splits), cfg.data.models,
                                 cfg.data.pairs_as_outcomes, "data.index_splits")
    # 4. Hyperparameters by leave-one-out
    router = KNNRouter(scored.embeddings, scored.scores)
    best, search, pairs = search_settings(cfg, ctx.accelerator, router, scored)
    best_value = max((row["mean_pair_apgr"] for row in search if row["k"] == best.k
                      and row["prior_strength"] == best.prior_strength and row["weighting"] == best.weighting),
                     default=None)
    # 5. Export (main process only)
    metrics = {"leave_one_out_mean_pair_apgr": best_value} if best_value is not None else {}
    result = ctx.result(model_pool=scored.pool, settings=best.__dict__, metrics=metrics)
    if ctx.accelerator.is_main_process:
        data, pool = scored.data, scored.pool
        ctx.accelerator.log({f"select/{k}": v for k, v in metrics.items()}, step=0)
        ctx.export(
            {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in router.state_dict().items()},
            {"router_type": RECIPE, "model_pool": pool, "k": best.k, "prior_strength": best.prior_strength,
             "weighting": best.weighting, "temperature": best.temperature,
             "prompt_embedding_dim": router.prompt_embedding_dim, "indexed_prompts": len(scored.prompt_ids),
             "encoder": data.encoder,
             "quality": "expected score in the data's units (neighbour mean, shrunk to the model's mean)"},
            model_pool=pool, encoder=data.encoder, register=register_run_export,
            data={**dataset_facts(data), "indexed_prompts": len(scored.prompt_ids),
                  "index_splits": list(cfg.data.index_splits), **scored.counts},
            training={"search": search, "selection_pairs": len(pairs), "chosen": best.__dict__,
                      "train_samples": int((~np.isnan(scored.scores)).sum())},
            metrics=metrics)
    ctx.finish()
    return result


if __name__ == "__main__":
    run_recipe(main)
