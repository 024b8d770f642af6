"""Text embeddings for prompts: pluggable encoders behind one cached, batched, multi-process `embed_texts`.

    from routerforge.encoders import embed_texts
    matrix = embed_texts(prompts, cfg.encoder)            # float32 [len(prompts), dim], row i = prompts[i]

What `embed_texts` does, in order:
  1. de-duplicates the texts (each distinct text is embedded once);
  2. looks every text up in the on-disk cache (`encoder.cache_dir`), keyed by
     (encoder id, revision, settings, text sha256), so a re-run embeds nothing twice;
  3. sorts the misses by length (longest first) and cuts them into `encoder.batch_size` batches, so
     a batch pads to similar lengths (the trick sentence-transformers' own `encode` uses);
  4. with an `accelerate.Accelerator` of several processes, hands batch b to rank b % world_size,
     gathers every rank's rows to every rank and lets rank 0 write them to the cache. The batches
     are cut the same way whatever the world size, so each text is embedded inside the same batch
     (same padding) as in a one-process run and the result is the same matrix;
  5. writes new rows to the cache every few batches, so a killed run keeps what it finished.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from routerforge.data.config import EncoderConfig
from routerforge.encoders.base import Encoder, EncoderError
from routerforge.encoders.cache import EmbeddingCache, cache_key

logger = logging.getLogger(__name__)

__all__ = ["Encoder", "EncoderError", "build_encoder", "embed_texts", "encoder_manifest",
           "length_sorted_batches"]

# Batches each rank encodes between two cache writes (and, with several processes, two gathers).
BATCHES_PER_FLUSH = 8


def build_encoder(cfg: EncoderConfig, device: str | None = None) -> Encoder:
    """The encoder `cfg` describes; local models load lazily (on the first `encode` or `dim`)."""
    if cfg.backend == "sentence_transformers":
        from routerforge.encoders.sentence_transformers_backend import SentenceTransformersEncoder

        return SentenceTransformersEncoder(cfg, device=device)
    if cfg.backend == "hf":
        from routerforge.encoders.hf_backend import HFMeanPoolingEncoder

        return HFMeanPoolingEncoder(cfg, device=device)
    if cfg.backend == "openai":
        from routerforge.encoders.openai_backend import OpenAIEmbeddingsEncoder

        return OpenAIEmbeddingsEncoder(cfg)
    raise EncoderError(f"encoder.backend '{cfg.backend}' is unknown; use sentence_transformers, hf or openai.")


def encoder_manifest(encoder: Encoder) -> dict:
    """What a dataset or checkpoint manifest records about its encoder (`id`, `revision`, `settings`, `dim`)."""
    return {"id": encoder.encoder_id, "revision": encoder.revision, "settings": encoder.settings,
            "dim": int(encoder.dim)}


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices into `texts`, longest first (ties by position), cut into batches of `batch_size`.

    Character length stands in for token length: it is free and orders batches almost as well.
    """
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise EncoderError("embed_texts: pass a list of texts, not a single string.")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise EncoderError(f"embed_texts: texts[{position}] is {type(text).__name__}, expected str; "
                               "convert chat turns to text before embedding.")


def _avoid_cpu_oversubscription(accelerator) -> None:
    """Several CPU processes on one machine: cap torch threads so they sum to at most the cores.

    accelerate launch and torchrun set OMP_NUM_THREADS for their workers; this only acts when a
    process was started some other way with torch's default (one thread per core each).
    """
    import torch

    if accelerator.device.type != "cpu":
        return
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    cores = os.cpu_count() or 1
    if torch.get_num_threads() * local_processes > cores:
        torch.set_num_threads(max(1, cores // local_processes))


def _validated(batch_matrix: np.ndarray, n_rows: int, dim: int | None, encoder_id: str) -> np.ndarray:
    matrix = np.asarray(batch_matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != n_rows or (dim is not None and matrix.shape[1] != dim):
        raise EncoderError(f"encoder {encoder_id} returned an array of shape {matrix.shape} for {n_rows} texts "
                           f"(expected width {dim}).")
    if not np.isfinite(matrix).all():
        raise EncoderError(f"encoder {encoder_id} returned NaN or infinite values; nothing was cached. "
                           "Check the model (fp16 overflow?) or the endpoint.")
    return matrix


def embed_texts(texts: list[str], cfg: EncoderConfig, accelerator=None, progress: bool = False,
                encoder: Encoder | None = None) -> np.ndarray:
    """Embed `texts`: float32 [len(texts), dim], row i = texts[i], through the cache (see module docstring).

    `accelerator`: an `accelerate.Accelerator`; with several processes every rank must call this with
    the same texts, each encodes its share, and every rank gets the full, identical matrix.
    `encoder`: an already built encoder to reuse (default: `build_encoder(cfg)`); `cfg` still gives
    `batch_size` and `cache_dir`.
    """
    _check_texts(texts)
    distributed = accelerator is not None and accelerator.num_processes > 1
    rank = accelerator.process_index if distributed else 0
    world = accelerator.num_processes if distributed else 1
    is_main = rank == 0
    if encoder is None:
        encoder = build_encoder(cfg, device=str(accelerator.device) if accelerator is not None else None)
    if distributed:
        _avoid_cpu_oversubscription(accelerator)

    unique = list(dict.fromkeys(texts))
    keys = [cache_key(encoder.encoder_id, encoder.revision, encoder.settings, text) for text in unique]
    cache = EmbeddingCache(cfg.cache_dir)
    if distributed:
        # rank 0 creates the cache file alone (creating SQLite's WAL needs a moment of exclusive access)
        if is_main:
            cache.create()
        accelerator.wait_for_everyone()
    hits = cache.lookup(keys)
    misses = [position for position, key in enumerate(keys) if key not in hits]
    if distributed:
        # Every rank must split the same miss list; rank 0's view decides (another job may be adding rows).
        from accelerate.utils import broadcast_object_list, gather_object

        misses = broadcast_object_list([misses if is_main else None])[0]
        miss_set = set(misses)
        vanished = sum(1 for position, key in enumerate(keys) if position not in miss_set and key not in hits)
        if any(gather_object([vanished])):  # collective, so that every rank raises rather than one hanging
            raise EncoderError(f"embedding cache {cache.path}: rows rank 0 read were missing for another rank; "
                               "do not delete or move the cache during a run.")

    dim = next(iter(hits.values())).shape[0] if hits else None
    result = np.zeros((len(unique), dim), dtype=np.float32) if dim is not None else None
    if result is not None:
        for position, key in enumerate(keys):
            if key in hits:
                result[position] = hits[key]

    miss_texts = [unique[position] for position in misses]
    batches = length_sorted_batches(miss_texts, cfg.batch_size)
    logger.info("embedding %d texts (%d distinct): %d cached, %d to encode in %d batches over %d process(es)",
                len(texts), len(unique), len(unique) - len(misses), len(misses), len(batches), world)
    bar = None
    if progress and is_main and batches:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches), desc="embedding batches", unit="batch")
    step = BATCHES_PER_FLUSH * world
    for chunk_start in range(0, len(batches), step):
        chunk = list(enumerate(batches[chunk_start:chunk_start + step], start=chunk_start))
        mine, own_error = [], None
        for batch_number, batch in chunk:
            if batch_number % world != rank:
                continue
            try:
                matrix = _validated(encoder.encode([miss_texts[i] for i in batch]), len(batch), dim,
                                    encoder.encoder_id)
            except Exception as exc:
                if not distributed:
                    raise
                # The other ranks are about to wait in the gather: tell them, then fail everywhere.
                own_error = exc
                mine.append((batch_number, None, f"{type(exc).__name__}: {exc}"))
                break
            dim = matrix.shape[1]
            mine.append((batch_number, matrix, None))
        if distributed:
            done = gather_object(mine)  # every rank's (batch number, rows, error), on every rank
            if own_error is not None:
                raise own_error
            errors = [error for _, _, error in done if error is not None]
            if errors:
                raise EncoderError(f"embedding failed on another process: {errors[0]}")
        else:
            done = mine
        done.sort(key=lambda item: item[0])
        if result is None and done:
            dim = done[0][1].shape[1]
            result = np.zeros((len(unique), dim), dtype=np.float32)
        new_keys, new_rows = [], []
        for batch_number, matrix, _ in done:
            positions = [misses[i] for i in batches[batch_number]]
            _validated(matrix, len(positions), dim, encoder.encoder_id)
            result[positions] = matrix
            new_keys.extend(keys[p] for p in positions)
            new_rows.append(matrix)
        if is_main and new_rows:
            cache.store(new_keys, np.concatenate(new_rows))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if distributed:
        accelerator.wait_for_everyone()  # no rank returns before rank 0 has written the cache
    cache.close()

    if result is None:  # no texts at all
        return np.zeros((0, encoder.dim), dtype=np.float32)
    row_of = {text: position for position, text in enumerate(unique)}
    return result[[row_of[text] for text in texts]]
