"""One retrying client per endpoint: OpenAI-compatible chat completions over httpx, or a local
`transformers` causal LM, behind the same `chat(messages) -> Reply` coroutine.

OpenAI-compatible (`kind: openai`; OpenAI, vLLM's `vllm serve`, llama.cpp server, ...), with the retry
policy of routerforge/io/http_json.py (asynchronous here, one coroutine per call):
POST {base}/chat/completions with the base URL and key read from the environment variables the
config names. At most `max_concurrency` requests in flight; timeouts, connection errors, 429 and 5xx
are retried up to `max_retries` times with exponential backoff (`backoff_s` x 2^attempt, capped at
60 s), waiting at least the server's `Retry-After` when it sends one. The slot is released while
waiting, so a rate-limited endpoint does not hold its concurrency. 401/403/404 stop the whole run
(every other call would fail the same way); other 4xx fail that one call. The key is only ever put in
the Authorization header and is scrubbed from every error message.

Local (`kind: transformers`): greedy (or seeded sampled) `generate` on CPU or the first GPU, one call
at a time in a worker thread (batching would pad and change greedy outputs). The model directory's
content fingerprint is part of the cache key, so a retrained model never gets stale answers. For
large local models on a GPU, serve them with vLLM (`vllm serve MODEL`) and use `kind: openai`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from routerforge.errors import RouterForgeError
from routerforge.io.http_json import RETRY_STATUS, backoff_wait_s, retry_after_s, scrub
from routerforge.label.config import EndpointConfig
from routerforge.models.chat_generation import generate_chat_reply

logger = logging.getLogger(__name__)

FATAL_STATUS = frozenset({401, 403, 404})
MAX_BACKOFF_S = 60.0


class EndpointError(RouterForgeError):
    """An endpoint cannot be used at all (missing URL/key, refused credentials, unknown model)."""


class CallFailed(Exception):
    """One call failed for good (after its retries, or a non-retryable 4xx); `detail` holds no secret."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int
    output_tokens: int


def _estimate_tokens(text: str) -> int:
    # A server without usage accounting: bill ~4 characters per token rather than nothing.
    return max(1, len(text) // 4)


class OpenAIEndpoint:
    """See the module docstring."""

    def __init__(self, cfg: EndpointConfig) -> None:
        import httpx

        base = os.environ.get(cfg.base_url_env, "").strip()
        if not base:
            raise EndpointError(f"endpoint '{cfg.name}': set the base URL in the environment variable "
                                f"{cfg.base_url_env} (base_url_env), e.g. https://api.openai.com/v1 or "
                                f"http://localhost:8000/v1 for `vllm serve`.")
        key = os.environ.get(cfg.api_key_env, "").strip()
        if not key:
            raise EndpointError(f"endpoint '{cfg.name}': set the API key in the environment variable "
                                f"{cfg.api_key_env} (api_key_env); any non-empty value for a server without auth.")
        self.cfg = cfg
        self.model_id = cfg.model
        self._url = base.rstrip("/") + "/chat/completions"
        self._key = key
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._client = httpx.AsyncClient(timeout=cfg.timeout_s,
                                         limits=httpx.Limits(max_connections=cfg.max_concurrency))
        self.retries = 0

    async def _post_once(self, payload: dict) -> tuple[dict | None, str, float | None]:
        """(reply, problem, retry_after): reply on 200; otherwise why, and the server's Retry-After."""
        import httpx

        headers = {"Authorization": f"Bearer {self._key}"}
        async with self._slots:
            try:
                response = await self._client.post(self._url, json=payload, headers=headers)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                return None, f"{type(exc).__name__}: {scrub(str(exc)[:200], self._key)}", None
        if response.status_code == 200:
            try:
                return response.json(), "", None
            except ValueError:
                raise EndpointError(f"endpoint '{self.cfg.name}' ({self._url}) answered 200 with a body that is "
                                    f"not JSON; point {self.cfg.base_url_env} at an OpenAI-compatible /v1 "
                                    "URL.") from None
        body = scrub(response.text[:300].replace("\n", " "), self._key)
        problem = f"HTTP {response.status_code}: {body}"
        if response.status_code in FATAL_STATUS:
            hint = {401: f"check the key in {self.cfg.api_key_env}", 403: f"check the key in {self.cfg.api_key_env}",
                    404: f"check {self.cfg.base_url_env} (it should end in /v1) and the model name"}
            raise EndpointError(f"endpoint '{self.cfg.name}' ({self._url}) refused the request ({problem}); "
                                f"{hint[response.status_code]}.")
        if response.status_code not in RETRY_STATUS:
            raise CallFailed(f"endpoint '{self.cfg.name}': {problem}")
        return None, problem, retry_after_s(response.headers.get("Retry-After"))

    async def chat(self, messages: list[dict], generation: dict) -> Reply:
        payload = {"model": self.cfg.model, "messages": messages, **generation}
        problem = ""
        for attempt in range(self.cfg.max_retries + 1):
            reply, problem, retry_after = await self._post_once(payload)
            if reply is not None:
                return self._parse(reply, messages)
            if attempt == self.cfg.max_retries:
                break
            wait_s = backoff_wait_s(attempt, self.cfg.backoff_s, retry_after, MAX_BACKOFF_S)
            self.retries += 1
            logger.info("endpoint %s: %s; retry %d/%d in %.2f s", self.cfg.name, problem.split(":")[0],
                        attempt + 1, self.cfg.max_retries, wait_s)
            await asyncio.sleep(wait_s)
        raise CallFailed(f"endpoint '{self.cfg.name}': failed after {self.cfg.max_retries + 1} attempts "
                         f"(last: {problem})")

    def _parse(self, reply: dict, messages: list[dict]) -> Reply:
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise CallFailed(f"endpoint '{self.cfg.name}': reply without choices[0].message.content") from None
        usage = reply.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt_tokens, int):
            prompt_tokens = _estimate_tokens("".join(m["content"] for m in messages))
        if not isinstance(completion_tokens, int):
            completion_tokens = _estimate_tokens(text)
        return Reply(text=text, input_tokens=prompt_tokens, output_tokens=completion_tokens)

    async def aclose(self) -> None:
        await self._client.aclose()


class TransformersEndpoint:
    """See the module docstring."""

    def __init__(self, cfg: EndpointConfig) -> None:
        from pathlib import Path

        from routerforge.encoders.model_source import fingerprint_model_dir

        path = Path(cfg.model_path).expanduser()
        if not path.is_dir():
            raise EndpointError(f"endpoint '{cfg.name}': model_path '{cfg.model_path}' is not a directory; point "
                                f"it at a local model saved with save_pretrained.")
        self.cfg = cfg
        # Content-bound, not path-bound: a moved directory still hits, retrained weights miss.
        self.model_id = f"local:{fingerprint_model_dir(path)}"
        self._path = path
        self._loaded: tuple | None = None
        self._lock = asyncio.Lock()
        self.retries = 0

    def _load(self) -> tuple:
        if self._loaded is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                tokenizer = AutoTokenizer.from_pretrained(self._path)
                model = AutoModelForCausalLM.from_pretrained(self._path).to(device).eval()
            except (OSError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise EndpointError(f"endpoint '{self.cfg.name}': cannot load {self._path}: {first}") from None
            self._loaded = (model, tokenizer)
        return self._loaded

    def _generate(self, messages: list[dict], generation: dict) -> Reply:
        model, tokenizer = self._load()
        text, input_tokens, output_tokens = generate_chat_reply(
            model, tokenizer, messages, use_chat_template=True, max_new_tokens=generation["max_tokens"],
            temperature=generation["temperature"], top_p=generation["top_p"], seed=generation.get("seed"))
        return Reply(text=text, input_tokens=input_tokens, output_tokens=output_tokens)

    async def chat(self, messages: list[dict], generation: dict) -> Reply:
        async with self._lock:
            return await asyncio.to_thread(self._generate, messages, generation)

    async def aclose(self) -> None:
        self._loaded = None


def open_endpoint(cfg: EndpointConfig) -> OpenAIEndpoint | TransformersEndpoint:
    return OpenAIEndpoint(cfg) if cfg.kind == "openai" else TransformersEndpoint(cfg)
