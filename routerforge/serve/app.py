"""The routing proxy as a Starlette ASGI app (served by uvicorn: routerforge/serve/cli.py).

    POST /v1/chat/completions   route, then forward to the chosen upstream (streaming SSE or not)
    GET  /v1/models             the routing presets as models: router-<name>
    GET  /health                liveness and what is being served
    GET  /metrics               Prometheus text (routerforge/serve/metrics.py)

A chat request: bearer token (if configured) -> body within max_body_bytes (413) -> JSON with `model` and
`messages` (400) -> preset from the model name `router-<name>` (`router` = the default preset), or a raw
threshold from the `X-Router-Threshold` header -> the router scores the routing text (micro-batched with
concurrent requests, routerforge/serve/batcher.py) -> the chosen endpoint gets the request with only `model`
replaced -> its answer comes back unchanged, plus `X-Router-Model` (the model used: the router's name for it),
`X-Router-Upstream-Model`, `X-Router-Preset`, `X-Router-Score` and, after a fallback, `X-Router-Fallback-From`.

Starlette rather than FastAPI: the proxy reads the raw body itself (size limit, OpenAI-style 400s instead of
FastAPI's 422 validation bodies) and has no response models, so FastAPI would add nothing used.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from routerforge.errors import ConfigError
from routerforge.router import Router, ScoreSpec
from routerforge.serve.batcher import MicroBatcher
from routerforge.serve.config import PresetConfig, ServeConfig, secret_from_env
from routerforge.serve.metrics import ServeMetrics
from routerforge.serve.policy import (
    DEFAULT_PRESET,
    MODEL_PREFIX,
    Rule,
    binary_pair,
    model_names,
    preset_of_model,
    raw_threshold_rule,
    resolve_rules,
)
from routerforge.serve.protocol import RequestError, error_body, parse_chat_request, routing_text
from routerforge.serve.upstream import Forwarder, passthrough_headers, resolve_upstream

log = logging.getLogger("routerforge.serve")
THRESHOLD_HEADER = "x-router-threshold"


@dataclass
class ServeState:
    router: Router
    spec: ScoreSpec
    config: ServeConfig
    rules: dict[str, Rule]
    metrics: ServeMetrics
    batcher: MicroBatcher
    forwarder: Forwarder
    auth_token: str | None  # from the environment; never logged


def build_state(router: Router, config: ServeConfig, *, strong_share: float | None = None,
                threshold: float | None = None) -> ServeState:
    """Everything the app needs, checked before it listens: pair, presets (calibrated), endpoints, token."""
    if strong_share is not None and threshold is not None:
        raise ConfigError("pass --strong-share or --threshold, not both.")
    spec = binary_pair(router, config)
    presets = dict(config.presets)
    if strong_share is not None or threshold is not None:
        presets[DEFAULT_PRESET] = PresetConfig(strong_share=strong_share, threshold=threshold)
    rules = resolve_rules(router, spec, presets)
    upstreams = {spec.strong: resolve_upstream(spec.strong, config.strong, "strong"),
                 spec.weak: resolve_upstream(spec.weak, config.weak, "weak")}
    auth_token = secret_from_env(config.auth_token_env, "the token clients must send", "auth_token_env")
    metrics = ServeMetrics((spec.strong, spec.weak))
    routing = config.routing
    batcher = MicroBatcher(lambda texts: router.scores_for(texts, spec), max_batch_size=routing.max_batch_size,
                           max_wait_s=routing.max_wait_ms / 1000.0, on_batch=metrics.observe_batch)
    return ServeState(router, spec, config, rules, metrics, batcher, Forwarder(upstreams, config.fallback, metrics),
                      auth_token)


def create_app(state: ServeState) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.batcher.start()
        try:
            yield
        finally:  # uvicorn runs this after in-flight requests have drained (graceful shutdown)
            await state.batcher.stop()
            await state.forwarder.aclose()

    async def chat_completions(request: Request) -> Response:
        return await _counted("/v1/chat/completions", _chat(state, request))

    async def models(request: Request) -> Response:
        async def answer() -> Response:
            _check_auth(state, request)
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "routerforge"}
                    for name in model_names(state.rules)]
            if DEFAULT_PRESET in state.rules:
                data.insert(0, {"id": MODEL_PREFIX, "object": "model", "created": 0, "owned_by": "routerforge"})
            return JSONResponse({"object": "list", "data": data})
        return await _counted("/v1/models", answer())

    async def health(request: Request) -> Response:
        return await _counted("/health", _json({
            "status": "ok", "router": state.router.name, "version": state.router.version,
            "strong": state.spec.strong, "weak": state.spec.weak,
            "presets": {name: rule.describe() for name, rule in state.rules.items()}}))

    async def metrics(request: Request) -> Response:
        return await _counted("/metrics", _plain(state.metrics.render(), state.metrics.content_type))

    async def _counted(endpoint: str, handler) -> Response:
        try:
            response = await handler
        except RequestError as err:
            response = JSONResponse(err.body, status_code=err.status)
        state.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        return response

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {exc.detail}", "invalid_request_error",
                                       code=str(exc.status_code)), status_code=exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/health", health, methods=["GET"]),
                             Route("/metrics", metrics, methods=["GET"])],
                     exception_handlers={HTTPException: http_error, Exception: internal_error}, lifespan=lifespan)


async def _json(data: dict) -> Response:
    return JSONResponse(data)


async def _plain(content: bytes, media_type: str) -> Response:
    return Response(content, media_type=media_type)


def _check_auth(state: ServeState, request: Request) -> None:
    if state.auth_token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the comparison takes the same time wherever the first wrong character is
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), state.auth_token.encode()):
        raise RequestError(401, "missing or wrong API key: send `Authorization: Bearer <token>` with the token this "
                                "server was started with.", code="invalid_api_key")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_large = RequestError(413, f"the request body is larger than this server accepts ({limit} bytes; "
                                  f"max_body_bytes in the serve config).", code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _rule_for(state: ServeState, request: Request, model: str) -> Rule:
    header = request.headers.get(THRESHOLD_HEADER)
    preset = preset_of_model(model, state.rules)
    routed_name = model == MODEL_PREFIX or model.startswith(MODEL_PREFIX + "-")
    if preset is None and not (header is not None and routed_name):
        known = ", ".join(([MODEL_PREFIX] if DEFAULT_PRESET in state.rules else []) + model_names(state.rules))
        raise RequestError(404, f"the model '{model}' does not exist on this router; use one of {known}.",
                           param="model", code="model_not_found")
    if header is None:
        return state.rules[preset]
    try:
        threshold = float(header)
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise RequestError(400, f"X-Router-Threshold must be a finite number (the router's score units), got "
                                f"{header!r}.", param="X-Router-Threshold", code="invalid_value")
    return raw_threshold_rule(threshold)


async def _chat(state: ServeState, request: Request) -> Response:
    _check_auth(state, request)
    body = parse_chat_request(await _read_body(request, state.config.max_body_bytes))
    rule = _rule_for(state, request, body["model"])
    text = routing_text(body["messages"], state.config.routing.text, state.config.routing.max_chars)
    state.metrics.in_flight.inc()
    streaming = False
    try:
        started = time.perf_counter()
        score = await state.batcher.score(text)
        model = state.spec.strong if rule.is_strong(score, text) else state.spec.weak
        routed = time.perf_counter()
        state.metrics.routing_seconds.observe(routed - started)
        state.metrics.observe_routed(model, rule.name)
        stream = bool(body.get("stream", False))
        forwarded = await state.forwarder.forward(body, model, stream)
        answered = time.perf_counter()
        headers = passthrough_headers(forwarded.response)
        # W3C Server-Timing: where this request's time went (after the upstream's own entries, if any)
        timing = f"routing;dur={1000 * (routed - started):.2f}, upstream;dur={1000 * (answered - routed):.2f}"
        headers["server-timing"] = ", ".join(filter(None, [headers.get("server-timing"), timing]))
        headers.update({"x-router-model": forwarded.upstream.model,
                        "x-router-upstream-model": forwarded.upstream.upstream_model,
                        "x-router-preset": rule.name, "x-router-score": f"{score:.6f}"})
        if forwarded.fallback_from:
            headers["x-router-fallback-from"] = forwarded.fallback_from
        if not stream:
            return Response(forwarded.response.content, status_code=forwarded.response.status_code, headers=headers)

        finished = False

        async def finish() -> None:  # idempotent: the stream's end, or the background task after a disconnect
            nonlocal finished
            if not finished:
                finished = True
                state.metrics.in_flight.dec()
                await forwarded.response.aclose()

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in state.forwarder.relay_stream(forwarded):
                    yield chunk
            finally:
                await finish()

        streaming = True
        return StreamingResponse(relay(), status_code=forwarded.response.status_code, headers=headers,
                                 background=BackgroundTask(finish))
    finally:
        if not streaming:
            state.metrics.in_flight.dec()
