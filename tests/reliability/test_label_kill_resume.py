"""SIGKILL in the middle of `routerforge label`, then a re-run: the label set is byte-identical to an
uninterrupted run's, no recorded call is made again (calls counted on the loopback endpoint), and the
only calls repeated are the ones that were in flight when the process died."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from routerforge.config import load_config
from routerforge.label.config import LabelConfig
from routerforge.label.run import run_label
from tests.support.fake_chat_endpoint import FakeChatEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "label"))
from label_testlib import API_KEY, BASE_URL_ENV, KEY_ENV, tree_bytes, write_config, write_prompts  # noqa: E402

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
N_PROMPTS = 12
N_CALLS = N_PROMPTS * 4  # 2 answers + 2 single-grade judgements per prompt
CONCURRENCY = 4


def _recorded(cache: Path, read_only: bool = True) -> int:
    """Rows in the call cache. After the kill, open read-write: that runs SQLite's WAL recovery, which
    a read-only connection skips (a commit fsynced just before the kill is then visible too)."""
    if not cache.exists():
        return 0
    try:
        uri = f"file:{cache}?mode=ro" if read_only else f"file:{cache}"
        with sqlite3.connect(uri, uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def _call_key(call: dict) -> str:
    return json.dumps([call["model"], call["messages"]], sort_keys=True)


def test_sigkill_mid_run_then_resume_gives_the_same_label_set(tmp_path, monkeypatch):
    rows = [{"prompt_id": f"q{i}", "prompt": f"Question number {i}: what is {i}+{i}?"} for i in range(N_PROMPTS)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", rows)
    (tmp_path / "killed").mkdir()
    (tmp_path / "reference").mkdir()
    killed_cfg = write_config(tmp_path / "killed", prompts, mode="single")
    reference_cfg = write_config(tmp_path / "reference", prompts, mode="single")
    with FakeChatEndpoint(API_KEY) as fake:
        monkeypatch.setenv(BASE_URL_ENV, fake.base_url)
        monkeypatch.setenv(KEY_ENV, API_KEY)
        reference, _ = run_label(load_config(LabelConfig, reference_cfg))
        assert len(fake.answered) == N_CALLS
        fake.answered.clear()
        requests_before = fake.requests

        fake.delay_s = 0.08  # slow replies, so the kill lands with calls recorded and calls in flight
        cache = tmp_path / "killed" / "cache.sqlite"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "routerforge.cli", "label", "--config", str(killed_cfg)],
                                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while _recorded(cache) < N_CALLS // 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        recorded = _recorded(cache, read_only=False)
        in_flight = fake.requests - requests_before - recorded  # arrived at the endpoint, reply never recorded
        time.sleep(fake.delay_s + 0.2)  # the endpoint finishes the replies nobody reads any more
        assert N_CALLS // 3 <= recorded < N_CALLS
        assert not (tmp_path / "killed" / "labels" / "mine").exists()  # nothing half-written

        fake.delay_s = 0.0
        before_resume = len(fake.answered)
        resumed, stats = run_label(load_config(LabelConfig, killed_cfg))

    # The resumed run made exactly the calls not recorded before the kill, each once; with the calls
    # made before the kill they cover every call once, so no recorded call was made again. The only
    # calls made twice are those in flight at the kill (at most every endpoint's slots).
    assert (stats.cached_calls, stats.new_calls) == (recorded, N_CALLS - recorded)
    resumed_keys = [_call_key(c) for c in fake.answered[before_resume:]]
    assert len(resumed_keys) == len(set(resumed_keys)) == N_CALLS - recorded
    assert len({_call_key(c) for c in fake.answered}) == N_CALLS
    assert 0 <= in_flight <= 3 * CONCURRENCY  # 3 endpoints x max_concurrency
    assert tree_bytes(resumed) == tree_bytes(reference)
