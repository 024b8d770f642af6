"""Encoder backend: a sentence-transformers model (its own pooling / normalisation modules).

The model loads on first use, so a run whose texts are all in the embedding cache never loads it
(the packaged model's identity comes from fingerprinting its files, not from loading them).
"""

from __future__ import annotations

import numpy as np

from routerforge.data.config import EncoderConfig
from routerforge.encoders.base import EncoderError, l2_normalize_rows
from routerforge.encoders.model_source import (
    load_error,
    max_token_length,
    resolve_model_source,
    resolve_revision,
)


class SentenceTransformersEncoder:
    """`SentenceTransformer(model).encode` on one batch, with `encoder.max_length` and `encoder.normalize`."""

    def __init__(self, cfg: EncoderConfig, device: str | None = None) -> None:
        self._cfg = cfg
        self._source = resolve_model_source(cfg.model, cfg.revision)
        self._device = device
        self._model = None
        self._revision: str | None = None
        # Whether we L2-normalise after the model; models that end in a Normalize module already do.
        self._normalize_after = cfg.normalize
        self.encoder_id = f"sentence_transformers:{self._source.name}"
        self.settings = f"max_length={cfg.max_length};normalize={int(cfg.normalize)}"

    @property
    def revision(self) -> str:
        if self._revision is None:
            self._revision = resolve_revision(self._source, self._load)
        return self._revision

    @property
    def dim(self) -> int:
        dim = self._load().get_embedding_dimension()
        if not dim:
            raise EncoderError(f"encoder.model '{self._source.spec}': sentence-transformers reports no "
                               "embedding dimension for this model.")
        return int(dim)

    def _load(self):
        if self._model is not None:
            return self._model
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules.normalize import Normalize

        kwargs = {} if self._source.is_local else {"revision": self._source.requested_revision}
        try:
            model = SentenceTransformer(self._source.load_from, device=self._device,
                                        model_kwargs={"dtype": torch.float32}, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise load_error(self._source, exc) from None
        has_normalize = isinstance(model[-1], Normalize)
        if has_normalize and not self._cfg.normalize:
            del model[len(model) - 1]  # encoder.normalize=false: raw pooled vectors
        self._normalize_after = self._cfg.normalize and not has_normalize
        first = model[0]
        model.max_seq_length = max_token_length(
            self._cfg.max_length, getattr(first, "tokenizer", None),
            getattr(getattr(first, "auto_model", None), "config", None))
        model.eval()
        self._model = model
        return model

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        matrix = model.encode(list(texts), batch_size=len(texts), convert_to_numpy=True,
                              normalize_embeddings=False, show_progress_bar=False)
        matrix = np.asarray(matrix, dtype=np.float32)
        return l2_normalize_rows(matrix) if self._normalize_after else matrix
