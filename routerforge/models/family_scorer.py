"""What a router family gives `Router`: a `FamilyScorer` (closures over the loaded module), and the pieces
every family's loader shares (the manifest's prompt encoder, checked; the export's weights, checked).

Each model module defines `load_family_scorer(directory, manifest, config, *, batch_size, device,
embedding_cache_dir) -> FamilyScorer`; routerforge/registry/families.py registers it under the family's name.
A `FamilyScorer` holds:

    encode(prompts) -> features        the encoder: prompt embeddings (MF, cluster, kNN, linear) or the
                                       backbone's pooled state (difficulty); by far the most expensive step
    head(features) -> {name: array}    the router's own computation on those features
    models                             the columns of `quality` / `cost`, in order
    pair_rule(strong, weak)            how the family scores "does this prompt need `strong` over `weak`"
                                       (a sentence), or None when it cannot score that pair
    pair_score(outputs, strong, weak)  that score per prompt, higher = more in need of the strong model
    pair_free                          the key of a score that needs no pair (difficulty), or None

Scales differ between families; metrics only use the order of a score.

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
    family: str  # the family's registered name (`router_type` in manifest.json)
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


def check_pool_width(directory: Path, width: int, what: str, models: tuple[str, ...]) -> None:
    """CheckpointError unless the weights hold one `what` per model of config.json's pool: rows of another
    pool would be read as other models."""
    if width != len(models):
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: {what} for {width} models but the pool lists "
                              f"{len(models)}: another model pool; re-export.")


def index_of(models: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(models)}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def expected_gain_scorer(family: str, models: tuple[str, ...], embed, predict_quality, quality_text: str,
                         encoder_id: str) -> FamilyScorer:
    """A family that predicts every model's quality: pair score = quality[strong] - quality[weak]."""
    index = index_of(models)

    def head(embeddings: np.ndarray) -> dict[str, np.ndarray]:
        return {"quality": predict_quality(embeddings)}

    def pair_rule(strong: str, weak: str) -> str | None:
        if strong in index and weak in index:
            return f"quality[{strong}] - quality[{weak}], quality = {quality_text}: the expected score gained"
        return None

    def pair_score(outputs: dict[str, np.ndarray], strong: str, weak: str) -> np.ndarray:
        quality = outputs["quality"]
        return quality[:, index[strong]] - quality[:, index[weak]]

    return FamilyScorer(family, models, embed, head, pair_rule, pair_score, models, has_quality=True,
                        has_cost=False, encoder_id=encoder_id)
