"""Encoder backend: a transformers AutoModel + AutoTokenizer with attention-masked mean pooling.

Mean pooling over the non-padding tokens, then optional L2 normalisation, is the recipe of
Sentence-BERT (Reimers & Gurevych, 2019) and of all-MiniLM-L6-v2; for that model this backend gives
the sentence-transformers backend's vectors to ~1e-7 (tests/unit/encoders). For models trained with
CLS or last-token pooling use the sentence_transformers backend, which reads the model's own pooling.
"""

from __future__ import annotations

import numpy as np

from routerforge.data.config import EncoderConfig
from routerforge.encoders.model_source import (
    load_error,
    max_token_length,
    resolve_model_source,
    resolve_revision,
)


class HFMeanPoolingEncoder:
    """transformers encoder body -> masked mean of the last hidden states -> optional L2 normalisation."""

    def __init__(self, cfg: EncoderConfig, device: str | None = None) -> None:
        self._cfg = cfg
        self._source = resolve_model_source(cfg.model, cfg.revision)
        self._device = device
        self._model = None
        self._tokenizer = None
        self._max_length = cfg.max_length
        self._revision: str | None = None
        self.encoder_id = f"hf:{self._source.name}"
        self.settings = f"max_length={cfg.max_length};normalize={int(cfg.normalize)};pooling=mean"

    @property
    def revision(self) -> str:
        if self._revision is None:
            self._revision = resolve_revision(self._source, self._load)
        return self._revision

    @property
    def dim(self) -> int:
        return int(self._load().config.hidden_size)

    def _load(self):
        if self._model is not None:
            return self._model
        import torch
        from transformers import AutoModel, AutoTokenizer

        kwargs = {} if self._source.is_local else {"revision": self._source.requested_revision}
        try:
            tokenizer = AutoTokenizer.from_pretrained(self._source.load_from, **kwargs)
            model = AutoModel.from_pretrained(self._source.load_from, dtype=torch.float32, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise load_error(self._source, exc) from None
        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = model.to(device).eval()
        self._tokenizer = tokenizer
        self._max_length = max_token_length(self._cfg.max_length, tokenizer, model.config)
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        features = self._tokenizer(list(texts), padding=True, truncation=True, max_length=self._max_length,
                                   return_tensors="pt").to(model.device)
        with torch.inference_mode():
            hidden = model(**features).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)
            if self._cfg.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()
