"""Fixtures for registry tests: the loopback Hub server and an environment that points huggingface_hub at it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ is on sys.path (pytest's rootdir-relative import of tests/conftest.py), under `pytest` and `python -m pytest`.
from support.hub_server import HubServer

HUB_USER = "rf-tester"


@pytest.fixture
def hub_token() -> str:
    """A token that exists only for this test: if it shows up anywhere but an Authorization header, it leaked."""
    return f"hf_rfsentinel{secrets.token_hex(16)}"


@pytest.fixture
def hub_server(hub_token: str) -> Iterator[HubServer]:
    with HubServer(tokens={hub_token: HUB_USER}) as server:
        yield server


@pytest.fixture
def hub_env(
    hub_server: HubServer, hub_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> HubServer:
    """Point the real huggingface_hub client at the loopback server, online, with the sentinel token in HF_TOKEN.

    tests/conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, and huggingface_hub reads it
    once, into `constants.HF_HUB_OFFLINE`; flip that constant back for this test (monkeypatch restores it).
    HF_HOME goes to tmp so that anything the client might write lands where the token scan looks.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", hub_token)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return hub_server
