"""The inference API: load any exported router and route prompts to model names.

    from routerforge import Router
    router = Router.from_pretrained("checkpoints/mf/1.0.0")              # or checkpoints/mf (its LATEST)
    router = Router.from_pretrained("my-org/mf-router")                  # the newest published version (main)
    router = Router.from_pretrained("my-org/mf-router", revision="v1.0.0")   # one published version, pinned
    router.push_to_hub("my-org/mf-router")              # publish this checkpoint (routerforge publish)
    router.score(prompts, strong="gpt-4-1106-preview", weak="mixtral-8x7b")  # [n] floats, higher = needs strong
    router.route(prompts, strong_share=0.2)             # calibrated: ~20% of your traffic to the strong model
    router.route(prompts, threshold=0.6, strong="gpt-4-1106-preview", weak="mixtral-8x7b")
    router.route(prompts, cost_weight=50.0)             # multi-model: argmax predicted quality - λ·cost (USD)

    routerforge route CHECKPOINT "prompt" [--strong-share 0.2 | --threshold T | --cost-weight λ]

Loading verifies the checkpoint first (routerforge/registry/load.py: sha256 of every file, model pool and
encoder agree between manifest and config; the encoder this machine resolves is the one recorded), then
builds the family's scorer (the loader routerforge/registry/families.py registers for it). Prompts are
processed in batches of `batch_size`; `timing` accumulates the seconds spent in the encoder and in the
rest (bench/bench_routing.py).

Binary scores. `score` asks "does this prompt need `strong` rather than `weak`?". When the router knows both
models, its family's pair score answers (e.g. MF's P(strong beats weak)). Routers transfer to pairs they were
not trained on (RouteLLM, Sec. 5.3): `router_pair=(S, W)` names which of the router's own models stand in for
the caller's strong and weak. A router with a pair-free score (the difficulty head) needs no pair at all.
Otherwise the error names the models the router knows.

Routing modes (exactly one; none = `cost_weight` at the router's default):
* strong_share: the threshold calibrated for that share on the user's prompts (calibration.json; see
  routerforge/eval/thresholds.py), ties split by prompt hash;
* threshold: strong iff score >= threshold;
* cost_weight λ: argmax over the router's models of predicted quality − λ·predicted cost (USD per prompt),
  ties to the cheaper model (routerforge.eval.multi.route_by_cost_weight). Needs a router that predicts
  costs when λ > 0 (the cluster router).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from routerforge.errors import CheckpointError, RouterForgeError
from routerforge.eval.thresholds import (
    CALIBRATION_FILE,
    find_calibration,
    read_calibration,
    strong_mask,
    threshold_row,
)
from routerforge.models.family_scorer import FamilyScorer
from routerforge.registry.families import load_family
from routerforge.registry.load import fetch_checkpoint, is_hub_id, verify_checkpoint
from routerforge.registry.publish import PublishResult, publish_checkpoint


class RoutingError(RouterForgeError):
    """A routing request the router cannot serve (unknown pair, missing calibration, bad arguments)."""


@dataclass(frozen=True)
class ScoreSpec:
    """Which score `score`/`route` computes: names returned, kind, and the router's models used."""

    strong: str | None
    weak: str | None
    kind: str  # "pair" | "pair_free"
    router_pair: tuple[str, str] | None  # the router's own models scored (None: the pair itself, or pair-free)
    rule: str

    def scoring_pair(self) -> tuple[str, str]:
        return self.router_pair or (self.strong, self.weak)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "router_pair": list(self.router_pair) if self.router_pair else None,
                "rule": self.rule}


def _as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise RoutingError(f"prompts[{i}] is {type(prompt).__name__}; pass text (a str per prompt).")
    return prompts


@dataclass(eq=False)
class Router:
    path: Path
    manifest: dict
    config: dict
    scorer: FamilyScorer
    calibration: dict
    batch_size: int = 64
    timing: dict = field(default_factory=lambda: {"encode_s": 0.0, "head_s": 0.0, "batches": 0, "prompts": 0})

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, revision: str | None = None, *, batch_size: int = 64,
                        device: str = "cpu", embedding_cache_dir: str | Path | None = None,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False) -> Router:
        """Load and verify a checkpoint: a local directory (or checkpoints/<router> via LATEST) or a Hub id.

        revision: Hub tag/branch/commit, Hub ids only; default main, the newest published version; published
        versions are tags v<version>.
        token, cache_dir, local_files_only: as huggingface_hub's (token default: HF_TOKEN or `hf auth login`;
        cache_dir default: the HF cache; local_files_only: no network, the cached snapshot only).
        batch_size: prompts per encoder call (prompts).
        embedding_cache_dir: reuse/keep prompt embeddings in this on-disk cache (embedding routers); default none.
        """
        if batch_size < 1:
            raise RoutingError(f"batch_size must be >= 1 (prompts), got {batch_size}")
        directory = fetch_checkpoint(path_or_hub_id, revision, token=token, cache_dir=cache_dir,
                                     local_files_only=local_files_only)
        expected_version = revision[1:] if (revision and is_hub_id(path_or_hub_id) and revision.startswith("v")
                                            and revision[1:2].isdigit()) else None
        manifest, config = verify_checkpoint(directory, expected_version=expected_version)
        calibration = read_calibration(directory, CALIBRATION_FILE in manifest["files"])
        scorer = load_family(directory, manifest, config, batch_size=batch_size, device=device,
                             embedding_cache_dir=str(embedding_cache_dir) if embedding_cache_dir else None)
        return cls(Path(directory), manifest, config, scorer, calibration, batch_size)

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool = False, force: bool = False,
                    branch: str | None = None, endpoint: str | None = None) -> PublishResult:
        """Publish this checkpoint to the Hub as `routerforge publish` does (routerforge/registry/publish.py):
        tag v<version>, verified by sha256, and main when it is the newest version.

        token: write token; default huggingface_hub's lookup (HF_TOKEN, then `hf auth login`), never stored.
        private: create the repo private. force: publish even if the promotion gate finds it worse.
        branch: upload branch (default release-<version>). endpoint: Hub URL (default HF_ENDPOINT).
        """
        return publish_checkpoint(self.path, repo_id, token=token, private=private, force=force, branch=branch,
                                  endpoint=endpoint)

    @property
    def name(self) -> str:
        return str(self.manifest.get("router") or self.manifest.get("recipe") or self.scorer.family)

    @property
    def version(self) -> str | None:
        return self.manifest.get("version")

    @property
    def family(self) -> str:
        """The router family (mf, cluster, knn, ...; manifest.json's `router_type`)."""
        return self.scorer.family

    @property
    def router_type(self) -> str:
        """The family under the name manifest.json stores it by (`family`)."""
        return self.scorer.family

    @property
    def models(self) -> tuple[str, ...]:
        """The models `route(cost_weight=...)` chooses from (columns of `predict(...)["quality"]`)."""
        return self.scorer.models

    def __repr__(self) -> str:
        return (f"Router({self.name} {self.version or '(unversioned)'}, {self.family}, "
                f"{len(self.manifest['model_pool'])} models, {self.path})")

    # ------------------------------------------------------------------------------------------------ scoring
    def predict(self, prompts: str | Sequence[str]) -> dict[str, np.ndarray]:
        """The family's raw outputs for every prompt (e.g. quality [n, models], cost, difficulty), batched."""
        prompts = _as_prompt_list(prompts)
        # Longest first, so each batch pads to similar lengths (sentence-transformers' encode does the same);
        # rows are put back in the caller's order at the end.
        order = (sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i)) if len(prompts) > self.batch_size
                 else list(range(len(prompts))))
        chunks: list[dict[str, np.ndarray]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = [prompts[i] for i in order[start:start + self.batch_size]]
            t0 = time.perf_counter()
            features = self.scorer.encode(batch)
            t1 = time.perf_counter()
            chunks.append(self.scorer.head(features))
            t2 = time.perf_counter()
            self.timing["encode_s"] += t1 - t0
            self.timing["head_s"] += t2 - t1
            self.timing["batches"] += 1
            self.timing["prompts"] += len(batch)
        if not chunks:
            return {}
        if len(chunks) == 1:
            return chunks[0]
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        return {key: np.concatenate([c[key] for c in chunks])[inverse] for key in chunks[0]}

    def score_spec(self, strong: str | None = None, weak: str | None = None,
                   router_pair: Sequence[str] | None = None) -> ScoreSpec:
        """Which binary score answers "strong or weak?" for this request (module docstring); no model call."""
        scorer = self.scorer
        if router_pair is not None:
            router_pair = tuple(router_pair)
            if len(router_pair) != 2 or router_pair[0] == router_pair[1]:
                raise RoutingError(f"router_pair must name two different models of the router, got {router_pair}.")
        if strong is None and weak is None and router_pair is None:
            entries = self.calibration.get("calibrations", [])
            if len(entries) == 1:
                return self._spec_of(entries[0])
            if scorer.pair_free:
                return ScoreSpec(None, None, "pair_free", None, scorer.pair_free_rule or scorer.pair_free)
            raise RoutingError(f"{self.name}: name the strong and weak model; this router scores pairs of "
                               f"{', '.join(scorer.pair_models)}.")
        if strong is None and weak is None:
            strong, weak = router_pair
        if strong is None or weak is None or strong == weak:
            raise RoutingError(f"name two different models as strong and weak (got strong={strong!r}, weak={weak!r}).")
        scoring = router_pair or (strong, weak)
        rule = scorer.pair_rule(*scoring)
        if rule is not None:
            return ScoreSpec(strong, weak, "pair", router_pair, rule)
        if router_pair is None and scorer.pair_free:
            return ScoreSpec(strong, weak, "pair_free", None, scorer.pair_free_rule or scorer.pair_free)
        asked = f"router_pair ({scoring[0]}, {scoring[1]})" if router_pair else f"the pair ({strong}, {weak})"
        raise RoutingError(f"{self.name} ({self.family}) cannot score {asked}: it knows "
                           f"{', '.join(scorer.pair_models) or 'no model pair'}. Pass router_pair / --router-pair "
                           f"STRONG WEAK naming two of its models to stand in for the strong and weak model.")

    def scores_for(self, prompts: str | Sequence[str], spec: ScoreSpec) -> np.ndarray:
        outputs = self.predict(prompts)
        if not outputs:
            return np.zeros(0)
        if spec.kind == "pair_free":
            return np.asarray(outputs[self.scorer.pair_free], dtype=np.float64)
        return np.asarray(self.scorer.pair_score(outputs, *spec.scoring_pair()), dtype=np.float64)

    def score(self, prompts: str | Sequence[str], strong: str | None = None, weak: str | None = None,
              router_pair: Sequence[str] | None = None) -> np.ndarray:
        """Per-prompt binary score (float64 [n]); higher = more in need of `strong` over `weak`."""
        return self.scores_for(prompts, self.score_spec(strong, weak, router_pair))

    # ------------------------------------------------------------------------------------------------ routing
    def route(self, prompts: str | Sequence[str], *, strong_share: float | None = None,
              threshold: float | None = None, cost_weight: float | None = None, strong: str | None = None,
              weak: str | None = None, router_pair: Sequence[str] | None = None) -> list[str]:
        """The model name chosen for each prompt (a list, also for a single prompt string)."""
        return self.route_with_scores(prompts, strong_share=strong_share, threshold=threshold,
                                      cost_weight=cost_weight, strong=strong, weak=weak, router_pair=router_pair)[0]

    def route_with_scores(self, prompts: str | Sequence[str], *, strong_share: float | None = None,
                          threshold: float | None = None, cost_weight: float | None = None,
                          strong: str | None = None, weak: str | None = None,
                          router_pair: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(model names, the score behind each choice): the binary score, or the chosen model's utility."""
        prompts = _as_prompt_list(prompts)
        modes = [name for name, value in (("strong_share", strong_share), ("threshold", threshold),
                                          ("cost_weight", cost_weight)) if value is not None]
        if len(modes) > 1:
            raise RoutingError(f"pass one of strong_share, threshold or cost_weight, not {' and '.join(modes)}.")
        if strong_share is not None:
            entry = find_calibration(self.calibration, strong, weak, str(self.path))
            spec = self._spec_of(entry)
            if router_pair is not None and tuple(router_pair) != spec.router_pair:
                raise RoutingError(f"{self.path}: calibrated with router_pair {spec.router_pair}, not "
                                   f"{tuple(router_pair)}; re-run `routerforge calibrate` with that pair.")
            row = threshold_row(entry, float(strong_share), str(self.path))
            scores = self.scores_for(prompts, spec)
            routed = strong_mask(scores, prompts, row["threshold"], row["tie_fraction"],
                                 self.calibration.get("tie_tolerance", 1e-6))
            return [spec.strong if s else spec.weak for s in routed], scores
        if threshold is not None:
            spec = self.score_spec(strong, weak, router_pair)
            if spec.strong is None:
                raise RoutingError("threshold routing needs the strong and weak model names (strong=..., weak=...).")
            scores = self.scores_for(prompts, spec)
            return [spec.strong if s >= float(threshold) else spec.weak for s in scores], scores
        return self._route_by_cost(prompts, self.scorer.default_cost_weight if cost_weight is None else cost_weight)

    def _route_by_cost(self, prompts: list[str], cost_weight: float) -> tuple[list[str], np.ndarray]:
        from routerforge.eval.multi import route_by_cost_weight

        if not self.scorer.has_quality:
            raise RoutingError(f"{self.name} predicts no per-model quality; route with strong_share= or threshold= "
                               f"and name strong/weak.")
        if not (cost_weight >= 0):
            raise RoutingError(f"cost_weight must be >= 0 (quality per USD), got {cost_weight}.")
        if cost_weight > 0 and not self.scorer.has_cost:
            raise RoutingError(f"{self.name} ({self.family}) predicts no cost, so cost_weight={cost_weight} "
                               f"cannot trade quality for cost; use strong_share= or threshold=, or cost_weight=0.")
        if not prompts:
            return [], np.zeros(0)
        outputs = self.predict(prompts)
        quality = outputs["quality"]
        cost = outputs["cost"] if self.scorer.has_cost else np.zeros_like(quality)
        choice = route_by_cost_weight(quality, cost, [float(cost_weight)])[0]
        rows = np.arange(len(prompts))
        utility = quality[rows, choice] - float(cost_weight) * cost[rows, choice] if np.isfinite(cost_weight) \
            else -cost[rows, choice]
        return [self.scorer.models[j] for j in choice], utility

    def _spec_of(self, entry: dict) -> ScoreSpec:
        score = entry["score"]
        pair = tuple(score["router_pair"]) if score.get("router_pair") else None
        if score["kind"] == "pair" and self.scorer.pair_rule(*(pair or (entry["strong"], entry["weak"]))) is None:
            raise CheckpointError(f"{self.path / CALIBRATION_FILE}: calibrated for a pair this router cannot score "
                                  f"({pair or (entry['strong'], entry['weak'])}); re-run `routerforge calibrate`.")
        return ScoreSpec(entry["strong"], entry["weak"], score["kind"], pair, score.get("rule", ""))
