"""W&B unreachable, and secrets never written.

W&B unreachable: WANDB_API_KEY is set (so `tracking.wandb_mode=auto` would go online) but WANDB_BASE_URL
points at (a) a dead loopback port (connection refused) or (b) a loopback server that accepts connections
and never answers. training/train_mf.py must finish within the offline baseline's time + 60 s, in W&B
offline mode, with every logged metric kept in the local run file (read back record by record).

Secrets: sentinel HF_TOKEN and WANDB_API_KEY values are in the environment of those runs; no file they
write may contain them (raw or base64): logs (stdout/stderr), the wandb directory, step checkpoints, the
export, and the registry checkpoint with its model card made from that export. HOME, TMPDIR and the
W&B/HF cache and config directories point into the test's directory so that "every file" is every file.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.recipe_runner import PYTHON, REPO_ROOT, free_port, read_export, recipe_env
from tests.fixtures.tiny_dataset import build_tiny_dataset
from tests.reliability.wandb_offline_log import history_rows

CONFIG = "configs/mf/tiny.yaml"
SCRIPT = "training/train_mf.py"
HF_TOKEN_SENTINEL = "hf_RouterForgeSentinelToken0123456789abcd"
WANDB_KEY_SENTINEL = "rfsentinel" + "0123456789abcdef0123456789"[:30]  # W&B keys are 40 characters
SLACK_S = 60


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"), n_pairs=200)


class SilentServer:
    """Accepts TCP connections on loopback and never sends a byte (a hung proxy or half-dead host)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self.stopped = True
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.sock.close()


def timed_runs(data_dir, runs: dict[str, tuple[Path, dict]]) -> dict[str, float]:
    """Start every run at once (out dir, env), wait for all; {name: seconds from start to exit}. Started together,
    they share the CPU alike, so each unreachable-W&B run is timed against a baseline slowed the same way; the
    stall this guards against (~40 s waiting for an answer) does not shrink under load."""
    procs, logs, ended = {}, [], {}
    started = time.monotonic()
    for name, (out, env) in runs.items():
        out.mkdir(parents=True, exist_ok=True)
        cmd = [PYTHON, str(REPO_ROOT / SCRIPT), "--config", str(REPO_ROOT / CONFIG), f"data.path={data_dir}",
               f"run.output_dir={out}", "tracking.report_to=wandb", "tracking.wandb_mode=auto",
               "checkpoint.every_optimizer_steps=7"]
        logs += [open(out / "stdout.log", "w"), open(out / "stderr.log", "w")]  # noqa: SIM115 (closed below)
        procs[name] = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=logs[-2], stderr=logs[-1])
    deadline = started + 600
    while len(ended) < len(procs) and time.monotonic() < deadline:
        for name, proc in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.monotonic() - started
        time.sleep(0.05)
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    for log in logs:
        log.close()
    for name, (out, _) in runs.items():
        assert procs[name].returncode == 0, (name, (out / "stderr.log").read_text()[-3000:])
    return ended


def env_with_key(home: Path, base_url: str) -> dict:
    env = recipe_env(WANDB_API_KEY=WANDB_KEY_SENTINEL, HF_TOKEN=HF_TOKEN_SENTINEL, WANDB_BASE_URL=base_url,
                     HOME=str(home), TMPDIR=str(home / "tmp"), WANDB_CACHE_DIR=str(home / "wandb-cache"),
                     WANDB_CONFIG_DIR=str(home / "wandb-config"), WANDB_DATA_DIR=str(home / "wandb-data"),
                     HF_HOME=str(home / "hf"))
    del env["WANDB_MODE"]  # let tracking.wandb_mode=auto decide, as on a user's machine with a key
    (home / "tmp").mkdir(parents=True)
    return env


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """{name: (out dir, seconds)} for the offline baseline, the dead port and the silent server."""
    root = tmp_path_factory.mktemp("tracking")
    dead_port = free_port()  # bound then released: nothing listens there
    server = SilentServer()
    try:
        results = timed_runs(tiny_data, {
            "baseline": (root / "baseline", recipe_env()),
            "dead_port": (root / "dead_port", env_with_key(root / "home-dead", f"http://127.0.0.1:{dead_port}")),
            "silent_server": (root / "silent_server",
                              env_with_key(root / "home-silent", f"http://127.0.0.1:{server.port}"))})
    finally:
        server.close()
    return root, results


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dead_port", "silent_server"])
def test_unreachable_wandb_falls_back_offline_in_time_and_keeps_metrics(runs, case):
    root, seconds = runs
    assert seconds[case] <= seconds["baseline"] + SLACK_S, (f"{case}: {seconds[case]:.1f} s vs "
                                                            f"{seconds['baseline']:.1f} s")
    run_dir = root / case / "mf" / "mf-tiny"
    _, _, manifest = read_export(run_dir / "final")
    tracking = manifest["tracking"]
    assert tracking["tracker"] == "wandb" and tracking["mode"] == "offline"
    offline_dir = Path(tracking["local_dir"])
    assert offline_dir.parent == run_dir / "wandb" and offline_dir.name.endswith(tracking["run_id"])
    assert f"wandb sync {offline_dir}" in (root / case / "stdout.log").read_text()
    # Every logged step is in the local run file, with the values the manifest recorded.
    rows = [row for row in history_rows(offline_dir / f"run-{tracking['run_id']}.wandb") if "train/loss" in row]
    history = manifest["training"]["loss_history"]
    assert [row["_step"] for row in rows] == [h["optimizer_step"] for h in history] == list(range(1, 22))
    assert [row["train/loss"] for row in rows] == pytest.approx([h["train_loss"] for h in history], rel=1e-6)
    assert [row["train/lr"] for row in rows] == [h["lr"] for h in history]


def _needles() -> dict[str, bytes]:
    needles = {}
    for name, secret in (("HF_TOKEN", HF_TOKEN_SENTINEL), ("WANDB_API_KEY", WANDB_KEY_SENTINEL)):
        needles[name] = secret.encode()
        needles[f"{name} (base64)"] = base64.b64encode(secret.encode())[:-4]  # a prefix: any alignment of the tail
    return needles


@pytest.mark.slow
def test_tokens_never_appear_in_any_file_written(runs, tmp_path):
    from routerforge.registry.register import finalize_export

    root, _ = runs
    # The model card: the registry checkpoint made from the run's export (README.md, manifest, calibration).
    for case in ("dead_port", "silent_server"):
        finalize_export(root / case / "mf" / "mf-tiny" / "final", root / case / "registry")
    files = [p for case in ("dead_port", "silent_server") for base in (root / case, root / f"home-{case.split('_')[0]}")
             for p in base.rglob("*") if p.is_file() and not p.is_symlink()]
    names = {p.name for p in files}
    # The scan covers what it must: logs, the W&B run, checkpoints, export, model card.
    for expected in ("stdout.log", "stderr.log", "output.log", "debug.log", "optimizer.bin", "random_states_0.pkl",
                     "model.safetensors", "manifest.json", "README.md", "trainer_state.json", "COMPLETE"):
        assert expected in names, f"{expected} was not written, so it was not scanned"
    assert any(p.suffix == ".wandb" for p in files)
    leaks = [f"{p} contains {what}" for p in files for what, needle in _needles().items() if needle in p.read_bytes()]
    assert not leaks, "\n".join(leaks)
