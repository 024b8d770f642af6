"""The router families, in one place: each is registered once, and everything that lists families reads it.

A family is one kind of router (mf, knn, linear, cluster, difficulty, probe, router_r1): its model module
(routerforge/models/<family>.py, with `load_family_scorer`), its recipe (training/train_<family>.py), its
configs (configs/<family>/) and one `register_family(Family(...))` below. Readers:

    Router.from_pretrained     `load_family`: manifest.json's `router_type` -> the family's loader
    model card                 `card_text` (routerforge/registry/card.py)
    make demo                  `demo` steps, in registration order (routerforge/demo.py)
    bench/bench_quality.py     the families with `bench_overrides`

"Family" is the word in code and docs; manifest.json and config.json store it as `router_type` (the key
every export has carried, kept so old checkpoints load unchanged).

Loaders are named "module:function" and imported on first use, so listing families (the card, `routerforge
list`, the demo's plan) imports no torch; tests/unit/test_import_layering.py reads those names as imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from routerforge.errors import CheckpointError

if TYPE_CHECKING:
    from routerforge.models.family_scorer import FamilyScorer

# Trackers and progress bars off in a benchmark; every other key is the default config's.
_BENCH_QUIET = ("tracking.report_to=none", "run.progress_bar=false")
_DEMO_RUN = ("run.name=demo", "tracking.report_to=tensorboard")
DEMO_DATA = "data/processed/demo"


@dataclass(frozen=True)
class DemoStep:
    """One command of `make demo`: `python SCRIPT --config CONFIG [data.path=<demo data>] OVERRIDES...`."""

    title: str
    script: str  # path from the repository root
    config: str  # config file, path from the repository root
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """Everything RouterForge knows about one router family, besides its model module and recipe."""

    name: str  # the family's name: `router_type` in manifest.json and config.json
    loader: str | Callable[..., FamilyScorer] | None  # "module:function" (or the function) that builds the
    #   scorer from a checkpoint directory; None: `Router` cannot load this family (Router-R1 is a policy)
    recipe: str | None = None  # `routerforge train <recipe>` (training/train_<recipe>.py); None: no recipe
    card_text: str | None = None  # the model card's first paragraph; None: "A `<name>` router."
    demo: tuple[DemoStep, ...] = ()  # its steps in `make demo` (the last one trains it); (): not in the demo
    bench_overrides: tuple[str, ...] | None = None  # bench/bench_quality.py trains it with these; None: not benched

    def load_scorer(self) -> Callable[..., FamilyScorer]:
        if self.loader is None or callable(self.loader):
            return self.loader
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family (its name must be new); returns it."""
    if family.name in FAMILIES:
        raise ValueError(f"a router family named {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def loadable_families() -> list[str]:
    return sorted(name for name, family in FAMILIES.items() if family.loader is not None)


def card_text(name: str) -> str:
    family = FAMILIES.get(name)
    return family.card_text if family is not None and family.card_text else f"A `{name}` router."


def load_family(directory: Path, manifest: dict, config: dict, **options) -> FamilyScorer:
    """The family's scorer for a verified checkpoint directory (`Router.from_pretrained`)."""
    router_type = manifest["router_type"]
    family = FAMILIES.get(router_type)
    if family is None or family.loader is None:
        raise CheckpointError(f"{directory}: router_type {router_type!r} has no loader in this RouterForge (known: "
                              f"{', '.join(loadable_families())}); upgrade routerforge.")
    return family.load_scorer()(Path(directory), manifest, config, **options)


def _demo_training(title: str, family: str, *overrides: str) -> DemoStep:
    return DemoStep(title, f"training/train_{family}.py", f"configs/{family}/default.yaml", tuple(overrides))


# -------------------------------------------------------------------------------------------- the families
# Registration order is the demo's order (and its results table's).
register_family(Family(
    "knn", "routerforge.models.knn:load_family_scorer", recipe="knn",
    card_text=("kNN router: each model's expected score on a prompt is the (shrunk) mean of its scores on the k most "
               "similar training prompts (cosine over prompt embeddings); k chosen on validation."),
    demo=(_demo_training("train the kNN router (every model's mean score on the nearest training prompts; k chosen "
                         "on validation)", "knn", *_DEMO_RUN),),
    bench_overrides=_BENCH_QUIET))
register_family(Family(
    "linear", "routerforge.models.linear:load_family_scorer", recipe="linear",
    card_text=("Linear router: one logistic-regression head per model on the frozen prompt embedding, "
               "P(model answers well); L2 strength chosen by cross-validation."),
    demo=(_demo_training("train the linear router (a logistic head per model on the prompt embedding; C by "
                         "cross-validation)", "linear", *_DEMO_RUN),),
    bench_overrides=_BENCH_QUIET))
register_family(Family(
    "mf", "routerforge.models.mf:load_family_scorer", recipe="mf",
    card_text=("RouteLLM matrix-factorization router (Ong et al. 2024, arXiv 2406.18665): a bilinear score of each "
               "model on the prompt's embedding, trained on pairwise preferences."),
    # the demo's 1k pairs: RouteLLM's batch and lr (the default config is sized for 100k+ pairs)
    demo=(_demo_training("train the matrix factorization router (RouteLLM)", "mf",
                         "run.name=demo", "run.epochs=50", "run.micro_batch_size=64", "optim.lr=3e-4",
                         "run.eval_every_optimizer_steps=500", "run.early_stopping_patience_evals=0",
                         "run.keep_best=false", "resume=auto", "tracking.report_to=tensorboard"),),
    bench_overrides=(_BENCH_QUIET[0], "checkpoint.every_optimizer_steps=0", _BENCH_QUIET[1])))
register_family(Family(
    "difficulty", "routerforge.models.difficulty:load_family_scorer",
    recipe="difficulty",
    card_text=("BEST-Route-style multi-head router (Ding et al. 2025, arXiv 2506.22716) on a transformer "
               "encoder: candidate-match, difficulty and win-probability heads."),
    # CPU-sized: 40 optimizer steps of 16 prompts at <= 128 tokens (~1.5 min on 2 quiet cores)
    demo=(_demo_training("train the difficulty router (BEST-Route heads on the packaged all-MiniLM-L6-v2)",
                         "difficulty", "run.name=demo", "run.max_optimizer_steps=40", "run.micro_batch_size=16",
                         "model.max_seq_tokens=128", "optim.lr=5e-5", "optim.warmup_fraction=0.2",
                         "run.eval_every_optimizer_steps=0", "run.early_stopping_patience_evals=0", "resume=auto",
                         "tracking.report_to=tensorboard"),),
    bench_overrides=(_BENCH_QUIET[0], "checkpoint.every_optimizer_steps=0", _BENCH_QUIET[1])))
register_family(Family(
    "cluster", "routerforge.models.cluster:load_family_scorer", recipe="cluster",
    card_text=("UniRoute cluster router (Jitkrittum et al. 2025, arXiv 2502.08773): k-means clusters of prompt "
               "embeddings and a per-cluster quality/cost table per model."),
    # 8 clusters with a 5-outcome prior: the demo's validation split is small (see the config's comment)
    demo=(_demo_training("train the cluster router (UniRoute)", "cluster",
                         "run.name=demo", "clusters.num_clusters=8", "table.prior_pseudo_count=5",
                         "tracking.report_to=tensorboard",
                         "data.table_split=validation", "data.eval_split=test",  # the demo's documented results
                         "costs.prices_file=data/prices/routerarena/model_cost/cost.json",
                         # RouterArena lists Mixtral as mistralai/mixtral-8x7b-instruct: its price under our name
                         "costs.prices={mistralai/Mixtral-8x7B-Instruct-v0.1: "
                         "{input_usd_per_million_tokens: 0.6, output_usd_per_million_tokens: 0.6}}"),),
    bench_overrides=_BENCH_QUIET))
register_family(Family(
    "probe", "routerforge.models.probe:load_family_scorer", recipe="probe",
    # The packaged MiniLM encoder STANDS IN for Mixtral's own hidden states (offline, no causal LM);
    # P(Mixtral correct) on RouteLLM MMLU, reported on the held-out eval/mmlu set against the baselines.
    demo=(DemoStep("hidden states for the probe (MiniLM stand-in for the weak model)", "data_prep/hidden_states.py",
                   "configs/probe/default.yaml", (f"features.dataset={DEMO_DATA}", "features.eval_sets=[mmlu]")),
          DemoStep("train the probe router (P(weak model correct), MiniLM stand-in)", "training/train_probe.py",
                   "configs/probe/default.yaml",
                   (f"features.dataset={DEMO_DATA}", "features.eval_sets=[mmlu]", "data.report_sets=[eval/mmlu]",
                    "data.sources=[mmlu]", "run.name=demo", "resume=auto", "tracking.report_to=tensorboard")))))
register_family(Family("router_r1", None, recipe="router-r1"))
