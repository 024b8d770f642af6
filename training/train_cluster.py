r"""Fit a UniRoute cluster router: k-means clusters of prompt embeddings + per-cluster quality/cost table.

    accelerate launch training/train_cluster.py --config configs/cluster/default.yaml [key=value ...]
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml training/train_cluster.py \
        --config configs/cluster/tiny.yaml
    accelerate launch --config_file launch/accelerate/single_gpu.yaml training/train_cluster.py \
        --config configs/cluster/default.yaml
    ... init.from_export=checkpoints/cluster/base/final run.name=added   # add unseen models from a small sample

Method (Jitkrittum et al. 2025, "Universal Model Routing for Efficient LLM Inference", arXiv 2502.08773,
cluster-based UniRoute): k-means (faiss, k-means++ seeds) over the TRAIN prompts' embeddings; each model's
mean score and mean cost per cluster on the VALIDATION outcomes (a model without validation outcomes falls
back to its train outcomes, with a warning); route a prompt to argmax_m quality[c, m] − λ·cost[c, m] of its
nearest cluster c. An exported router gains a model never seen in training by scoring it on a small
per-cluster sample of prompts (`init.from_export`): its column is appended, centroids and other columns
stay bit for bit.

Costs (USD per prompt): an outcome's own `cost` when the data has it; else, for a model with a price
(`costs.prices`, or `costs.prices_file` in RouterArena / LLMRouter format), `attach_cost` from the prompt's
tokens (estimated as characters / `costs.chars_per_token` when not recorded) and the output tokens
(`costs.assumed_output_tokens` when not recorded); else the model's cost is 0 and a warning names it.

Processes: k-means runs on the main process and its centroids are broadcast; every process counts the
table's sums over its shard of the outcomes and the sums are all-reduced, so every process ends with the
same router (checked: sha256 of the tensors per process, recorded in the manifest).

Reads top to bottom (main() at the end calls the sections in order; routerforge/train/lifecycle.py holds the
run's start and export, shared by every recipe):
  1. config   2. accelerate, seeds, run dir, tracking   3. data (embeddings, outcomes, costs)
  4. clusters (k-means, or the base router's)   5. per-cluster table (all-reduced sums)
  6. cross-process check   7. evaluation on the test split and export (main process)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from routerforge.config import doc
from routerforge.data.dataset_io import PreparedDataset, load_prepared
from routerforge.data.readers.prices import PriceTable, attach_cost, load_price_table
from routerforge.errors import CheckpointError, DataError, RouterForgeError
from routerforge.eval.multi import multi_report
from routerforge.io.names import CONFIG_FILE, MANIFEST_FILE
from routerforge.io.safetensors_file import load_export_weights
from routerforge.models.cluster import (
    KMEANS_INITS,
    ClusterRouter,
    KMeansFit,
    TableStats,
    add_models,
    finalize_tables,
    fit_kmeans,
    sample_per_cluster,
    table_stats,
)
from routerforge.registry.register import register_run_export
from routerforge.train.accelerator_setup import seed_for_model_init
from routerforge.train.consistency import agreed_parameter_digests
from routerforge.train.entrypoint import run_recipe
from routerforge.train.lifecycle import RunContext, dataset_facts, start_run
from routerforge.train.run_config import ExportConfig, FitRunConfig, TrackingConfig, parse_recipe_args

RECIPE = "cluster"
REPO_DIR = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# 1. Config: this recipe's blocks + the shared tracking/export blocks. No optimizer: nothing is trained
#    by gradient descent, so there are no epochs, batches or step checkpoints (a fit takes seconds).
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterDataConfig:
    path: str = doc("prepared dataset: a version directory, or its parent holding LATEST (path)",
                    default="data/processed/demo")
    cluster_split: str = doc("split whose prompt embeddings k-means clusters (UniRoute: the unlabelled train set)",
                             default="train")
    table_split: str = doc("split whose outcomes fill the per-cluster table (UniRoute uses a small labelled "
                           "validation set; the train split gives each cluster ~9x more prompts and routed "
                           "better on a 31-model outcome table: APGR 0.597 vs 0.566)", default="train")
    eval_split: str = doc("split to evaluate routing on (quality-cost curve, AIQ): held out when table_split is "
                          "train; an empty split is skipped with a note; empty string: none", default="validation")
    models: list[str] | None = doc("model pool, in this order (names as in the data); null: every model with "
                                   "outcomes, in the dataset manifest's order", default=None)
    fallback_to_cluster_split: bool = doc("a model with no outcomes in table_split uses its cluster_split "
                                          "outcomes (with a warning); false: that is an error", default=True)

    def __post_init__(self) -> None:
        if not self.cluster_split or not self.table_split:
            raise ValueError("data.cluster_split and data.table_split must name splits")
        if self.models is not None and (not self.models or len(set(self.models)) != len(self.models)):
            raise ValueError(f"data.models must be null or a non-empty list without repeats, got {self.models}")


@dataclass(frozen=True)
class ClustersConfig:
    num_clusters: int = doc("k, the number of k-means clusters (clusters); tune on validation", default=32)
    init: str = doc("k-means initialisation: kmeans++ (D² sampling, seeds computed in numpy) or random "
                    "(faiss's default: k uniformly drawn points)", default="kmeans++")
    n_iterations: int = doc("Lloyd iterations of faiss k-means (iterations; faiss default 25)", default=25)
    max_points_per_centroid: int = doc("faiss trains on at most k x this many prompts, a seeded subsample "
                                       "(prompts per cluster; faiss default 256)", default=256)

    def __post_init__(self) -> None:
        if self.num_clusters < 1:
            raise ValueError(f"clusters.num_clusters must be >= 1, got {self.num_clusters}")
        if self.init not in KMEANS_INITS:
            raise ValueError(f"clusters.init must be one of {', '.join(KMEANS_INITS)}, got '{self.init}'")
        if self.n_iterations < 1:
            raise ValueError(f"clusters.n_iterations must be >= 1, got {self.n_iterations}")
        if self.max_points_per_centroid < 1:
            raise ValueError(f"clusters.max_points_per_centroid must be >= 1, got {self.max_points_per_centroid}")


@dataclass(frozen=True)
class TableConfig:
    prior_pseudo_count: float = doc("shrink each cell's mean score toward the model's overall mean by this "
                                    "many pseudo-outcomes (outcomes; 0: UniRoute's plain per-cluster mean)",
                                    default=0.0)

    def __post_init__(self) -> None:
        if not (self.prior_pseudo_count >= 0 and math.isfinite(self.prior_pseudo_count)):
            raise ValueError(f"table.prior_pseudo_count must be a finite number >= 0, got {self.prior_pseudo_count}")


@dataclass(frozen=True)
class ModelPrice:
    input_usd_per_million_tokens: float = doc("price of input (prompt) tokens (USD per million tokens)",
                                              default=0.0)
    output_usd_per_million_tokens: float = doc("price of output (completion) tokens (USD per million tokens)",
                                               default=0.0)

    def __post_init__(self) -> None:
        for name in ("input_usd_per_million_tokens", "output_usd_per_million_tokens"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"costs.prices.<model>.{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class CostsConfig:
    prices_file: str | None = doc("price table for outcomes without a cost: RouterArena cost.json or LLMRouter "
                                  "default_llm.json (path; USD per million tokens)", default=None)
    prices: dict[str, ModelPrice] = doc("per-model prices (USD per million input/output tokens); these win over "
                                        "prices_file", default_factory=dict)
    assumed_output_tokens: int = doc("output tokens assumed for an outcome that did not record them (tokens)",
                                     default=256)
    chars_per_token: float = doc("characters per token, to estimate unrecorded input tokens from the prompt "
                                 "(characters/token)", default=4.0)

    def __post_init__(self) -> None:
        if self.assumed_output_tokens < 0:
            raise ValueError(f"costs.assumed_output_tokens must be >= 0, got {self.assumed_output_tokens}")
        if not self.chars_per_token > 0:
            raise ValueError(f"costs.chars_per_token must be > 0, got {self.chars_per_token}")


@dataclass(frozen=True)
class RoutingConfig:
    cost_weight: float = doc("λ: route to argmax quality − λ·cost (quality per USD: 100 = one cent must buy "
                             "0.01 of expected score); exported as the router's default", default=0.0)

    def __post_init__(self) -> None:
        if not (self.cost_weight >= 0 and math.isfinite(self.cost_weight)):
            raise ValueError(f"routing.cost_weight must be a finite number >= 0, got {self.cost_weight}")


@dataclass(frozen=True)
class ClusterInitConfig:
    from_export: str | None = doc("an exported cluster router (its directory): keep its centroids and columns, "
                                  "append the pool's models it lacks", default=None)
    new_model_prompts_per_cluster: int = doc("with from_export: score each new model on at most this many "
                                             "table_split prompts per cluster (prompts; 0: all of them)", default=5)

    def __post_init__(self) -> None:
        if self.new_model_prompts_per_cluster < 0:
            raise ValueError(f"init.new_model_prompts_per_cluster must be >= 0, got "
                             f"{self.new_model_prompts_per_cluster}")


@dataclass(frozen=True)
class ClusterEvalConfig:
    n_bootstrap: int = doc("bootstrap resamples of the eval prompts for confidence intervals (count; 0: none)",
                           default=200)

    def __post_init__(self) -> None:
        if self.n_bootstrap < 0:
            raise ValueError(f"eval.n_bootstrap must be >= 0, got {self.n_bootstrap}")


@dataclass(frozen=True)
class ClusterConfig:
    run: FitRunConfig = doc("run name, output dir, seed of the k-means++ seeds, faiss and the new-model samples",
                             default_factory=FitRunConfig)
    data: ClusterDataConfig = doc("prepared dataset, splits and model pool", default_factory=ClusterDataConfig)
    clusters: ClustersConfig = doc("k-means over prompt embeddings", default_factory=ClustersConfig)
    table: TableConfig = doc("per-cluster quality table", default_factory=TableConfig)
    costs: CostsConfig = doc("cost of an answer (USD) when the outcomes do not record it",
                             default_factory=CostsConfig)
    routing: RoutingConfig = doc("routing rule", default_factory=RoutingConfig)
    init: ClusterInitConfig = doc("add unseen models to an exported router", default_factory=ClusterInitConfig)
    eval: ClusterEvalConfig = doc("evaluation on data.eval_split", default_factory=ClusterEvalConfig)
    tracking: TrackingConfig = doc("W&B / TensorBoard", default_factory=TrackingConfig)
    export: ExportConfig = doc("final export", default_factory=ExportConfig)


# ----------------------------------------------------------------------------------------------------
# Data helpers (section 3)
# ----------------------------------------------------------------------------------------------------
def price_table(costs: CostsConfig) -> PriceTable:
    """prices_file (if any) overlaid with the inline `costs.prices`."""
    table: PriceTable = dict(load_price_table(costs.prices_file)) if costs.prices_file else {}
    for model, price in costs.prices.items():
        table[model] = (price.input_usd_per_million_tokens, price.output_usd_per_million_tokens)
    return table


@dataclass(frozen=True)
class OutcomeArrays:
    """One split's outcomes of the pool's models as aligned arrays (row order of the table)."""

    prompt_ids: list[str]
    model_ids: np.ndarray  # int64 index into the pool
    scores: np.ndarray  # float64 in [0, 1]
    costs_usd: np.ndarray  # float64, NaN where unknown

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, mask: np.ndarray) -> OutcomeArrays:
        idx = np.flatnonzero(mask)
        return OutcomeArrays([self.prompt_ids[i] for i in idx], self.model_ids[idx], self.scores[idx],
                             self.costs_usd[idx])


def outcome_arrays(data: PreparedDataset, split: str, pool: list[str], prices: PriceTable,
                   costs: CostsConfig) -> tuple[OutcomeArrays, dict[str, str]]:
    """Outcomes of `split` for the pool's models, each with a cost in USD (or NaN), and per model where
    its costs came from: 'data', 'prices', 'data+prices', or 'none'."""
    table = data.outcomes[split]
    model_index = {name: j for j, name in enumerate(pool)}
    rows = [r for r in table.select_columns(["prompt_id", "prompt", "model", "score", "cost", "input_tokens",
                                             "output_tokens", "source_file", "source_line"]).to_list()
            if r["model"] in model_index]
    cost_values = np.full(len(rows), np.nan)
    origin: dict[str, set[str]] = {name: set() for name in pool}
    for i, row in enumerate(rows):
        if row["cost"] is not None:
            cost_values[i] = float(row["cost"])
            origin[row["model"]].add("data")
        elif row["model"] in prices:
            cost_values[i] = attach_cost(row, prices, chars_per_token=costs.chars_per_token,
                                         assumed_output_tokens=costs.assumed_output_tokens)["cost"]
            origin[row["model"]].add("prices")
    arrays = OutcomeArrays(
        prompt_ids=[r["prompt_id"] for r in rows],
        model_ids=np.array([model_index[r["model"]] for r in rows], dtype=np.int64),
        scores=np.array([r["score"] for r in rows], dtype=np.float64),
        costs_usd=cost_values,
    )
    return arrays, {m: "+".join(sorted(o)) or "none" for m, o in origin.items()}


def prompt_clusters(router: ClusterRouter, prompt_ids: list[str], embedding_of: dict[str, np.ndarray],
                    where: str) -> np.ndarray:
    """Nearest-centroid index of every listed prompt (the router's own assignment), int64 [n]."""
    missing = [pid for pid in prompt_ids if pid not in embedding_of]
    if missing:
        raise DataError(f"{where}: {len(missing)} outcome prompt(s) have no embedding (e.g. prompt_id "
                        f"{missing[0]}); re-run data prep so every prompt is embedded.")
    if not prompt_ids:
        return np.zeros(0, dtype=np.int64)
    unique = list(dict.fromkeys(prompt_ids))
    emb = torch.from_numpy(np.stack([embedding_of[pid] for pid in unique]))
    cluster_of = dict(zip(unique, router.assign(emb.to(router.centroids.device)).cpu().numpy().tolist(), strict=True))
    return np.array([cluster_of[pid] for pid in prompt_ids], dtype=np.int64)


def stats_across_processes(accelerator, clusters: np.ndarray, outcomes: OutcomeArrays, num_clusters: int,
                           num_models: int) -> TableStats:
    """Each process sums its shard (rows rank, rank + world, ...); the sums are all-reduced."""
    shard = slice(accelerator.process_index, None, accelerator.num_processes)
    local = table_stats(clusters[shard], outcomes.model_ids[shard], outcomes.scores[shard],
                        outcomes.costs_usd[shard], num_clusters, num_models)
    summed = accelerator.reduce(torch.from_numpy(local.stacked()).to(accelerator.device), reduction="sum")
    return TableStats.from_stacked(summed.cpu().numpy())


def load_base_router(export_dir: Path, encoder: dict) -> tuple[ClusterRouter, list[str], dict]:
    """An exported cluster router, its model pool and its manifest; its encoder must be the dataset's."""
    config_path, manifest_path = export_dir / CONFIG_FILE, export_dir / MANIFEST_FILE
    if not config_path.is_file() or not manifest_path.is_file():
        raise CheckpointError(f"init.from_export={export_dir}: no {CONFIG_FILE} / {MANIFEST_FILE}; pass the "
                              f"directory of an exported cluster router.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("router_type") != RECIPE:
        raise CheckpointError(f"{config_path}: router_type is {config.get('router_type')!r}, not '{RECIPE}'.")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    base_encoder = manifest.get("encoder", {})
    if (base_encoder.get("id"), base_encoder.get("dim")) != (encoder.get("id"), encoder.get("dim")):
        raise DataError(f"init.from_export={export_dir}: router clusters {base_encoder.get('id')} embeddings "
                        f"(dim {base_encoder.get('dim')}) but the data uses {encoder.get('id')} (dim "
                        f"{encoder.get('dim')}); re-embed the data with the router's encoder.")
    router = ClusterRouter.from_state_dict(load_export_weights(export_dir))  # safetensors only, sha256 checked
    return router, list(config["model_pool"]), manifest


def evaluate_routing(router: ClusterRouter, data: PreparedDataset, split: str, pool: list[str],
                     prices: PriceTable, cfg: ClusterConfig, embedding_of: dict[str, np.ndarray]) -> dict:
    """Quality-cost evaluation on the prompts of `split` that every pool model answered.

    Predicted quality/cost come from the router; true quality is the outcome score, true cost the
    outcome's resolved cost (the router's predicted cost where the data has none).
    """
    outcomes, _ = outcome_arrays(data, split, pool, prices, cfg.costs)
    by_prompt: dict[str, dict[int, tuple[float, float]]] = {}
    for pid, j, s, c in zip(outcomes.prompt_ids, outcomes.model_ids.tolist(), outcomes.scores.tolist(),
                            outcomes.costs_usd.tolist(), strict=True):
        by_prompt.setdefault(pid, {})[j] = (s, c)
    complete = [pid for pid, cells in by_prompt.items() if len(cells) == len(pool)]
    if not complete:
        return {}
    emb = torch.from_numpy(np.stack([embedding_of[pid] for pid in complete])).to(router.centroids.device)
    pred_quality = router.predicted_quality(emb).cpu().numpy().astype(np.float64)
    pred_cost = router.predicted_cost(emb).cpu().numpy().astype(np.float64)
    true_quality = np.array([[by_prompt[pid][j][0] for j in range(len(pool))] for pid in complete])
    true_cost = np.array([[by_prompt[pid][j][1] for j in range(len(pool))] for pid in complete])
    true_cost = np.where(np.isnan(true_cost), pred_cost, true_cost)
    report = multi_report(pred_quality, true_quality, true_cost, models=pool, decision_costs=pred_cost,
                          n_bootstrap=cfg.eval.n_bootstrap, seed=cfg.run.seed)
    choice = router.route(emb, cfg.routing.cost_weight).cpu().numpy()
    rows = np.arange(len(complete))
    return {
        "prompts": len(complete),
        "aiq": report.aiq, "zero_router_aiq": report.zero_router_aiq, "oracle_aiq": report.oracle_aiq,
        "router_max_quality": float(report.hull.quality[-1]),
        "best_single_model_quality": float(report.model_mean_quality.max()),
        "at_cost_weight": {
            "cost_weight": cfg.routing.cost_weight,
            "mean_quality": float(true_quality[rows, choice].mean()),
            "mean_cost_usd": float(true_cost[rows, choice].mean()),
            "share": {name: float((choice == j).mean()) for j, name in enumerate(pool)},
        },
        "report": report.to_dict(),
    }


# ----------------------------------------------------------------------------------------------------
# 3. Data: the pool, every prompt's embedding, the table split's outcomes (with costs in USD)
# ----------------------------------------------------------------------------------------------------
def load_data(cfg: ClusterConfig) -> tuple[PreparedDataset, list[str]]:
    """The prepared dataset and the pool asked for (data.models, or every model with outcomes)."""
    data = load_prepared(cfg.data.path)
    for split in (cfg.data.cluster_split, cfg.data.table_split, cfg.data.eval_split):
        if split and (split not in data.prompts or split not in data.outcomes):
            raise DataError(f"{data.path}: no split '{split}' (has {', '.join(data.prompts)}); set "
                            f"data.cluster_split / data.table_split / data.eval_split.")
    # Only models with outcomes can fill a table (a dataset's pool may also hold models seen only in pairs).
    outcome_models = {m for split in data.outcomes for m in data.outcomes[split].unique("model")}
    if not outcome_models:
        raise DataError(f"{data.path}: the dataset has no outcomes (prompt x model scores); the cluster router "
                        f"needs an outcome source (e.g. kind: routellm_csv or outcomes) in the data config.")
    if cfg.data.models is not None:
        requested_pool = list(cfg.data.models)
    else:  # the manifest's order, then any outcome model it does not list
        requested_pool = [m for m in data.models if m in outcome_models]
        requested_pool += sorted(outcome_models - set(requested_pool))
    unknown = [m for m in requested_pool if m not in outcome_models]
    if unknown:
        raise DataError(f"data.models: {unknown} have no outcomes in {data.path} (models with outcomes: "
                        f"{', '.join(sorted(outcome_models))}); fix the names.")
    return data, requested_pool


@dataclass(frozen=True)
class Clusters:
    """Section 4's result."""

    pool: list[str]  # the router's model pool: the base router's, then the new models
    new_models: list[str]  # the models whose table section 5 fills
    base_pool: list[str]
    base_router: ClusterRouter | None  # init.from_export's router
    centroids: torch.Tensor | None  # k-means' centroids (None: the base router's)
    num_clusters: int
    kmeans_record: dict


# ----------------------------------------------------------------------------------------------------
# 4. Clusters: k-means over the cluster split's prompts (main process, broadcast), or the base router's
# ----------------------------------------------------------------------------------------------------
def build_clusters(cfg: ClusterConfig, accelerator, data: PreparedDataset, requested_pool: list[str]) -> Clusters:
    base_pool: list[str] = []
    base_manifest: dict | None = None
    base_router, centroids = None, None
    kmeans_record: dict
    if cfg.init.from_export:
        base_router, base_pool, base_manifest = load_base_router(Path(cfg.init.from_export), data.encoder)
        new_models = [m for m in requested_pool if m not in base_pool]
        if not new_models:
            raise DataError(f"init.from_export: every model of the pool ({', '.join(requested_pool)}) is already "
                            f"in the router's pool; there is nothing to add.")
        pool = base_pool + new_models
        num_clusters = base_router.num_clusters
        kmeans_record = {"from_export": cfg.init.from_export,
                         "base_data_fingerprint": base_manifest.get("data", {}).get("fingerprint")}
    else:
        new_models, pool = list(requested_pool), list(requested_pool)
        _, train_emb = data.embeddings(cfg.data.cluster_split)
        num_clusters = cfg.clusters.num_clusters
        # Checked on every process (the data decides), so no process waits in a collective for a failed one.
        if len(train_emb) < num_clusters:
            raise DataError(f"{data.path}: split '{cfg.data.cluster_split}' has {len(train_emb)} prompts, fewer "
                            f"than clusters.num_clusters={num_clusters}; lower it.")
        # The main process fits and broadcasts the result, or its one-line error, so that every process
        # raises it rather than waiting forever for centroids.
        fit_box: list[KMeansFit | RouterForgeError | None] = [None]
        if accelerator.is_main_process:
            try:
                fit_box[0] = fit_kmeans(train_emb, num_clusters, seed=cfg.run.seed,
                                        n_iterations=cfg.clusters.n_iterations, init=cfg.clusters.init,
                                        max_points_per_centroid=cfg.clusters.max_points_per_centroid)
            except RouterForgeError as exc:
                fit_box[0] = exc
        broadcast_object_list(fit_box)
        if isinstance(fit_box[0], RouterForgeError):
            raise fit_box[0]
        fit = fit_box[0]
        kmeans_record = {"init": fit.init, "objective": fit.objective, "initial_objective": fit.initial_objective,
                         "train_prompts": len(train_emb), "cluster_sizes": fit.cluster_sizes.tolist(),
                         "n_iterations": cfg.clusters.n_iterations}
        centroids = torch.from_numpy(fit.centroids)
    if len(pool) == 1:
        accelerator.print(f"warning: the pool has one model ({pool[0]}); routing is trivial until models are "
                          f"added (init.from_export).")
    return Clusters(pool=pool, new_models=new_models, base_pool=base_pool, base_router=base_router,
                    centroids=centroids, num_clusters=num_clusters, kmeans_record=kmeans_record)


@dataclass(frozen=True)
class Table:
    """Section 5's result: the router and where its table came from."""

    router: ClusterRouter
    table_outcomes: OutcomeArrays
    table_source: dict[str, str]  # model -> split its table rows came from
    cost_origin: dict[str, str]  # model -> where its costs came from
    added_record: dict[str, dict]  # init.from_export: what each new model was fitted on


# ----------------------------------------------------------------------------------------------------
# 5. Per-cluster table: each new model's mean score and cost per cluster on the table split
#    (fallback: the cluster split); with init.from_export, on a small per-cluster sample only.
# ----------------------------------------------------------------------------------------------------
def build_table(cfg: ClusterConfig, accelerator, data: PreparedDataset, cl: Clusters, prices: PriceTable,
                embedding_of) -> Table:
    new_models, num_clusters, base_router, centroids = cl.new_models, cl.num_clusters, cl.base_router, cl.centroids
    new_index = {name: j for j, name in enumerate(new_models)}
    table_outcomes, cost_origin = outcome_arrays(data, cfg.data.table_split, new_models, prices, cfg.costs)
    fallback_models = [m for m in new_models if not np.any(table_outcomes.model_ids == new_index[m])]
    table_source = {m: cfg.data.table_split for m in new_models}
    if fallback_models:
        if not cfg.data.fallback_to_cluster_split:
            raise DataError(f"{data.path}: no '{cfg.data.table_split}' outcomes for {fallback_models}; add them or "
                            f"set data.fallback_to_cluster_split=true.")
        accelerator.print(f"warning: no '{cfg.data.table_split}' outcomes for {', '.join(fallback_models)}: their "
                          f"per-cluster table uses '{cfg.data.cluster_split}' outcomes (the prompts k-means saw).")
        extra, extra_origin = outcome_arrays(data, cfg.data.cluster_split, new_models, prices, cfg.costs)
        keep = np.isin(extra.model_ids, [new_index[m] for m in fallback_models])
        extra = extra.select(keep)
        table_outcomes = OutcomeArrays(table_outcomes.prompt_ids + extra.prompt_ids,
                                       np.concatenate([table_outcomes.model_ids, extra.model_ids]),
                                       np.concatenate([table_outcomes.scores, extra.scores]),
                                       np.concatenate([table_outcomes.costs_usd, extra.costs_usd]))
        for m in fallback_models:
            table_source[m] = cfg.data.cluster_split
            cost_origin[m] = extra_origin[m]
    missing_everywhere = [m for m in new_models if not np.any(table_outcomes.model_ids == new_index[m])]
    if missing_everywhere:
        raise DataError(f"{data.path}: no outcomes for {missing_everywhere} in '{cfg.data.table_split}' or "
                        f"'{cfg.data.cluster_split}'; the table needs each model scored on some prompts.")
    costless = [m for m, origin in cost_origin.items() if origin == "none"]
    if costless:  # one line for the whole pool: a table without costs is common (benchmark outcomes)
        accelerator.print(f"warning: no cost for {len(costless)} of {len(cost_origin)} models (no `cost` in the "
                          f"data, no price in costs.prices / costs.prices_file), counted as 0 USD: "
                          f"{', '.join(costless)}")

    # Outcome prompts are assigned by the router's own nearest-centroid rule (the one used at inference).
    lookup_router = (base_router if cfg.init.from_export
                     else ClusterRouter(centroids, torch.zeros(num_clusters, 1), torch.zeros(num_clusters, 1)))
    lookup_router = lookup_router.to(accelerator.device)
    clusters = prompt_clusters(lookup_router, table_outcomes.prompt_ids, embedding_of,
                               where=f"{data.path} outcomes/{cfg.data.table_split}")
    added_record: dict[str, dict] = {}
    if cfg.init.from_export and cfg.init.new_model_prompts_per_cluster > 0:
        # UniRoute's small labelled set: a few prompts per cluster for each new model (seeded, so every
        # process draws the same sample).
        keep = np.zeros(len(table_outcomes), dtype=bool)
        for m in new_models:
            rows = np.flatnonzero(table_outcomes.model_ids == new_index[m])
            picked = rows[sample_per_cluster(clusters[rows], cfg.init.new_model_prompts_per_cluster,
                                             seed=cfg.run.seed + new_index[m])]
            keep[picked] = True
        table_outcomes, clusters = table_outcomes.select(keep), clusters[keep]
    stats = stats_across_processes(accelerator, clusters, table_outcomes, num_clusters, len(new_models))
    if cfg.init.from_export:
        router = add_models(base_router.cpu(), stats, cfg.table.prior_pseudo_count)
        for m in new_models:
            rows = table_outcomes.model_ids == new_index[m]
            added_record[m] = {"prompts": int(rows.sum()), "split": table_source[m],
                               "prompts_per_cluster": np.bincount(clusters[rows], minlength=num_clusters).tolist(),
                               "prompt_ids": sorted(p for p, r in zip(table_outcomes.prompt_ids, rows, strict=True)
                                                    if r)}
    else:
        quality, cost, support = finalize_tables(stats, cfg.table.prior_pseudo_count)
        router = ClusterRouter(centroids, torch.from_numpy(quality), torch.from_numpy(cost), torch.from_numpy(support))
    router = router.to(accelerator.device)
    return Table(router=router, table_outcomes=table_outcomes, table_source=table_source, cost_origin=cost_origin,
                 added_record=added_record)


# ----------------------------------------------------------------------------------------------------
# 7. Evaluation on the eval split, export, and where everything went (main process only)
# ----------------------------------------------------------------------------------------------------
def evaluate_and_export(ctx: RunContext, data: PreparedDataset, cl: Clusters, table: Table, prices: PriceTable,
                        embedding_of, digests: list[str]) -> dict:
    cfg: ClusterConfig = ctx.cfg
    router, pool = table.router, cl.pool
    result = ctx.result(model_pool=pool, metrics={})
    if ctx.accelerator.is_main_process:
        evaluation = (evaluate_routing(router, data, cfg.data.eval_split, pool, prices, cfg, embedding_of)
                      if cfg.data.eval_split else {})
        if cfg.data.eval_split and not evaluation:
            eval_prompts = len(data.outcomes[cfg.data.eval_split].unique("prompt_id"))
            print(f"note: the '{cfg.data.eval_split}' split is empty (the data config's split sizes gave it no "
                  f"prompt); no evaluation. Set data.eval_split to a split with outcomes (e.g. validation)."
                  if eval_prompts == 0 else
                  f"note: none of the {eval_prompts} '{cfg.data.eval_split}' prompts has outcomes for every pool "
                  f"model; no evaluation.")
        metrics = {k: v for k, v in evaluation.items() if k != "report"}
        scalars = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        if "objective" in cl.kmeans_record:
            scalars["kmeans/objective"] = cl.kmeans_record["objective"]
        ctx.accelerator.log(scalars, step=0)
        result["metrics"] = metrics
        ctx.export(
            router.state_dict(),
            {"router_type": RECIPE, "model_pool": pool, **router.config(), "cost_weight": cfg.routing.cost_weight,
             "encoder": data.encoder, "quality": f"mean outcome score in [0, 1] per cluster ({cfg.data.table_split} "
                                                 f"split)", "cost": "mean cost per prompt, USD"},
            model_pool=pool, encoder=data.encoder, register=register_run_export,
            data={**dataset_facts(data), "table_rows": len(table.table_outcomes),
                  "table_split_per_model": table.table_source, "cost_source_per_model": table.cost_origin,
                  "prices_usd_per_million_tokens": {m: list(prices[m]) for m in pool if m in prices}},
            training={"kmeans": cl.kmeans_record, "base_router": cfg.init.from_export, "base_model_pool": cl.base_pool,
                      "added_models": table.added_record, "param_sha256_per_process": digests},
            metrics=metrics)
    ctx.finish()
    return result


def main(argv: list[str] | None = None) -> dict:
    # 1. Config
    cfg = parse_recipe_args(ClusterConfig, argv, description=__doc__.splitlines()[0])
    # 2. accelerate, seeds, run directory, tracking
    ctx = start_run(cfg, RECIPE, REPO_DIR, resumable=False)
    seed_for_model_init(cfg.run.seed)
    progress = tqdm(total=4, desc=RECIPE, unit="stage",  # data, clusters, table, check
                    disable=not (ctx.accelerator.is_main_process and cfg.run.progress_bar))
    # 3. Data
    data, requested_pool = load_data(cfg)
    prices = price_table(cfg.costs)
    embedding_of = data.embedding_index()
    progress.update(1)
    # 4. Clusters
    cl = build_clusters(cfg, ctx.accelerator, data, requested_pool)
    progress.update(1)
    # 5. Per-cluster table
    table = build_table(cfg, ctx.accelerator, data, cl, prices, embedding_of)
    progress.update(1)
    # 6. Every process must hold the same router (centroids broadcast, sums all-reduced)
    digests = agreed_parameter_digests(ctx.accelerator, table.router, what="routers")
    progress.update(1)
    progress.close()
    # 7. Evaluation and export
    return evaluate_and_export(ctx, data, cl, table, prices, embedding_of, digests)


if __name__ == "__main__":
    run_recipe(main)
