"""One retrying JSON POST for OpenAI-compatible endpoints (embeddings, chat completions), and its retry policy.

    reply = post_json(url, {"model": ..., "input": [...]}, token=key, max_retries=5, backoff_s=1.0)

Policy (shared with the async label client, routerforge/label/client.py, which uses httpx):
* retried: connection errors, timeouts, and HTTP 408, 429, 500, 502, 503, 504; at most `max_retries` times,
  waiting `backoff_s * 2**attempt` seconds, capped at `max_backoff_s`, and at least the server's
  `Retry-After` (seconds or an HTTP date; capped too);
* not retried: any other status (a bad key, a bad request, an unknown route): `HTTPStatusError` at once;
* every error names the URL and the server's answer, with the token replaced by `***` (servers echo it).

Built on `requests` (a dependency already); the loop is ours because requests/urllib3's `Retry` neither
honours our backoff cap nor scrubs the token out of the error it raises.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from email.utils import parsedate_to_datetime

from routerforge.errors import RouterForgeError

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class HTTPCallError(RouterForgeError):
    """A POST failed; `url`, `status` (None: no HTTP answer) and `problem` (one line, token scrubbed)."""

    def __init__(self, message: str, *, url: str, status: int | None, problem: str, attempts: int) -> None:
        super().__init__(message)
        self.url, self.status, self.problem, self.attempts = url, status, problem, attempts


class HTTPStatusError(HTTPCallError):
    """The server answered with a status that is not retried (4xx but 408/429): a retry cannot help."""


class RetriesExhaustedError(HTTPCallError):
    """Every attempt failed with a retryable problem (timeouts, connection errors, 408/429/5xx)."""


class NotJSONError(HTTPCallError):
    """HTTP 200 with a body that is not JSON: not an OpenAI-compatible endpoint."""


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds, or an HTTP date (RFC 9110 allows both); None when absent/unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_wait_s(attempt: int, backoff_s: float, retry_after: float | None, max_backoff_s: float) -> float:
    """Seconds to wait before retry `attempt + 1` (attempt counts from 0): exponential, capped, at least the
    server's Retry-After (itself capped)."""
    wait_s = min(max_backoff_s, backoff_s * 2 ** attempt)
    return max(wait_s, min(retry_after, max_backoff_s)) if retry_after is not None else wait_s


def scrub(text: str, secret: str | None) -> str:
    """`text` with `secret` replaced by ***."""
    return text.replace(secret, "***") if secret else text


def post_json(url: str, payload: dict, *, token: str, session=None, timeout_s: float = 60.0, max_retries: int = 5,
              backoff_s: float = 1.0, max_backoff_s: float = MAX_BACKOFF_S,
              slot: AbstractContextManager | None = None) -> dict:
    """POST `payload` as JSON with `Authorization: Bearer <token>`; the JSON reply of an HTTP 200.

    session: a `requests.Session` to reuse connections (default: a new one per call);
    slot: held around each request (e.g. a semaphore bounding the requests in flight), released while waiting.
    Raises HTTPStatusError, RetriesExhaustedError or NotJSONError (module docstring).
    """
    import requests

    if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
        raise ValueError("need max_retries >= 0, timeout_s > 0 and backoff_s >= 0")
    session = session if session is not None else requests.Session()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    problem, status = "", None
    for attempt in range(max_retries + 1):
        retry_after = None
        try:
            with slot if slot is not None else nullcontext():
                response = session.post(url, json=payload, headers=headers, timeout=timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            problem, status = f"{type(exc).__name__}: {scrub(first, token)}", None
        else:
            status = response.status_code
            if status == 200:
                try:
                    return response.json()
                except ValueError:
                    raise NotJSONError(f"{url} answered 200 with a body that is not JSON", url=url, status=200,
                                       problem="HTTP 200: not JSON", attempts=attempt + 1) from None
            problem = f"HTTP {status}: {scrub(response.text[:300].replace(chr(10), ' '), token)}"
            if status not in RETRY_STATUS:
                raise HTTPStatusError(f"{url} refused the request ({problem})", url=url, status=status,
                                      problem=problem, attempts=attempt + 1)
            retry_after = retry_after_s(response.headers.get("Retry-After"))
        if attempt == max_retries:
            break
        wait_s = backoff_wait_s(attempt, backoff_s, retry_after, max_backoff_s)
        logger.warning("%s: %s; retry %d/%d in %.2f s", url, problem.split(":")[0], attempt + 1, max_retries, wait_s)
        time.sleep(wait_s)
    raise RetriesExhaustedError(f"{url} failed after {max_retries + 1} attempts (last: {problem})", url=url,
                                status=status, problem=problem, attempts=max_retries + 1)
