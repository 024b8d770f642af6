"""Loopback OpenAI-compatible chat endpoints (real HTTP via uvicorn) for the routing proxy's tests and bench.

`FakeChatUpstream(name)` answers `POST /v1/chat/completions` deterministically: the assistant message is
`"<name> answers: <last user text>"`, `model` echoes the model the request named, streams (`stream: true`) send
the answer word by word as `chat.completion.chunk` SSE events and end with `data: [DONE]`. Every request is
recorded (body and Authorization header) so a test can count what arrived where. Faults, set by the test:
`status_override` (answer every request with this HTTP status and an OpenAI error body) and `delay_s` (sleep
before answering, to trigger the proxy's timeout).

`serving(app)` runs any ASGI app on 127.0.0.1 (a free port) in a background thread and yields (server, base URL).

As a process (bench/bench_serve.py): `python -m tests.support.fake_chat_upstream --urls-file F` serves a "strong" and
a "weak" upstream on free loopback ports, writes {"strong": URL, "weak": URL} to F, and runs until SIGTERM;
`GET /received` lists the last user text of every request it got, in arrival order (to count lost or duplicated
requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class FakeChatUpstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.status_override: int | None = None
        self.delay_s = 0.0
        self.received: list[dict] = []
        self.authorization: list[str | None] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"]),
                                     Route("/received", self._received, methods=["GET"])])

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self.authorization.clear()
        self.status_override, self.delay_s = None, 0.0

    def answer(self, user_text: str) -> str:
        return f"{self.name} answers: {user_text}"

    async def _received(self, request: Request) -> Response:
        with self._lock:
            texts = [next((m.get("content") for m in reversed(body.get("messages", [])) if m.get("role") == "user"),
                          None) for body in self.received]
        return JSONResponse(texts)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.received.append(body)
            self.authorization.append(request.headers.get("authorization"))
            number = len(self.received)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status_override is not None:
            return JSONResponse({"error": {"message": f"{self.name} is failing on purpose", "type": "server_error",
                                           "param": None, "code": None}}, status_code=self.status_override)
        user_text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        text = self.answer(user_text)
        completion_id = f"chatcmpl-{self.name}-{number}"
        if not body.get("stream"):
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": 1700000000, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": len(user_text.split()), "completion_tokens": len(text.split()),
                          "total_tokens": len(user_text.split()) + len(text.split())}},
                headers={"x-request-id": completion_id})

        def chunk(delta: dict, finish: str | None) -> bytes:
            event = {"id": completion_id, "object": "chat.completion.chunk", "created": 1700000000,
                     "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(event)}\n\n".encode()

        async def events():
            yield chunk({"role": "assistant", "content": ""}, None)
            words = text.split(" ")
            for i, word in enumerate(words):
                yield chunk({"content": word + (" " if i < len(words) - 1 else "")}, None)
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"x-request-id": completion_id})


@contextlib.contextmanager
def serving(app, *, timeout_graceful_shutdown: int | None = None) -> Iterator[tuple[uvicorn.Server, str]]:
    """Serve `app` on 127.0.0.1 (free port) in a thread; stop it (gracefully) on exit."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="auto",
                            timeout_graceful_shutdown=timeout_graceful_shutdown)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="loopback-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the loopback server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def main() -> None:
    import argparse
    import signal
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Serve a strong and a weak fake chat upstream on loopback.")
    parser.add_argument("--urls-file", type=Path, required=True, help="write {role: base URL} here once listening")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    strong, weak = FakeChatUpstream("strong"), FakeChatUpstream("weak")
    with serving(strong.app) as (_, strong_url), serving(weak.app) as (_, weak_url):
        temp = args.urls_file.with_suffix(".tmp")
        temp.write_text(json.dumps({"strong": strong_url + "/v1", "weak": weak_url + "/v1"}))
        temp.replace(args.urls_file)
        print(f"fake upstreams: strong {strong_url}, weak {weak_url}", file=sys.stderr, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
