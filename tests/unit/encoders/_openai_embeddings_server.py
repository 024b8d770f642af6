"""A real OpenAI-compatible embeddings server on 127.0.0.1 (random port) for the openai backend's tests.

It speaks the wire format of POST /v1/embeddings: `{"model", "input": [...]}` in, `{"object": "list",
"data": [{"object": "embedding", "index": i, "embedding": [...]}], ...}` out. Vectors are derived
from the sha256 of each input text, so a test can compute what it must get back. Rows are sent in
reverse order (the API says `index`, not position, identifies the input). A scripted list of status
codes is answered first, to exercise retries; a wrong key gets a 401 whose body echoes the key it
received, as some proxies do, to prove the client never shows it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def expected_vector(text: str, dim: int) -> np.ndarray:
    """The raw (unnormalised) vector the server returns for `text`."""
    digest = b""
    counter = 0
    while len(digest) < dim:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    return (np.frombuffer(digest[:dim], dtype=np.uint8).astype(np.float32) - 127.5) / 127.5


class EmbeddingsServer:
    def __init__(self, api_key: str, dim: int = 12, scripted_statuses: list[int] | None = None) -> None:
        self.api_key = api_key
        self.dim = dim
        self.scripted_statuses = list(scripted_statuses or [])
        self.requests: list[dict] = []  # one per POST: path, authorization header, parsed body, answer status
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> EmbeddingsServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                record = {"path": self.path, "authorization": auth, "body": json.loads(raw or b"{}")}
                with server._lock:
                    server.requests.append(record)
                    scripted = server.scripted_statuses.pop(0) if server.scripted_statuses else None
                if self.path != "/v1/embeddings":
                    record["status"] = 404
                    return self._reply(404, {"error": {"message": f"no route {self.path}"}})
                if scripted is not None:
                    record["status"] = scripted
                    return self._reply(
                        scripted, {"error": {"message": "temporarily overloaded"}}, {"Retry-After": "0"}
                    )
                if auth != f"Bearer {server.api_key}":
                    record["status"] = 401
                    received = auth.removeprefix("Bearer ")
                    return self._reply(
                        401,
                        {
                            "error": {
                                "message": f"Incorrect API key provided: {received}",
                                "type": "invalid_request_error",
                            }
                        },
                    )
                inputs = record["body"].get("input")
                if isinstance(inputs, str):
                    inputs = [inputs]
                rows = [
                    {"object": "embedding", "index": i, "embedding": expected_vector(t, server.dim).tolist()}
                    for i, t in enumerate(inputs)
                ]
                record["status"] = 200
                self._reply(
                    200,
                    {
                        "object": "list",
                        "data": rows[::-1],
                        "model": record["body"].get("model"),
                        "usage": {"prompt_tokens": 0, "total_tokens": 0},
                    },
                )

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
