"""The OpenAI-compatible endpoints requests are forwarded to (httpx), with fallback to the other model.

A request goes to the chosen endpoint with only `model` replaced by the name that endpoint expects. A timeout,
a connection error or a 5xx answer counts as a failure of that endpoint: with `fallback: other_model` the same
request is sent once to the other model's endpoint, else (or when that fails too) the client gets a 502/504
OpenAI-style error naming both attempts. 4xx answers are the client's problem and come back unchanged.
Streams can fall back only before the first byte; a stream that breaks later ends with an SSE error event
(which OpenAI clients raise as an APIError).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from routerforge.errors import ConfigError
from routerforge.serve.config import UpstreamConfig, secret_from_env
from routerforge.serve.metrics import ServeMetrics
from routerforge.serve.protocol import RequestError, error_body

# Response headers that describe one hop's framing, not the answer (RFC 9110 7.6.1), and the ones the proxy's own
# server sets (date, server): never copied through.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "upgrade",
               "proxy-connection", "te", "trailer", "date", "server"}


@dataclass(frozen=True)
class Upstream:
    model: str  # the router's name
    upstream_model: str
    url: str  # .../chat/completions
    timeout_s: float
    api_key: str | None  # from the environment; never logged or shown

    def __repr__(self) -> str:  # keeps the key out of any log line or traceback that prints the object
        return f"Upstream({self.model} -> {self.upstream_model} at {self.url})"


def resolve_upstream(model: str, config: UpstreamConfig, role: str) -> Upstream:
    """An endpoint from its config and the environment; ConfigError naming the variable that is missing."""
    base_url = os.environ.get(config.base_url_env, "") if config.base_url_env else ""
    base_url = base_url or config.base_url
    if not base_url:
        hint = f"set the environment variable {config.base_url_env}" if config.base_url_env else \
            f"set {role}.base_url_env (or {role}.base_url) in the serve config"
        raise ConfigError(f"no base URL for the {role} model {model}: {hint} (e.g. https://api.openai.com/v1).")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"the {role} model's base URL must start with http:// or https://, got {base_url!r}.")
    api_key = secret_from_env(config.api_key_env, f"the {role} model's API key", f"{role}.api_key_env")
    return Upstream(model, config.upstream_model or model, base_url.rstrip("/") + "/chat/completions",
                    config.timeout_s, api_key)


class UpstreamFailure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # timeout | http_5xx | connection


@dataclass
class Forwarded:
    upstream: Upstream
    response: httpx.Response  # streaming responses are open; the caller closes them
    fallback_from: str | None


class Forwarder:
    def __init__(self, upstreams: dict[str, Upstream], fallback: str, metrics: ServeMetrics) -> None:
        self.upstreams = upstreams
        self.fallback = fallback
        self.metrics = metrics
        # One pool for every endpoint; the per-request timeout is the endpoint's own.
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
                                        follow_redirects=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    def _other(self, model: str) -> str:
        return next(name for name in self.upstreams if name != model)

    async def forward(self, body: dict, model: str, stream: bool) -> Forwarded:
        """Send `body` to `model`'s endpoint (then, on failure and by policy, to the other one)."""
        failures: list[str] = []
        last_kind = "connection"
        order = [model] + ([self._other(model)] if self.fallback == "other_model" else [])
        for attempt, name in enumerate(order):
            upstream = self.upstreams[name]
            if attempt:
                self.metrics.fallbacks.labels(from_model=model, to_model=name).inc()
            try:
                response = await self._send(upstream, body, stream)
            except UpstreamFailure as failure:
                self.metrics.upstream_errors.labels(model=name, kind=failure.kind).inc()
                failures.append(f"{name}: {failure}")
                last_kind = failure.kind
                continue
            return Forwarded(upstream, response, model if attempt else None)
        status = 504 if last_kind == "timeout" else 502
        raise RequestError(status, "upstream failed: " + "; then ".join(failures), error_type="upstream_error",
                           code="upstream_timeout" if status == 504 else "upstream_unavailable")

    async def _send(self, upstream: Upstream, body: dict, stream: bool) -> httpx.Response:
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if upstream.api_key:
            headers["authorization"] = f"Bearer {upstream.api_key}"
        payload = json.dumps({**body, "model": upstream.upstream_model}).encode()
        request = self.client.build_request("POST", upstream.url, content=payload, headers=headers,
                                            timeout=httpx.Timeout(upstream.timeout_s))
        started = time.perf_counter()
        try:
            response = await self.client.send(request, stream=stream)
        except httpx.TimeoutException:
            raise UpstreamFailure("timeout", f"no answer within {upstream.timeout_s:g} s") from None
        except httpx.TransportError as err:
            raise UpstreamFailure("connection", f"{type(err).__name__}: {err}") from None
        self.metrics.upstream_seconds.labels(model=upstream.model).observe(time.perf_counter() - started)
        if response.status_code >= 500:
            if stream:
                await response.aclose()
            raise UpstreamFailure("http_5xx", f"HTTP {response.status_code}")
        return response

    async def relay_stream(self, forwarded: Forwarded) -> AsyncIterator[bytes]:
        """The upstream's stream bytes unchanged; an SSE error event if it breaks midway."""
        try:
            async for chunk in forwarded.response.aiter_raw():
                yield chunk
        except httpx.HTTPError as err:
            kind = "timeout" if isinstance(err, httpx.TimeoutException) else "stream"
            self.metrics.upstream_errors.labels(model=forwarded.upstream.model, kind=kind).inc()
            event = error_body(f"upstream {forwarded.upstream.model} stream broke: {type(err).__name__}",
                               "upstream_error", code="upstream_stream_broken")
            yield f"\n\ndata: {json.dumps(event)}\n\n".encode()
        finally:
            await forwarded.response.aclose()


def passthrough_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
