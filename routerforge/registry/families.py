"""One plain loader per router family: checkpoint directory -> `FamilyScorer` (what `Router` calls).

`FAMILY_LOADERS[manifest["router_type"]](directory, manifest, config, ...)` builds the family's module from
safetensors + JSON (never pickles) and returns closures in a `FamilyScorer`:

    encode(prompts) -> features        the encoder: prompt embeddings (MF, cluster) or the backbone's pooled
                                       state (difficulty); by far the most expensive step
    head(features) -> {name: array}    the router's own computation on those features
    models                             the columns of `quality` / `cost`, in order
    pair_rule(strong, weak)            how the family scores "does this prompt need `strong` over `weak`"
                                       (a sentence), or None when it cannot score that pair
    pair_score(outputs, strong, weak)  that score per prompt, higher = more in need of the strong model
    pair_free                          the key of a score that needs no pair (difficulty), or None

What each family predicts (scales differ; metrics only use the order of a score):

* mf (RouteLLM matrix factorisation): quality = δ(m, q) per model; pair score = P(strong beats weak | q)
  = σ(δ(strong, q) − δ(weak, q)), RouteLLM's router score.
* cluster (UniRoute): quality / cost = the nearest cluster's mean score / mean cost (USD per prompt) per model;
  pair score = quality[strong] − quality[weak], the expected score gained by calling the strong model.
* probe (hidden-state probe): no per-model quality; the pair-free score 1 − P(weak model correct).
* difficulty (BEST-Route heads): with candidate heads, quality = P(candidate's answer >= reference − t) for
  each single-sample candidate and 1 for the reference model itself (it is the bar); the pair score for
  (reference, weak) is 1 − P(weak's answer >= reference − t) (Hybrid LLM / BEST-Route's routing score).
  With win heads, quality = per-model strengths and the pair score is σ(s_strong − s_weak). The difficulty
  head gives a pair-free score (predicted share of the pool that fails the prompt).

Embedding routers re-embed prompts with the encoder recorded in the manifest (backend, model, max_length,
normalize, as data prep wrote it) and refuse an encoder whose id, revision or settings differ on this
machine: another revision of the same model id gives other vectors, silently wrong routes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routerforge.errors import CheckpointError
from routerforge.io.names import WEIGHTS_FILE


@dataclass(frozen=True)
class FamilyScorer:
    router_type: str
    models: tuple[str, ...]
    encode: Callable[[list[str]], Any]
    head: Callable[[Any], dict[str, np.ndarray]]
    pair_rule: Callable[[str, str], str | None]
    pair_score: Callable[[dict[str, np.ndarray], str, str], np.ndarray]
    pair_models: tuple[str, ...]
    has_quality: bool
    has_cost: bool
    pair_free: str | None = None
    pair_free_rule: str | None = None
    default_cost_weight: float = 0.0
    encoder_id: str | None = None


# ---------------------------------------------------------------------------------------------------- encoders
def encoder_config_from_manifest(block: dict, batch_size: int):
    """The EncoderConfig that embeds prompts as the router's training data did (data prep's encoder block)."""
    from routerforge.data.config import EncoderConfig
    from routerforge.encoders.model_source import resolve_model_source

    missing = [key for key in ("backend", "model") if not block.get(key)]
    if missing:
        raise CheckpointError(f"manifest encoder block {block.get('id')!r} lacks {', '.join(missing)}: it was not "
                              f"written by `routerforge prep`, so prompts cannot be embedded the same way. Re-train "
                              f"on a dataset prepared by `routerforge prep`.")
    source = resolve_model_source(block["model"], None)
    # A Hub model is pinned to the recorded commit; a local/packaged one is checked by its files' fingerprint.
    revision = None if source.is_local else block.get("revision")
    try:
        return EncoderConfig(backend=block["backend"], model=block["model"], revision=revision,
                             batch_size=batch_size, max_length=int(block.get("max_length", 256)),
                             normalize=bool(block.get("normalize", True)))
    except ValueError as err:
        raise CheckpointError(f"manifest encoder block: {err}") from None


def build_prompt_embedder(block: dict, expected_dim: int, *, batch_size: int, device: str,
                          embedding_cache_dir: str | None) -> tuple[Callable[[list[str]], np.ndarray], str]:
    """(prompts -> float32 [n, dim], encoder id) after checking this machine's encoder is the manifest's."""
    from routerforge.encoders import build_encoder, embed_texts

    cfg = encoder_config_from_manifest(block, batch_size)
    if embedding_cache_dir is not None:
        from dataclasses import replace

        cfg = replace(cfg, cache_dir=str(embedding_cache_dir))
    encoder = build_encoder(cfg, device=device)
    recorded = {key: block.get(key) for key in ("id", "revision", "settings")}
    found = {"id": encoder.encoder_id, "revision": encoder.revision, "settings": encoder.settings}
    differ = [key for key, value in recorded.items() if value is not None and value != found[key]]
    if differ:
        detail = "; ".join(f"{key} {recorded[key]!r} in the manifest, {found[key]!r} here" for key in differ)
        raise CheckpointError(f"another encoder: the router was trained on {recorded['id']} but this machine's "
                              f"encoder differs ({detail}); install the same model files (or revision).")

    def embed(prompts: list[str]) -> np.ndarray:
        if embedding_cache_dir is not None:
            matrix = embed_texts(list(prompts), cfg, encoder=encoder)
        else:
            matrix = np.asarray(encoder.encode(list(prompts)), dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != expected_dim:
            raise CheckpointError(f"another encoder: {encoder.encoder_id} gives vectors of width {matrix.shape[-1]}, "
                                  f"the router expects {expected_dim}.")
        return matrix

    return embed, encoder.encoder_id


def _load_weights(directory: Path) -> dict:
    """The tensors of model.safetensors: a file that is not safetensors (a pickle renamed, even with its
    manifest sha256 rewritten to match) is refused unread with UnsafeWeightsError, never unpickled."""
    from routerforge.train.final_export import load_export_weights

    return load_export_weights(directory, WEIGHTS_FILE)


def _index_of(models: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(models)}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------------------- families
def load_mf(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
            embedding_cache_dir: str | None = None) -> FamilyScorer:
    import torch

    from routerforge.models.mf import MFModel

    models = tuple(config["model_pool"])
    if int(config["num_models"]) != len(models):
        raise CheckpointError(f"{directory / 'config.json'}: num_models {config['num_models']} but {len(models)} "
                              f"models in the pool: another model pool; re-export.")
    model = MFModel.from_config(config)
    try:
        model.load_state_dict(_load_weights(directory))
    except RuntimeError as err:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: weights do not fit config.json "
                              f"({str(err).splitlines()[0]}); re-export.") from None
    model.eval().to(device)
    embed, encoder_id = build_prompt_embedder(manifest["encoder"], int(config["prompt_embedding_dim"]),
                                              batch_size=batch_size, device=device,
                                              embedding_cache_dir=embedding_cache_dir)
    index = _index_of(models)

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
        return _sigmoid(delta[:, index[strong]] - delta[:, index[weak]])

    return FamilyScorer("mf", models, embed, head, pair_rule, pair_score, models, has_quality=True,
                        has_cost=False, encoder_id=encoder_id)


def load_cluster(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                 embedding_cache_dir: str | None = None) -> FamilyScorer:
    import torch

    from routerforge.models.cluster import ClusterRouter

    models = tuple(config["model_pool"])
    try:
        router = ClusterRouter.from_state_dict(_load_weights(directory))
    except ValueError as err:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: not a cluster router ({err}); re-export.") from None
    if router.num_models != len(models):
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: table has {router.num_models} model columns but the pool "
                              f"lists {len(models)}: another model pool; re-export.")
    router.to(device)
    embed, encoder_id = build_prompt_embedder(manifest["encoder"], router.prompt_embedding_dim,
                                              batch_size=batch_size, device=device,
                                              embedding_cache_dir=embedding_cache_dir)
    index = _index_of(models)

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


def load_difficulty(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                    embedding_cache_dir: str | None = None) -> FamilyScorer:
    import torch

    from routerforge.errors import ConfigError
    from routerforge.models.difficulty import load_router, pool_hidden_states

    try:
        router, tokenizer, config = load_router(directory)
    except (ConfigError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{directory}: the difficulty router does not load ({str(err).splitlines()[0]}); "
                              f"re-export.") from None
    router.to(device).eval()
    pool = tuple(config["model_pool"])
    pool_index = _index_of(pool)
    reference = config.get("reference_model")
    heads = router.heads
    single = [(c, cand["model"]) for c, cand in enumerate(config.get("candidates", [])) if cand["n_samples"] == 1]
    candidate_column = {model: c for c, model in single}
    if heads.candidates is not None and reference is not None:
        models = (reference, *[model for _, model in single])
    elif heads.win is not None:
        models = pool
    else:
        models = ()
    max_tokens = int(config["max_seq_tokens"])
    if tokenizer.pad_token_id is None:
        raise CheckpointError(f"{directory}/tokenizer: the tokenizer has no padding token; re-export.")

    def encode(prompts: list[str]):
        # As in training (difficulty_data.build_examples + collate_examples): truncate, pad on the right.
        batch = tokenizer(list(prompts), truncation=True, max_length=max_tokens, padding=True,
                          padding_side="right", return_tensors="pt")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.inference_mode():
            hidden = router.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            return pool_hidden_states(hidden, mask, router.pooling)

    # The heads are a few Linear layers behind dropout (identity at inference): applied in numpy, they cost
    # microseconds per batch instead of torch's per-op dispatch, which at batch 1 rivals a tiny backbone.
    def as_numpy(layer):
        if layer is None:
            return None
        return (layer.weight.detach().double().cpu().numpy().T.copy(), layer.bias.detach().double().cpu().numpy())

    candidates_w, difficulty_w, win_w = as_numpy(heads.candidates), as_numpy(heads.difficulty), as_numpy(heads.win)

    def head(pooled) -> dict[str, np.ndarray]:
        x = pooled.double().cpu().numpy()
        result: dict[str, np.ndarray] = {}
        if candidates_w is not None:
            match = _sigmoid(x @ candidates_w[0] + candidates_w[1])
            result["candidate_match"] = match
            if reference is not None:
                cols = [np.ones(len(match))] + [match[:, c] for c, _ in single]
                result["quality"] = np.stack(cols, axis=1)
        if difficulty_w is not None:
            result["difficulty"] = _sigmoid((x @ difficulty_w[0] + difficulty_w[1])[:, 0])
        if win_w is not None:
            result["strengths"] = x @ win_w[0] + win_w[1]
            if "quality" not in result:
                result["quality"] = result["strengths"]
        return result

    def pair_rule(strong: str, weak: str) -> str | None:
        if heads.candidates is not None and strong == reference and weak in candidate_column:
            return (f"1 - P({weak}'s answer >= {reference}'s - {config.get('tolerance', 0.0)}) (BEST-Route candidate "
                    f"head)")
        if heads.win is not None and strong in pool_index and weak in pool_index:
            return f"P({strong} beats {weak} | prompt) = sigmoid(s_strong - s_weak) (win head)"
        return None

    def pair_score(outputs: dict[str, np.ndarray], strong: str, weak: str) -> np.ndarray:
        if heads.candidates is not None and strong == reference and weak in candidate_column:
            return 1.0 - outputs["candidate_match"][:, candidate_column[weak]]
        strengths = outputs["strengths"]
        return _sigmoid(strengths[:, pool_index[strong]] - strengths[:, pool_index[weak]])

    pair_models = tuple(dict.fromkeys(
        ([reference, *candidate_column] if heads.candidates is not None and reference else [])
        + (list(pool) if heads.win is not None else [])))
    return FamilyScorer(
        "difficulty", models, encode, head, pair_rule, pair_score, pair_models,
        has_quality=bool(models), has_cost=False,
        pair_free="difficulty" if heads.difficulty is not None else None,
        pair_free_rule=("predicted difficulty: 1 - mean score of the pool on the prompt (difficulty head)"
                        if heads.difficulty is not None else None),
        encoder_id=str((config.get("backbone") or {}).get("name")),
    )


def load_probe(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
               embedding_cache_dir: str | None = None) -> FamilyScorer:
    """A hidden-state probe (training/train_probe.py): pair-free score 1 − P(the weak model answers correctly).

    The encoder is the LM the probe reads (its layer and pooling, routerforge.models.probe.ProbeRouter, which
    refuses another LM revision); the head is the probe with its temperature. The probe was trained for one
    weak model; used for another pair it is a stand-in, like any pair-free score.
    """
    from routerforge.models.probe import load_probe_router

    try:
        probe = load_probe_router(directory)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{directory}: the probe router does not load ({str(err).splitlines()[0]}); "
                              f"re-export.") from None
    lm = config.get("lm") or {}
    rule = (f"1 - P({probe.weak_model} answers correctly), probe on {lm.get('id')} layer {probe.layer} "
            f"({probe.pooling} pooling), temperature {probe.temperature:.3g}")

    def head(features: np.ndarray) -> dict[str, np.ndarray]:
        p_correct = probe.p_correct_from_features(features)
        return {"p_correct": p_correct, "escalate": 1.0 - p_correct}

    return FamilyScorer("probe", (), probe.features, head, pair_rule=lambda strong, weak: None,
                        pair_score=lambda outputs, strong, weak: outputs["escalate"], pair_models=(),
                        has_quality=False, has_cost=False, pair_free="escalate", pair_free_rule=rule,
                        encoder_id=str(lm.get("id")))


def load_knn(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
             embedding_cache_dir: str | None = None) -> FamilyScorer:
    """A kNN router (training/train_knn.py): quality = each model's neighbour-mean score; pair score =
    quality[strong] - quality[weak], the expected score gained by calling the strong model."""
    from routerforge.models.knn import KNNRouter, KNNSettings

    models = tuple(config["model_pool"])
    try:
        router = KNNRouter.from_state_dict(_load_weights(directory))
        settings = KNNSettings(int(config["k"]), float(config["prior_strength"]), str(config["weighting"]),
                               float(config["temperature"]))
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{directory}: not a kNN router ({err}); re-export.") from None
    if router.num_models != len(models):
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: score table has {router.num_models} model columns but "
                              f"the pool lists {len(models)}: another model pool; re-export.")
    embed, encoder_id = build_prompt_embedder(manifest["encoder"], router.prompt_embedding_dim,
                                              batch_size=batch_size, device=device,
                                              embedding_cache_dir=embedding_cache_dir)
    return _expected_gain_scorer(
        "knn", models, embed, lambda embeddings: router.predict(np.asarray(embeddings, dtype=np.float32), settings),
        f"mean score of the {settings.k} nearest training prompts (kNN)", encoder_id)


def load_linear(directory: Path, manifest: dict, config: dict, *, batch_size: int = 64, device: str = "cpu",
                embedding_cache_dir: str | None = None) -> FamilyScorer:
    """A linear router (training/train_linear.py): quality = P(each model answers well) from its logistic head;
    pair score = P(strong) - P(weak)."""
    from routerforge.models.linear import LinearRouter

    models = tuple(config["model_pool"])
    try:
        router = LinearRouter.from_state_dict(_load_weights(directory))
    except ValueError as err:
        raise CheckpointError(f"{directory}: not a linear router ({err}); re-export.") from None
    if router.num_models != len(models):
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: {router.num_models} heads but the pool lists "
                              f"{len(models)} models: another model pool; re-export.")
    embed, encoder_id = build_prompt_embedder(manifest["encoder"], router.prompt_embedding_dim,
                                              batch_size=batch_size, device=device,
                                              embedding_cache_dir=embedding_cache_dir)
    return _expected_gain_scorer("linear", models, embed, router.predict,
                                 "P(answers well) from a logistic head on the prompt embedding", encoder_id)


def _expected_gain_scorer(router_type: str, models: tuple[str, ...], embed, predict_quality, quality_text: str,
                          encoder_id: str) -> FamilyScorer:
    """A family that predicts every model's quality: pair score = quality[strong] - quality[weak]."""
    index = _index_of(models)

    def head(embeddings: np.ndarray) -> dict[str, np.ndarray]:
        return {"quality": predict_quality(embeddings)}

    def pair_rule(strong: str, weak: str) -> str | None:
        if strong in index and weak in index:
            return f"quality[{strong}] - quality[{weak}], quality = {quality_text}: the expected score gained"
        return None

    def pair_score(outputs: dict[str, np.ndarray], strong: str, weak: str) -> np.ndarray:
        quality = outputs["quality"]
        return quality[:, index[strong]] - quality[:, index[weak]]

    return FamilyScorer(router_type, models, embed, head, pair_rule, pair_score, models, has_quality=True,
                        has_cost=False, encoder_id=encoder_id)


FAMILY_LOADERS: dict[str, Callable[..., FamilyScorer]] = {
    "linear": load_linear,
    "mf": load_mf,
    "knn": load_knn,
    "cluster": load_cluster,
    "difficulty": load_difficulty,
    "probe": load_probe,
}


def load_family(directory: Path, manifest: dict, config: dict, **options) -> FamilyScorer:
    router_type = manifest["router_type"]
    loader = FAMILY_LOADERS.get(router_type)
    if loader is None:
        raise CheckpointError(f"{directory}: router_type {router_type!r} has no loader in this RouterForge (known: "
                              f"{', '.join(sorted(FAMILY_LOADERS))}); upgrade routerforge.")
    return loader(Path(directory), manifest, config, **options)
