"""Encoder backend: an OpenAI-compatible embeddings endpoint (OpenAI, Azure-style proxies, vLLM, TEI, ...).

POST {base}/embeddings with {"model": ..., "input": [...]} and `Authorization: Bearer <key>`; the
base URL and the key come only from environment variables (`encoder.api_base_env`,
`encoder.api_key_env`), never from config files. The key never appears in a log line or an error
message: server replies are scrubbed of it before they are shown.

Transient failures (HTTP 408, 429 and 5xx, connection errors, timeouts) are retried a bounded number of
times with exponential backoff, honouring `Retry-After` (routerforge/io/http_json.py's `post_json`);
anything else fails at once with one line.
"""

from __future__ import annotations

import os

import numpy as np

from routerforge.data.config import EncoderConfig
from routerforge.encoders.base import EncoderError, l2_normalize_rows
from routerforge.io.http_json import HTTPStatusError, NotJSONError, RetriesExhaustedError, post_json


class OpenAIEmbeddingsEncoder:
    """One POST per batch to an OpenAI-compatible /embeddings endpoint."""

    def __init__(self, cfg: EncoderConfig, *, timeout_s: float = 60.0, max_retries: int = 5,
                 backoff_s: float = 1.0) -> None:
        base = os.environ.get(cfg.api_base_env, "").strip()
        if not base:
            raise EncoderError(f"encoder.backend openai needs the endpoint's base URL in the environment variable "
                               f"{cfg.api_base_env} (encoder.api_base_env), e.g. export "
                               f"{cfg.api_base_env}=https://api.openai.com/v1")
        key = os.environ.get(cfg.api_key_env, "")
        if not key.strip():
            raise EncoderError(f"encoder.backend openai needs an API key in the environment variable "
                               f"{cfg.api_key_env} (encoder.api_key_env); set it (any non-empty value for a "
                               "server without auth).")
        if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("need max_retries >= 0, timeout_s > 0 and backoff_s >= 0")
        self._url = base.rstrip("/") + "/embeddings"
        self._key = key.strip()
        self._model_name = cfg.model
        self._normalize = cfg.normalize
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._session = None
        self._dim: int | None = None
        # The served model's version is not observable through the API: encoder.revision is what the
        # user declares (e.g. a snapshot date); it still separates cache entries.
        self.encoder_id = f"openai:{cfg.model}"
        self.revision = cfg.revision
        self.settings = f"normalize={int(cfg.normalize)}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.encode(["dimension probe"])  # the API does not say its width without embedding something
        return int(self._dim)

    def _post(self, texts: list[str]) -> dict:
        import requests

        if self._session is None:
            self._session = requests.Session()
        try:
            return post_json(self._url, {"model": self._model_name, "input": texts}, token=self._key,
                             session=self._session, timeout_s=self._timeout_s, max_retries=self._max_retries,
                             backoff_s=self._backoff_s)
        except NotJSONError:
            raise EncoderError(f"embeddings endpoint {self._url} answered 200 with a body that is not "
                               "JSON; check encoder.api_base_env points at an OpenAI-compatible "
                               "/v1 base URL.") from None
        except HTTPStatusError as exc:
            hint = (" Check the key in the environment variable named by encoder.api_key_env."
                    if exc.status in (401, 403) else "")
            raise EncoderError(f"embeddings endpoint {self._url} refused the request ({exc.problem}).{hint}") from None
        except RetriesExhaustedError as exc:
            raise EncoderError(f"embeddings endpoint {self._url} failed after {exc.attempts} attempts "
                               f"(last: {exc.problem}); check the server, or retry later.") from None

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        reply = self._post(list(texts))
        rows = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(rows, list) or len(rows) != len(texts):
            got = len(rows) if isinstance(rows, list) else "no"
            raise EncoderError(f"embeddings endpoint {self._url} returned {got} embeddings for {len(texts)} "
                               "inputs; it does not speak the OpenAI embeddings API.")
        try:
            # `index` says which input a row belongs to; servers may return rows in any order.
            order = sorted(range(len(rows)), key=lambda pos: int(rows[pos].get("index", pos)))
            matrix = np.asarray([rows[pos]["embedding"] for pos in order], dtype=np.float32)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise EncoderError(f"embeddings endpoint {self._url} returned rows without a numeric `embedding` "
                               "list; it does not speak the OpenAI embeddings API (base64 output is not "
                               "supported).") from None
        if matrix.ndim != 2 or (self._dim is not None and matrix.shape[1] != self._dim):
            raise EncoderError(f"embeddings endpoint {self._url} returned vectors of shape {matrix.shape}, "
                               f"expected width {self._dim}.")
        self._dim = int(matrix.shape[1])
        return l2_normalize_rows(matrix) if self._normalize else matrix

