"""tracking.wandb_mode=auto with a key set: online only when the W&B host really answers HTTP in time."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from routerforge.train.run_config import TrackingConfig
from routerforge.train.tracking import resolve_wandb_mode


@pytest.fixture
def key_set(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    return monkeypatch


class NotFound(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_host_that_answers_even_404_means_online(key_set):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key_set.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
        assert resolve_wandb_mode(TrackingConfig()) == "online"
    finally:
        server.shutdown()
        server.server_close()


def test_a_dead_port_means_offline_at_once(key_set):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens
    key_set.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    assert resolve_wandb_mode(TrackingConfig()) == "offline"
    assert time.monotonic() - started < 2


def test_a_host_that_accepts_but_never_answers_means_offline_within_the_probe_timeout(key_set):
    # A TCP connect succeeds here; only an HTTP-level probe tells that W&B would hang.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        key_set.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        assert resolve_wandb_mode(TrackingConfig()) == "offline"
        assert time.monotonic() - started < 6


def test_no_key_or_an_explicit_mode_never_probes(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert resolve_wandb_mode(TrackingConfig()) == "offline"
    assert resolve_wandb_mode(TrackingConfig(wandb_mode="disabled")) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode(TrackingConfig(wandb_mode="online")) == "offline"
