"""serve.yaml: the typed config of `routerforge serve` (frozen dataclasses, routerforge/config.py conventions).

    host: 127.0.0.1
    port: 8000
    auth_token_env: ROUTERFORGE_SERVE_TOKEN     # clients must send `Authorization: Bearer <token>`; "" = no auth
    max_body_bytes: 1048576
    fallback: other_model                       # upstream timeout / 5xx / unreachable: try the other model once
    routing:
      text: last_user                           # or conversation
      max_batch_size: 32
      max_wait_ms: 2.0
    presets:                                    # model "router-cheap" -> 10% strong, "router-quality" -> 50%
      cheap: {strong_share: 0.1}
      quality: {strong_share: 0.5}
    strong:
      model: gpt-4-1106-preview                 # the router's name for it (calibration.json); "" = the calibrated pair
      base_url_env: STRONG_BASE_URL             # e.g. https://api.openai.com/v1
      api_key_env: STRONG_API_KEY
      upstream_model: gpt-4o
      timeout_s: 60
    weak: {...}

Secrets (the client token, upstream API keys) and upstream addresses are read from the environment variables
named here, never from the file, and never logged.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from routerforge.config import doc
from routerforge.errors import ConfigError

FALLBACK_POLICIES = ("other_model", "none")
ROUTING_TEXTS = ("last_user", "conversation")


@dataclass(frozen=True)
class UpstreamConfig:
    """One OpenAI-compatible endpoint the proxy forwards to."""

    model: str = doc("the router's name for this model (as in the checkpoint's calibration.json); empty: the "
                     "strong (or weak) model of the checkpoint's only calibrated pair", default="")
    base_url_env: str = doc("environment variable holding the endpoint's base URL (ending in /v1)", default="")
    base_url: str = doc("base URL used when base_url_env is empty or unset (not a secret)", default="")
    api_key_env: str = doc("environment variable holding the endpoint's API key (sent as a bearer token); empty: "
                           "no key", default="")
    upstream_model: str = doc("model name the endpoint expects in the request's `model` field; empty: `model`",
                              default="")
    timeout_s: float = doc("seconds to wait for the endpoint to connect, answer or send the next stream chunk",
                           default=60.0)

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"upstream timeout_s must be a positive number of seconds, got {self.timeout_s}")


@dataclass(frozen=True)
class PresetConfig:
    """A routing preset, selected by the request's model name `router-<name>`: exactly one of the two fields."""

    strong_share: float | None = doc("send this fraction of traffic to the strong model (must be calibrated in "
                                     "the checkpoint: `routerforge calibrate`)", default=None)
    threshold: float | None = doc("strong iff the router's score >= this (score units of the router)", default=None)

    def __post_init__(self) -> None:
        if (self.strong_share is None) == (self.threshold is None):
            raise ValueError("a preset sets exactly one of strong_share or threshold")
        if self.strong_share is not None and not 0.0 <= self.strong_share <= 1.0:
            raise ValueError(f"preset strong_share must be a fraction in [0, 1], got {self.strong_share}")


@dataclass(frozen=True)
class RoutingConfig:
    """What the router reads and how requests are batched into the encoder."""

    text: str = doc("text the router scores: last_user (the conversation's last user turn) or conversation "
                    "(every turn, newest kept when over max_chars)", default="last_user")
    max_chars: int = doc("at most this many characters of routing text (the newest); bounds encoder work; the "
                         "encoder itself truncates to its token limit", default=8000)
    max_batch_size: int = doc("at most this many concurrent requests per encoder call (prompts)", default=32)
    max_wait_ms: float = doc("after the first request of a batch, wait at most this long for more (ms)",
                             default=2.0)

    def __post_init__(self) -> None:
        if self.text not in ROUTING_TEXTS:
            raise ValueError(f"routing.text must be one of {', '.join(ROUTING_TEXTS)}, got '{self.text}'")
        if self.max_chars < 1:
            raise ValueError(f"routing.max_chars must be >= 1 (characters), got {self.max_chars}")
        if self.max_batch_size < 1:
            raise ValueError(f"routing.max_batch_size must be >= 1 (prompts), got {self.max_batch_size}")
        if not 0.0 <= self.max_wait_ms <= 1000.0:
            raise ValueError(f"routing.max_wait_ms must be in [0, 1000] (ms), got {self.max_wait_ms}")


@dataclass(frozen=True)
class ServeConfig:
    """`routerforge serve`: where to listen, who may call, where requests go and what happens on failure."""

    host: str = doc("address to listen on (127.0.0.1: this machine only)", default="127.0.0.1")
    port: int = doc("TCP port to listen on (0: any free port)", default=8000)
    auth_token_env: str = doc("environment variable holding the token clients must send as "
                              "`Authorization: Bearer <token>`; empty: no auth", default="")
    max_body_bytes: int = doc("largest request body accepted (bytes); larger ones get 413", default=1_048_576)
    fallback: str = doc("on upstream timeout, 5xx or connection error: other_model (retry once on the other "
                        "model) or none", default="other_model")
    graceful_shutdown_s: int = doc("on SIGTERM/SIGINT, wait at most this long for in-flight requests (whole s)",
                                   default=30)
    routing: RoutingConfig = doc("routing text and encoder batching", default_factory=RoutingConfig)
    presets: dict[str, PresetConfig] = doc("named routing presets: request model `router-<name>`", default_factory=dict)
    strong: UpstreamConfig = doc("the strong (expensive) model's endpoint", default_factory=UpstreamConfig)
    weak: UpstreamConfig = doc("the weak (cheap) model's endpoint", default_factory=UpstreamConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1 (bytes), got {self.max_body_bytes}")
        if self.fallback not in FALLBACK_POLICIES:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACK_POLICIES)}, got '{self.fallback}'")
        if self.graceful_shutdown_s < 1:
            raise ValueError(f"graceful_shutdown_s must be >= 1 (s), got {self.graceful_shutdown_s}")
        for name in self.presets:
            if not name or any(c.isspace() for c in name):
                raise ValueError(f"preset name {name!r} must be non-empty without spaces (model router-<name>)")


def secret_from_env(variable: str, what: str, setting: str) -> str | None:
    """The secret in environment variable `variable` (None when no variable is configured); ConfigError when
    it is configured but unset. The value is never put in any message."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"{what}: the environment variable {variable} is not set; export it, or set {setting} "
                          f"to empty to go without.")
    return value
