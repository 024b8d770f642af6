"""Candidate pools behind one interface: recorded answers, local HF causal LMs, an OpenAI-compatible API.

    pool = build_pool(cfg.pool)
    answers = pool.answer_many([CandidateCall(model="GPT-4-Turbo", query="...", question="...")])

Every pool maps a call (model name, sub-query, and the episode's original question) to a
`CandidateAnswer`: the text the environment puts inside ``<information>``, the token counts and the
USD cost (tokens x $/M from the pool config). Router-R1 has only the API form
(``router_r1/llm_agent/route_service.py``: a thread pool of 10 over an OpenAI client, output tokens
x $/M); the recorded and local forms are ours, for offline training and tests.

* `RecordedPool`: answers recorded in an outcome table (RouteLLM's GSM8K responses by default). A
  sub-query is served the recorded answer of its nearest recorded prompt (cosine similarity of
  sentence embeddings, `routerforge.encoders.embed_texts`, cached on disk) when the similarity
  reaches `match_threshold`; otherwise the answer recorded for the episode's original question.
  Token counts come from the table, else are estimated as characters / `chars_per_token` (of the
  recorded prompt and response: that is the exchange whose answer is served). `serve: final_number`
  inserts only the response's final number (cost still that of the full recorded exchange).
* `HFCausalLMPool`: local causal LMs (`transformers`), one call at a time (padding in a batch would
  change greedy outputs), with an on-disk answer cache keyed by (model id, revision, prompt sha256,
  generation settings). The revision is content-bound: a Hub commit sha, or the sha256 of a local
  model directory's files, so a retrained local model never gets stale answers (a Hub model whose
  commit the default HF cache cannot tell is keyed ``unresolved:<revision>``: pin a commit sha then).
* `OpenAIChatPool`: POST {base}/chat/completions; base URL and key only from environment
  variables; a per-request timeout; bounded retries with exponential backoff on timeouts, connection
  errors, 408, 429 and 5xx (honouring Retry-After; routerforge/io/http_json.py); at most
  `max_concurrency` requests in flight. Token counts from the reply's ``usage``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from routerforge.errors import DataError, RouterForgeError
from routerforge.io.atomic import atomic_write_text
from routerforge.io.http_json import HTTPStatusError, NotJSONError, RetriesExhaustedError, post_json
from routerforge.rl.pool_config import (
    HFPoolConfig,
    ModelCard,
    OpenAIPoolConfig,
    PoolConfig,
    RecordedPoolConfig,
    resolve_model_cards,
)

logger = logging.getLogger(__name__)

_WHITESPACE_RE = re.compile(r"\s+")


class PoolError(RouterForgeError):
    """A candidate pool cannot answer: unknown model, missing record, endpoint or model failure."""


class PoolCallFailed(PoolError):
    """A call still failed after its retries (timeouts, connection errors, 429/5xx): a transient failure."""


@dataclass(frozen=True)
class CandidateCall:
    """One call the policy made: pool model name, its sub-query, and the episode's original question."""

    model: str
    query: str
    question: str


@dataclass(frozen=True)
class CandidateAnswer:
    """What a pool returns for one call."""

    model: str  # pool model name
    text: str  # the candidate's answer (goes inside <information>)
    input_tokens: int
    output_tokens: int
    cost_usd: float
    backend: str  # recorded | hf | openai | failed
    matched_prompt: str | None = None  # recorded: the recorded prompt whose answer was served
    similarity: float | None = None  # recorded: cosine(sub-query, matched prompt); 1.0 for an exact match
    recorded_score: float | None = None  # recorded: the table's correctness/score of this answer
    cached: bool = False  # hf: served from the answer cache


@runtime_checkable
class CandidatePool(Protocol):
    """The one interface the environment uses."""

    cards: dict[str, ModelCard]  # pool name -> card, in the config's order

    def answer_many(self, calls: Sequence[CandidateCall]) -> list[CandidateAnswer]:
        """Answer every call; result i belongs to calls[i]."""
        ...


def _cards_by_name(cards: Sequence[ModelCard]) -> dict[str, ModelCard]:
    return {card.name: card for card in cards}


def _card(cards: dict[str, ModelCard], name: str) -> ModelCard:
    if name not in cards:
        raise PoolError(f"model '{name}' is not in the pool ({', '.join(cards)}).")
    return cards[name]


def _estimate_tokens(text: str, chars_per_token: float) -> int:
    return max(1, math.ceil(len(text) / chars_per_token)) if text else 0


def _same_text_key(text: str) -> str:
    return _WHITESPACE_RE.sub(" ", text).strip()


# --------------------------------------------------------------------------------------------------
# Recorded answers


@dataclass(frozen=True)
class RecordedAnswer:
    """One (prompt, model) answer of an outcome table."""

    prompt: str
    model: str  # the table's model id (matched against ModelCard.model)
    response: str
    score: float | None
    input_tokens: int | None
    output_tokens: int | None
    source_file: str
    source_line: int


_ROUTELLM_CELLS = {"True": 1.0, "False": 0.0}


def _read_routellm_responses(path: Path, ledger) -> list[RecordedAnswer]:
    from routerforge.data.readers._io import iter_csv

    records = []
    models: list[str] | None = None
    for line_no, row in iter_csv(path, "recorded_pool", ledger, required=["prompt"]):
        if models is None:
            models = [c[:-len("_response")] for c in row if c.endswith("_response") and c[:-len("_response")] in row]
            if not models:
                raise DataError(f"{path}:1: no '<model>_response' column next to a '<model>' column; a recorded "
                                "pool needs the answer texts (RouteLLM *_responses.csv).")
        prompt = row["prompt"]
        for model in models:
            response = row[f"{model}_response"]
            if not prompt.strip() or not response.strip():
                ledger.bad("recorded_pool", str(path), line_no, "empty_text", "empty prompt or response",
                           f"{model}_response")
                continue
            cell = row[model].strip()
            records.append(RecordedAnswer(prompt=prompt, model=model, response=response,
                                          score=_ROUTELLM_CELLS.get(cell), input_tokens=None, output_tokens=None,
                                          source_file=str(path), source_line=line_no))
    return records


def _optional_count(value) -> int | None:
    if value in (None, ""):
        return None
    count = float(value)
    if not math.isfinite(count) or count < 0 or count != int(count):
        raise ValueError(f"token count {value!r} is not a whole number >= 0")
    return int(count)


def _read_long_table(path: Path, ledger) -> list[RecordedAnswer]:
    from routerforge.data.readers._io import iter_csv, iter_jsonl

    rows = iter_jsonl(path, "recorded_pool", ledger) if path.suffix == ".jsonl" else \
        iter_csv(path, "recorded_pool", ledger, required=["prompt", "model", "response"])
    records = []
    for line_no, row in rows:
        missing = [c for c in ("prompt", "model", "response") if not isinstance(row.get(c), str) or not row[c].strip()]
        if missing:
            ledger.bad("recorded_pool", str(path), line_no, "missing_field", f"needs text in {', '.join(missing)}",
                       missing[0])
            continue
        try:
            score = None if row.get("score") in (None, "") else float(row["score"])
            input_tokens = _optional_count(row.get("input_tokens"))
            output_tokens = _optional_count(row.get("output_tokens"))
        except (TypeError, ValueError) as exc:
            ledger.bad("recorded_pool", str(path), line_no, "wrong_type", str(exc))
            continue
        records.append(RecordedAnswer(prompt=row["prompt"], model=row["model"], response=row["response"], score=score,
                                      input_tokens=input_tokens, output_tokens=output_tokens,
                                      source_file=str(path), source_line=line_no))
    return records


def read_recorded_answers(path: str | Path, max_rows: int | None = None) -> list[RecordedAnswer]:
    """Answers of an outcome table: RouteLLM ``*_responses.csv`` (wide) or a long JSONL/CSV table.

    max_rows: keep the answers of the first `max_rows` distinct prompts (quick runs, tests).
    Malformed rows are skipped and counted in a warning; DataError when nothing usable is left.
    """
    from routerforge.data.report import Ledger

    path = Path(path)
    if not path.is_file():
        raise DataError(f"recorded pool table '{path}' is not a file; set pool.recorded.table.")
    ledger = Ledger(echo=None)
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline()
    wide = path.suffix == ".csv" and "_response" in header
    records = _read_routellm_responses(path, ledger) if wide else _read_long_table(path, ledger)
    if ledger.bad_rows:
        first = ledger.bad_rows[0]
        logger.warning("recorded pool %s: skipped %d malformed row(s); first: %s", path, len(ledger.bad_rows),
                       first.format())
    if max_rows is not None:
        keep = list(dict.fromkeys(r.prompt for r in records))[:max_rows]
        wanted = set(keep)
        records = [r for r in records if r.prompt in wanted]
    if not records:
        raise DataError(f"recorded pool table {path} has no usable (prompt, model, response) rows.")
    return records


class RecordedPool:
    """Offline pool over recorded answers; see the module docstring."""

    backend = "recorded"

    def __init__(self, cards: Sequence[ModelCard], records: Sequence[RecordedAnswer], cfg: RecordedPoolConfig,
                 count_input_tokens: bool = True) -> None:
        self.cards = _cards_by_name(cards)
        self.cfg = cfg
        self.count_input_tokens = count_input_tokens
        self._answers: dict[tuple[str, str], RecordedAnswer] = {}
        for record in records:
            self._answers.setdefault((_same_text_key(record.prompt), record.model), record)
        self._prompts = list(dict.fromkeys(_same_text_key(r.prompt) for r in records))
        self._prompt_set = set(self._prompts)
        known_models = {model for _, model in self._answers}
        absent = [c.name for c in cards if c.model not in known_models]
        if absent:
            raise DataError(f"recorded pool: the table has no answers for model(s) "
                            f"{', '.join(f'{n} ({self.cards[n].model})' for n in absent)}; its models are "
                            f"{', '.join(sorted(known_models))}. Set pool.models[].model to one of them.")
        self._encoder = None
        self._prompt_matrix: np.ndarray | None = None

    @property
    def prompts(self) -> list[str]:
        """The distinct recorded prompts (whitespace-normalised), in table order."""
        return list(self._prompts)

    def _embed(self, texts: list[str]) -> np.ndarray:
        from routerforge.encoders import build_encoder, embed_texts

        if self._encoder is None:
            self._encoder = build_encoder(self.cfg.encoder)
        matrix = embed_texts(texts, self.cfg.encoder, encoder=self._encoder)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.maximum(norms, 1e-12)

    def _nearest(self, queries: list[str]) -> list[tuple[str, float]]:
        """(nearest recorded prompt, cosine) for each query; exact (whitespace-normalised) hits cost nothing."""
        keys = [_same_text_key(q) for q in queries]
        result: list[tuple[str, float] | None] = [(k, 1.0) if k in self._prompt_set else None for k in keys]
        todo = [i for i, r in enumerate(result) if r is None]
        if todo:
            if self._prompt_matrix is None:
                self._prompt_matrix = self._embed(self._prompts)
            query_matrix = self._embed([keys[i] for i in todo])
            similarities = query_matrix @ self._prompt_matrix.T
            best = similarities.argmax(axis=1)
            for row, i in enumerate(todo):
                result[i] = (self._prompts[best[row]], float(similarities[row, best[row]]))
        return result  # type: ignore[return-value]

    def _served_text(self, response: str) -> str:
        """The recorded response, or only its final number under `serve: final_number` (cost is unaffected)."""
        if self.cfg.serve == "final_number":
            from routerforge.rl.tasks import final_number

            number = final_number(response)
            if number is not None:
                return number
        return response.strip()

    def answer_many(self, calls: Sequence[CandidateCall]) -> list[CandidateAnswer]:
        for call in calls:
            _card(self.cards, call.model)
        matches = self._nearest([call.query for call in calls]) if calls else []
        answers = []
        for call, (prompt, similarity) in zip(calls, matches, strict=True):
            if similarity < self.cfg.match_threshold:
                # No recorded prompt is close to the sub-query: serve the episode's question.
                prompt = _same_text_key(call.question)
                if prompt not in self._prompt_set:
                    raise PoolError(f"recorded pool: the episode's question is not in {self.cfg.table} "
                                    f"('{prompt[:60]}...'); build the tasks from the same table as the pool.")
            card = self.cards[call.model]
            record = self._answers.get((prompt, card.model))
            if record is None:
                raise PoolError(f"recorded pool: no answer of {card.name} ({card.model}) is recorded for the "
                                f"prompt '{prompt[:60]}...' in {self.cfg.table}.")
            input_tokens = record.input_tokens if record.input_tokens is not None else \
                _estimate_tokens(record.prompt, self.cfg.chars_per_token)
            output_tokens = record.output_tokens if record.output_tokens is not None else \
                _estimate_tokens(record.response, self.cfg.chars_per_token)
            answers.append(CandidateAnswer(
                model=card.name, text=self._served_text(record.response), input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=card.cost_usd(input_tokens, output_tokens, self.count_input_tokens), backend=self.backend,
                matched_prompt=record.prompt, similarity=similarity, recorded_score=record.score))
        return answers


# --------------------------------------------------------------------------------------------------
# Local Hugging Face causal LMs


def _atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False))


class HFCausalLMPool:
    """Local causal LMs with an on-disk answer cache; see the module docstring."""

    backend = "hf"

    def __init__(self, cards: Sequence[ModelCard], cfg: HFPoolConfig, agent_prompt: str,
                 count_input_tokens: bool = True) -> None:
        self.cards = _cards_by_name(cards)
        self.cfg = cfg
        self.agent_prompt = agent_prompt
        self.count_input_tokens = count_input_tokens
        self.cache_dir = Path(cfg.cache_dir)
        self._loaded: dict[str, tuple[object, object, str]] = {}  # name -> (model, tokenizer, revision)
        self.generations = 0  # forward generations run (cache misses), for logs and tests

    def _device(self) -> str:
        import torch

        if self.cfg.device:
            return self.cfg.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self, card: ModelCard) -> tuple[object, object, str]:
        if card.name in self._loaded:
            return self._loaded[card.name]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from routerforge.encoders.model_source import fingerprint_model_dir, hub_commit

        local = Path(card.model).expanduser()
        load_from = str(local.resolve()) if local.is_dir() else card.model
        dtype = "auto" if self.cfg.dtype == "auto" else getattr(torch, self.cfg.dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(load_from, revision=card.revision)
            model = AutoModelForCausalLM.from_pretrained(load_from, revision=card.revision, dtype=dtype)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise PoolError(f"pool model '{card.name}': cannot load '{card.model}': {first}. Use a local model "
                            "directory, or a Hub id that is in the HF cache when offline.") from None
        if local.is_dir():
            revision = fingerprint_model_dir(local)
        elif card.revision and re.fullmatch(r"[0-9a-f]{40}", card.revision):
            revision = card.revision
        else:
            revision = hub_commit(card.model, card.revision) or f"unresolved:{card.revision or 'main'}"
        model.to(self._device()).eval()
        self._loaded[card.name] = (model, tokenizer, revision)
        return self._loaded[card.name]

    def _generation_settings(self) -> dict:
        sampled = self.cfg.temperature > 0
        return {"max_new_tokens": self.cfg.max_new_tokens, "temperature": self.cfg.temperature,
                "top_p": self.cfg.top_p if sampled else 1.0, "seed": self.cfg.seed if sampled else None,
                "chat_template": self.cfg.use_chat_template}

    def cache_key(self, card: ModelCard, revision: str, prompt: str) -> str:
        """sha256 over (model id, revision, prompt sha256, generation settings)."""
        material = json.dumps({"model": card.model, "revision": revision,
                               "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
                               "generation": self._generation_settings()}, sort_keys=True)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def _generate(self, model, tokenizer, prompt: str) -> tuple[str, int, int]:
        from routerforge.models.chat_generation import generate_chat_reply

        reply = generate_chat_reply(model, tokenizer, [{"role": "user", "content": prompt}],
                                    use_chat_template=self.cfg.use_chat_template,
                                    max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                    top_p=self.cfg.top_p, seed=self.cfg.seed)
        self.generations += 1
        return reply

    def answer_many(self, calls: Sequence[CandidateCall]) -> list[CandidateAnswer]:
        answers = []
        for call in calls:
            card = _card(self.cards, call.model)
            model, tokenizer, revision = self._load(card)
            prompt = self.agent_prompt.replace("{query}", call.query)
            key = self.cache_key(card, revision, prompt)
            path = self.cache_dir / "hf" / key[:2] / f"{key}.json"
            cached = None
            if path.is_file():
                try:
                    cached = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    cached = None  # a torn or foreign file: regenerate and overwrite
            if cached is not None:
                text, input_tokens, output_tokens = cached["text"], cached["input_tokens"], cached["output_tokens"]
            else:
                text, input_tokens, output_tokens = self._generate(model, tokenizer, prompt)
                _atomic_write_json(path, {"text": text, "input_tokens": input_tokens, "output_tokens": output_tokens,
                                          "model": card.model, "revision": revision,
                                          "generation": self._generation_settings()})
            answers.append(CandidateAnswer(
                model=card.name, text=text.strip(), input_tokens=input_tokens, output_tokens=output_tokens,
                cost_usd=card.cost_usd(input_tokens, output_tokens, self.count_input_tokens), backend=self.backend,
                cached=cached is not None))
        return answers


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible chat endpoint


class OpenAIChatPool:
    """An OpenAI-compatible /chat/completions endpoint; see the module docstring."""

    backend = "openai"

    def __init__(self, cards: Sequence[ModelCard], cfg: OpenAIPoolConfig, agent_prompt: str,
                 count_input_tokens: bool = True) -> None:
        base = os.environ.get(cfg.base_url_env, "").strip()
        if not base:
            raise PoolError(f"pool.backend openai needs the endpoint's base URL in the environment variable "
                            f"{cfg.base_url_env} (pool.openai.base_url_env), e.g. https://api.openai.com/v1")
        key = os.environ.get(cfg.api_key_env, "").strip()
        if not key:
            raise PoolError(f"pool.backend openai needs an API key in the environment variable {cfg.api_key_env} "
                            "(pool.openai.api_key_env); any non-empty value for a server without auth.")
        self.cards = _cards_by_name(cards)
        self.cfg = cfg
        self.agent_prompt = agent_prompt
        self.count_input_tokens = count_input_tokens
        self._url = base.rstrip("/") + "/chat/completions"
        self._key = key
        self._in_flight = threading.BoundedSemaphore(cfg.max_concurrency)
        self._local = threading.local()
        self.failed_calls = 0

    def _session(self):
        import requests

        if getattr(self._local, "session", None) is None:
            self._local.session = requests.Session()
        return self._local.session

    def _post(self, payload: dict) -> dict:
        """POST with bounded retries (routerforge/io/http_json.py); the JSON reply; PoolError when it keeps failing."""
        try:
            return post_json(self._url, payload, token=self._key, session=self._session(),
                             timeout_s=self.cfg.timeout_s, max_retries=self.cfg.max_retries,
                             backoff_s=self.cfg.backoff_s, slot=self._in_flight)
        except NotJSONError:
            raise PoolError(f"chat endpoint {self._url} answered 200 with a body that is not JSON; "
                            "check pool.openai.base_url_env points at an OpenAI-compatible /v1 URL.") from None
        except HTTPStatusError as exc:
            hint = " Check the key in pool.openai.api_key_env." if exc.status in (401, 403) else ""
            raise PoolError(f"chat endpoint {self._url} refused the request ({exc.problem}).{hint}") from None
        except RetriesExhaustedError as exc:
            raise PoolCallFailed(f"chat endpoint {self._url} failed after {exc.attempts} attempts "
                                 f"(last: {exc.problem}); check the server, or retry later.") from None

    def _answer_one(self, call: CandidateCall) -> CandidateAnswer:
        card = _card(self.cards, call.model)
        prompt = self.agent_prompt.replace("{query}", call.query)
        payload = {"model": card.model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature}
        try:
            reply = self._post(payload)
        except PoolCallFailed as exc:
            if self.cfg.on_failure == "raise":
                raise
            self.failed_calls += 1
            logger.warning("%s", exc)
            return CandidateAnswer(model=card.name, text=f"(the call to {card.name} failed; no answer)",
                                   input_tokens=0, output_tokens=0, cost_usd=0.0, backend="failed")
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise PoolError(f"chat endpoint {self._url} replied without choices[0].message.content; it does not "
                            "speak the OpenAI chat completions API.") from None
        usage = reply.get("usage") or {}
        input_tokens = usage.get("prompt_tokens")
        output_tokens = usage.get("completion_tokens")
        # A server without usage accounting: estimate (4 characters per token) rather than bill nothing.
        input_tokens = int(input_tokens) if isinstance(input_tokens, int) else _estimate_tokens(prompt, 4.0)
        output_tokens = int(output_tokens) if isinstance(output_tokens, int) else _estimate_tokens(text, 4.0)
        return CandidateAnswer(model=card.name, text=text.strip(), input_tokens=input_tokens,
                               output_tokens=output_tokens,
                               cost_usd=card.cost_usd(input_tokens, output_tokens, self.count_input_tokens),
                               backend=self.backend)

    def answer_many(self, calls: Sequence[CandidateCall]) -> list[CandidateAnswer]:
        for call in calls:
            _card(self.cards, call.model)
        if len(calls) <= 1:
            return [self._answer_one(call) for call in calls]
        with ThreadPoolExecutor(max_workers=min(len(calls), self.cfg.max_concurrency)) as executor:
            return list(executor.map(self._answer_one, calls))


def build_pool(cfg: PoolConfig, cards: Sequence[ModelCard] | None = None, max_rows: int | None = None) -> CandidatePool:
    """The pool `cfg` describes. cards: already resolved cards (default: `resolve_model_cards(cfg)`);
    max_rows: recorded backend, keep the first `max_rows` prompts of the table (quick runs, tests)."""
    cards = list(cards) if cards is not None else resolve_model_cards(cfg)
    if cfg.backend == "recorded":
        records = read_recorded_answers(cfg.recorded.table, max_rows=max_rows)
        return RecordedPool(cards, records, cfg.recorded, cfg.count_input_tokens)
    if cfg.backend == "hf":
        return HFCausalLMPool(cards, cfg.hf, cfg.agent_prompt, cfg.count_input_tokens)
    if cfg.backend == "openai":
        return OpenAIChatPool(cards, cfg.openai, cfg.agent_prompt, cfg.count_input_tokens)
    raise PoolError(f"pool.backend '{cfg.backend}' is unknown; use recorded, hf or openai.")
