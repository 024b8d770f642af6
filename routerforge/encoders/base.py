"""The `Encoder` protocol every text-embedding backend implements, and the encoder error.

An encoder turns one batch of texts into a float32 matrix. It does no caching, no de-duplication
and no batching of its own: `routerforge.encoders.embed_texts` does those once for every backend.

Identity: `(encoder_id, revision, settings)` names the function text -> vector exactly. It is what
the embedding cache is keyed by and what a dataset/checkpoint manifest records, so two runs that
agree on it can share vectors, and a run that does not is never served someone else's vectors.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from routerforge.errors import RouterForgeError


class EncoderError(RouterForgeError):
    """An encoder cannot be built or used: unknown model, missing env var, endpoint failure."""


@runtime_checkable
class Encoder(Protocol):
    """One text-embedding backend (sentence-transformers, transformers, OpenAI-compatible API)."""

    #: backend and model, e.g. "sentence_transformers:sentence-transformers/all-MiniLM-L6-v2"
    encoder_id: str
    #: resolved model revision: a Hub commit sha, or "sha256:<hex>" of a local model directory's files
    revision: str | None
    #: the options that change the vectors for the same weights (e.g. "max_length=256;normalize=1")
    settings: str
    #: embedding width (floats per vector)
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed one batch: float32 array [len(texts), dim], row i = texts[i]. No caching."""
        ...


def l2_normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as torch.nn.functional.normalize does."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
