"""A loopback OpenAI-compatible chat endpoint with deterministic answers and judgements, for label tests.

A real threaded `http.server` on 127.0.0.1 (a free port) serving `POST /v1/chat/completions` with the
OpenAI reply shape (choices[0].message.content, usage.prompt_tokens / completion_tokens). It checks
the bearer key (401 otherwise) and records every request it answered, so tests count calls.

Deterministic behaviour:
* a candidate answer is ``"<model> says: <prompt>"``; for ``"What is A+B?"`` a model whose name starts with
  ``strong`` answers ``"<model>: the answer is <A+B>."`` and any other model ``"...<A+B+1>."``;
* the judge (a request whose system message is a FastChat judge prompt) grades an answer 8 when it was
  written by a ``strong*`` model and 3 otherwise (``Rating: [[8]]``); pairwise it prefers the ``strong*``
  answer (``[[A]]`` / ``[[B]]``), ``[[C]]`` when neither or both are; a question containing
  ``POSITION_BIAS`` always gets ``[[A]]`` (a verdict that flips with the order), one containing
  ``MALFORMED`` gets a judgement without any rating or verdict.

Faults, set on the instance (thread-safe): `rate_limit_next` requests get 429 with `Retry-After:
retry_after_s`; `fail_next` requests get 503; every reply waits `delay_s` first.
Token counts: whitespace-separated words of the messages / of the reply.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SUM = re.compile(r"What is (\d+)\+(\d+)\?")
_SINGLE_ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End of Assistant's Answer\]", re.S)
_PAIR_ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]",
                          re.S)
_QUESTION = re.compile(r"\[(?:User )?Question\]\n(.*?)\n\n\[The Start of", re.S)


def answer_text(model: str, prompt: str) -> str:
    match = _SUM.search(prompt)
    if match:
        total = int(match.group(1)) + int(match.group(2)) + (0 if model.startswith("strong") else 1)
        return f"{model}: the answer is {total}."
    return f"{model} says: {prompt}"


def _is_strong(answer: str) -> bool:
    return answer.startswith("strong")


def judge_text(user: str) -> str:
    question = (_QUESTION.search(user) or [None, ""])[1]
    if "MALFORMED" in question:
        return "Both answers have merits; I cannot settle on a rating."
    single = _SINGLE_ANSWER.search(user)
    if single and "Assistant A" not in user:
        return f"The answer is adequate. Rating: [[{8 if _is_strong(single.group(1)) else 3}]]"
    answers = dict(_PAIR_ANSWER.findall(user))
    if "POSITION_BIAS" in question:
        return "The first answer reads better. [[A]]"
    strong_a, strong_b = _is_strong(answers.get("A", "")), _is_strong(answers.get("B", ""))
    verdict = "A" if strong_a and not strong_b else "B" if strong_b and not strong_a else "C"
    return f"Comparing both answers. Final verdict: [[{verdict}]]"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):  # a killed client
            super().handle_error(request, client_address)


class FakeChatEndpoint:
    """`with FakeChatEndpoint(key) as server:` ... `server.base_url` is the /v1 URL."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.answered: list[dict] = []  # every 200 reply: {"model", "messages"}
        self.requests = 0
        self.rate_limit_next = 0
        self.retry_after_s = 0.0
        self.fail_next = 0
        self.delay_s = 0.0
        self.refused: list[int] = []  # status codes of every non-200 reply
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeChatEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls_by_model(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for call in self.answered:
            out[call["model"]] = out.get(call["model"], 0) + 1
        return out

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints (and httpx's pool) use
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-request
                    pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                except (ValueError, ConnectionResetError):
                    body = {}
                if not isinstance(body.get("messages"), list) or "model" not in body:
                    self._send(400, {"error": {"message": "model and messages are required"}})
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid api key"}})
                    return
                with server.lock:
                    server.requests += 1
                    fault = None
                    if server.rate_limit_next > 0:
                        server.rate_limit_next -= 1
                        fault = 429
                    elif server.fail_next > 0:
                        server.fail_next -= 1
                        fault = 503
                    delay = server.delay_s
                if fault is not None:
                    with server.lock:
                        server.refused.append(fault)
                    headers = {"Retry-After": str(server.retry_after_s)} if fault == 429 else {}
                    self._send(fault, {"error": {"message": "rate limited" if fault == 429 else "overloaded"}},
                               headers)
                    return
                if delay:
                    threading.Event().wait(delay)
                messages = body["messages"]
                system = next((m["content"] for m in messages if m["role"] == "system"), "")
                user = messages[-1]["content"]
                is_judge = "impartial judge" in system or "helpful assistant" in system
                text = judge_text(user) if is_judge else answer_text(body["model"], user)
                with server.lock:
                    server.answered.append({"model": body["model"], "messages": messages})
                self._send(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": sum(len(m["content"].split()) for m in messages),
                              "completion_tokens": len(text.split())}})

        return Handler


if __name__ == "__main__":  # a standalone server (bench/bench_label.py runs it in its own process)
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="loopback fake OpenAI-compatible chat endpoint")
    parser.add_argument("--key", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    cli = parser.parse_args()
    with FakeChatEndpoint(cli.key) as fake:
        fake.delay_s = cli.delay_ms / 1000
        print(fake.base_url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin
