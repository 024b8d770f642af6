"""Hub publishing, for real over HTTP: the real huggingface_hub client against the loopback Hub server.

Each test publishes a real checkpoint (safetensors, JSON, markdown, PNG) through `publish_checkpoint`,
which talks HTTP to tests/support/hub_server.py, and checks the result on the server side (refs, stored
files) and by downloading it back with `snapshot_download`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from routerforge.errors import CheckpointError, PublishError
from routerforge.registry.publish import publish_checkpoint
from routerforge.registry.publish_gate import GateMetric, GateRefusedError, check_gate
from routerforge.registry.publish_validation import validate_checkpoint

REPO = "rf-org/mf-router"
FAST = {"backoff_s": 0.01}  # our own retry delay; huggingface_hub's internal retries still wait 1 s each
WRITE_PATHS = r"^/api/(repos/create|models/.+/(preupload|commit|branch|tag)/)"


# ----------------------------------------------------------------------------------------- checkpoints


def reference_tensors(seed: int) -> dict[str, torch.Tensor]:
    """The weights a test checkpoint holds: a tiny matrix-factorisation router's embeddings."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "prompt_proj.weight": torch.randn(8, 16, generator=generator),
        "model_emb.weight": torch.randn(3, 8, generator=generator),
        "classifier.bias": torch.zeros(3),
    }


def write_manifest(checkpoint: Path, *, router: str, version: str, gate: dict | None) -> None:
    """(Re)write manifest.json with the sha256 of every other file, as an export does."""
    files = {
        p.relative_to(checkpoint).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    manifest = {
        "router": router,
        "version": version,
        "recipe": "training/train_mf.py",
        "files": files,
        "metrics": {"apgr": gate["value"] if gate else None, **({"gate": gate} if gate else {})},
    }
    (checkpoint / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Build a small but real checkpoint: safetensors weights, config, model card, calibration, eval JSON + PNG."""

    def build(
        version: str = "1.0.0",
        *,
        router: str = "mf",
        gate_value: float | None = 0.70,
        higher_is_better: bool = True,
        seed: int = 0,
    ) -> Path:
        from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

        checkpoint = tmp_path / "checkpoints" / router / version
        (checkpoint / "eval").mkdir(parents=True)
        save_file(reference_tensors(seed), str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
        (checkpoint / "config.json").write_text(
            json.dumps({"router": router, "embedding_dim": 8, "num_models": 3})
        )
        (checkpoint / "README.md").write_text(
            f"---\nlicense: apache-2.0\nlibrary_name: routerforge\ntags:\n- router\n- {router}\n---\n"
            f"# {router} router {version}\n\nRoutes prompts between a strong and a weak model.\n"
        )
        (checkpoint / "calibration.json").write_text(
            json.dumps({"thresholds": {"0.5": 0.4213}, "seed": seed})
        )
        (checkpoint / "eval" / "report.json").write_text(json.dumps({"apgr": gate_value, "auc": 0.61}))
        figure = Figure(figsize=(2, 2))
        figure.subplots().plot([0, 0.5, 1], [0, 0.6 + 0.01 * seed, 1])
        figure.savefig(checkpoint / "eval" / "curve.png", format="png")
        gate = (
            None
            if gate_value is None
            else {
                "set": "gate-v1",
                "metric": "apgr",
                "value": gate_value,
                "higher_is_better": higher_is_better,
            }
        )
        write_manifest(checkpoint, router=router, version=version, gate=gate)
        return checkpoint

    return build


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def download_tag(hub, tag: str, cache_dir: Path, token: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(REPO, revision=tag, cache_dir=cache_dir, endpoint=hub.url, token=token))


# ----------------------------------------------------------------------------------------- round trip


def test_publish_round_trip_then_next_version(hub_env, hub_token, make_checkpoint, tmp_path):
    first = make_checkpoint("1.0.0", gate_value=0.70, seed=0)
    result = publish_checkpoint(first, REPO, **FAST)

    refs = hub_env.refs(REPO)
    assert result.tag == "v1.0.0" and result.branch == "release-1.0.0"
    assert refs["tags"] == {"v1.0.0": result.commit_sha}
    assert refs["branches"]["release-1.0.0"] == result.commit_sha
    # main holds the newest version too (what a bare from_pretrained(repo_id) and the repo page show).
    assert result.main_commit_sha == refs["branches"]["main"] != result.commit_sha
    assert hub_env.files_at(REPO, "main") == hub_env.files_at(REPO, "v1.0.0")
    assert result.repo_url == f"{hub_env.url}/{REPO}"
    local = sha256_tree(first)
    assert result.verified_files == local
    assert set(local) == {
        "manifest.json", "model.safetensors", "config.json", "README.md", "calibration.json",
        "eval/report.json", "eval/curve.png",
    }  # fmt: skip
    # The branch holds exactly the checkpoint, plus the .gitattributes every Hub repo starts with.
    assert set(hub_env.files_at(REPO, "v1.0.0")) == set(local) | {".gitattributes"}
    failed = [(r.method, r.path, r.status) for r in hub_env.requests if r.status is None or r.status >= 400]
    assert failed == [
        ("GET", f"/api/models/{REPO}/refs", 404)
    ]  # the repo does not exist before the first publish
    assert hub_env.unhandled == []

    # publish -> snapshot_download of the tag -> load.
    snapshot = download_tag(hub_env, "v1.0.0", tmp_path / "download-cache", hub_token)
    assert snapshot.name == result.commit_sha
    assert {k: v for k, v in sha256_tree(snapshot).items() if k != ".gitattributes"} == local
    weights = load_file(str(snapshot / "model.safetensors"))
    expected = reference_tensors(seed=0)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert (manifest["router"], manifest["version"]) == ("mf", "1.0.0")
    assert json.loads((snapshot / "config.json").read_text())["num_models"] == 3

    # A better next version passes the gate, gets its own branch and tag; v1.0.0 is untouched.
    second = make_checkpoint("1.1.0", gate_value=0.74, seed=1)
    result2 = publish_checkpoint(second, REPO, **FAST)
    assert any("promotion gate passed" in note and "0.74" in note and "0.7" in note for note in result2.notes)
    refs = hub_env.refs(REPO)
    assert refs["tags"] == {"v1.0.0": result.commit_sha, "v1.1.0": result2.commit_sha}
    assert result2.commit_sha != result.commit_sha
    assert hub_env.files_at(REPO, "main") == hub_env.files_at(REPO, "v1.1.0")
    assert hub_env.files_at(REPO, "v1.0.0")["model.safetensors"] == (first / "model.safetensors").read_bytes()
    assert (
        hub_env.files_at(REPO, "v1.1.0")["model.safetensors"] == (second / "model.safetensors").read_bytes()
    )
    assert (
        hub_env.files_at(REPO, "v1.1.0")["model.safetensors"]
        != hub_env.files_at(REPO, "v1.0.0")["model.safetensors"]
    )


def test_first_publish_without_gate_prints_a_note(hub_env, make_checkpoint, capsys):
    result = publish_checkpoint(make_checkpoint("0.1.0", gate_value=None), REPO, **FAST)
    assert result.tag == "v0.1.0"
    assert "note: first published version" in capsys.readouterr().out


def test_published_versions_are_immutable_and_an_older_one_never_moves_main(hub_env, make_checkpoint, capsys):
    publish_checkpoint(make_checkpoint("1.0.0", gate_value=0.70), REPO, **FAST)
    newest = make_checkpoint("1.1.0", gate_value=0.74, seed=1)
    publish_checkpoint(newest, REPO, **FAST)
    main_before = hub_env.refs(REPO)["branches"]["main"]
    writes_before = len(hub_env.requests_matching("POST"))
    with pytest.raises(PublishError, match=r"v1\.1\.0 is already published and tags are immutable"):
        publish_checkpoint(newest, REPO, **FAST)
    assert len(hub_env.requests_matching("POST")) == writes_before  # refused before any write
    capsys.readouterr()

    # A patch of the older release: gated against v1.0.0 (the version it follows), tagged, main untouched.
    patch = publish_checkpoint(make_checkpoint("1.0.1", gate_value=0.71, seed=2), REPO, **FAST)
    assert patch.main_commit_sha is None
    assert "0.71 for 1.0.1 vs 0.7 for published v1.0.0" in " ".join(patch.notes)
    out = capsys.readouterr().out
    assert "note: main stays at v1.1.0: 1.0.1 is older, so it is published as v1.0.1 only" in out
    refs = hub_env.refs(REPO)
    assert sorted(refs["tags"]) == ["v1.0.0", "v1.0.1", "v1.1.0"]
    assert refs["branches"]["main"] == main_before
    assert json.loads(hub_env.files_at(REPO, "main")["manifest.json"])["version"] == "1.1.0"


def test_publish_follows_latest_of_a_router_directory(hub_env, make_checkpoint):
    make_checkpoint("1.0.0")
    newest = make_checkpoint("1.2.0", seed=1)
    router_dir = newest.parent
    (router_dir / "LATEST").write_text("1.2.0\n")
    result = publish_checkpoint(router_dir, REPO, **FAST)
    assert result.tag == "v1.2.0"
    assert result.verified_files == sha256_tree(newest)


def test_a_rerun_after_main_failed_only_brings_main_up(hub_env, make_checkpoint):
    publish_checkpoint(make_checkpoint("1.0.0"), REPO, **FAST)
    newer = make_checkpoint("1.1.0", seed=1)
    # The second commit of this publish is the one to main: fail it (403 is not retried).
    hub_env.inject(r"/commit/main$", method="POST", status=403)
    with pytest.raises(PublishError, match=r"update main failed .*v1\.1\.0 is published and verified"):
        publish_checkpoint(newer, REPO, **FAST)
    assert "v1.1.0" in hub_env.refs(REPO)["tags"]
    assert json.loads(hub_env.files_at(REPO, "main")["manifest.json"])["version"] == "1.0.0"

    result = publish_checkpoint(newer, REPO, **FAST)
    assert result.main_commit_sha == hub_env.refs(REPO)["branches"]["main"]
    assert hub_env.files_at(REPO, "main") == hub_env.files_at(REPO, "v1.1.0")


# ----------------------------------------------------------------------------------------- promotion gate


def test_gate_refuses_a_worse_checkpoint_unless_forced(hub_env, make_checkpoint, capsys):
    publish_checkpoint(make_checkpoint("1.0.0", gate_value=0.70), REPO, **FAST)
    worse = make_checkpoint("1.1.0", gate_value=0.65, seed=2)
    writes_before = len(hub_env.requests_matching("POST"))

    with pytest.raises(GateRefusedError) as refused:
        publish_checkpoint(worse, REPO, **FAST)
    message = str(refused.value)
    assert "\n" not in message
    assert "apgr on 'gate-v1' is 0.65 for 1.1.0 vs 0.7 for published v1.0.0 (higher is better)" in message
    assert "--force" in message
    assert len(hub_env.requests_matching("POST")) == writes_before  # no repo, branch, commit or tag calls
    assert "release-1.1.0" not in hub_env.refs(REPO)["branches"]

    forced = publish_checkpoint(worse, REPO, force=True, **FAST)
    assert "publishing anyway (--force)" in capsys.readouterr().out
    assert hub_env.refs(REPO)["tags"]["v1.1.0"] == forced.commit_sha


def test_gate_reads_the_highest_semver_tag_not_the_latest_created(hub_env, make_checkpoint):
    publish_checkpoint(make_checkpoint("1.2.0", gate_value=0.70), REPO, **FAST)
    # v1.10.0 > v1.2.0 in semver (but not as strings); a gate-less 1.11.0 is then refused against v1.10.0.
    publish_checkpoint(make_checkpoint("1.10.0", gate_value=0.80), REPO, **FAST)
    with pytest.raises(GateRefusedError, match=r"0\.75 for 1\.11\.0 vs 0\.8 for published v1\.10\.0"):
        publish_checkpoint(make_checkpoint("1.11.0", gate_value=0.75), REPO, **FAST)


G = GateMetric("gate-v1", "apgr", 0.70, True)


@pytest.mark.parametrize(
    ("new", "published", "published_version", "outcome"),
    [
        (GateMetric("gate-v1", "apgr", 0.71, True), G, "1.0.0", "passed"),
        (GateMetric("gate-v1", "apgr", 0.70, True), G, "1.0.0", "passed"),  # equal is not worse
        (GateMetric("gate-v1", "apgr", 0.69, True), G, "1.0.0", "refused"),
        (
            GateMetric("gate-v1", "cost", 0.9, False),
            GateMetric("gate-v1", "cost", 1.0, False),
            "1.0.0",
            "passed",
        ),
        (
            GateMetric("gate-v1", "cost", 1.1, False),
            GateMetric("gate-v1", "cost", 1.0, False),
            "1.0.0",
            "refused",
        ),
        (GateMetric("gate-v2", "apgr", 0.90, True), G, "1.0.0", "refused"),  # other set: not comparable
        (None, G, "1.0.0", "refused"),  # dropping the gate is no way around it
        (None, None, None, "first"),
        (G, None, "1.0.0", "unchecked"),  # published manifest predates the gate
    ],
)
def test_gate_rules(new, published, published_version, outcome):
    if outcome == "refused":
        with pytest.raises(GateRefusedError, match="--force"):
            check_gate(new, "1.1.0", published, published_version, force=False)
        assert "--force" in check_gate(new, "1.1.0", published, published_version, force=True)[0]
        return
    notes = check_gate(new, "1.1.0", published, published_version, force=False)
    expected = {
        "passed": "promotion gate passed",
        "first": "first published version",
        "unchecked": "not checked",
    }
    assert expected[outcome] in notes[0]


def test_malformed_gate_is_a_checkpoint_error(make_checkpoint):
    checkpoint = make_checkpoint("1.0.0")
    gate = {"set": "gate-v1", "metric": "apgr", "value": "high", "higher_is_better": "yes"}
    write_manifest(checkpoint, router="mf", version="1.0.0", gate=gate)
    with pytest.raises(
        CheckpointError,
        match=r"manifest\.json: metrics\.gate: 'value' must be a finite number.*'higher_is_better'",
    ):
        validate_checkpoint(checkpoint)


# ----------------------------------------------------------------------------------------- local validation


def _add_pickle_and_bin(checkpoint: Path) -> None:
    (checkpoint / "optimizer.pkl").write_bytes(b"\x80\x04\x95not really a pickle")
    (checkpoint / "eval" / "weights.bin").write_bytes(b"\x00" * 16)


def _rename_pickle_as_safetensors(checkpoint: Path) -> None:
    torch.save(
        {"w": torch.zeros(2)}, checkpoint / "model.safetensors"
    )  # a zip/pickle under a safetensors name
    write_manifest(checkpoint, router="mf", version="1.0.0", gate=None)


def _tamper_after_export(checkpoint: Path) -> None:
    (checkpoint / "calibration.json").write_text('{"thresholds": {"0.5": 0.99}}')


def _unlisted_file(checkpoint: Path) -> None:
    (checkpoint / "eval" / "extra.json").write_text("{}")


def _manifest_version_mismatch(checkpoint: Path) -> None:
    write_manifest(checkpoint, router="mf", version="1.0.1", gate=None)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            _add_pickle_and_bin,
            r"refusing to publish 2 file\(s\) of a type that is never published: eval/weights\.bin, "
            r"optimizer\.pkl\. Only safetensors",
        ),
        (_rename_pickle_as_safetensors, r"model\.safetensors: not a safetensors file"),
        (_tamper_after_export, r"sha256 differs from manifest\.json for calibration\.json"),
        (_unlisted_file, r"files not listed in manifest\.json 'files': eval/extra\.json"),
        (_manifest_version_mismatch, r"version 1\.0\.1 does not match its directory 1\.0\.0/"),
    ],
)
def test_bad_checkpoints_are_refused_before_any_http_call(hub_env, make_checkpoint, damage, expected):
    checkpoint = make_checkpoint("1.0.0")
    damage(checkpoint)
    with pytest.raises(CheckpointError, match=expected) as refused:
        publish_checkpoint(checkpoint, REPO, **FAST)
    assert "\n" not in str(refused.value)
    assert hub_env.requests == []


def test_token_inside_the_checkpoint_is_refused(hub_env, hub_token, make_checkpoint):
    checkpoint = make_checkpoint("1.0.0")
    (checkpoint / "config.json").write_text(json.dumps({"hub_token": hub_token}))
    write_manifest(checkpoint, router="mf", version="1.0.0", gate=None)
    with pytest.raises(CheckpointError, match=r"the Hub token occurs in config\.json") as refused:
        publish_checkpoint(checkpoint, REPO, **FAST)
    assert hub_token not in str(refused.value)
    assert hub_env.requests == []


def test_offline_mode_is_refused_with_a_clear_line(make_checkpoint):
    # tests/conftest.py sets HF_HUB_OFFLINE=1 (no hub_env here): refused locally, not by a connection error.
    with pytest.raises(PublishError, match=r"^HF_HUB_OFFLINE is set: publishing must reach the Hub"):
        publish_checkpoint(make_checkpoint("1.0.0"), REPO, token="hf_dummy", endpoint="http://127.0.0.1:9")


def test_missing_token_is_refused(hub_env, make_checkpoint, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    with pytest.raises(PublishError, match=r"^no Hugging Face token: set HF_TOKEN"):
        publish_checkpoint(make_checkpoint("1.0.0"), REPO, **FAST)
    assert hub_env.requests == []


@pytest.mark.parametrize("repo_id", ["mf-router", "a/b/c", "org/bad name", "org/x--y", "-org/x"])
def test_bad_repo_id_is_refused(hub_env, make_checkpoint, repo_id):
    with pytest.raises(PublishError, match=r"expected ORG/NAME"):
        publish_checkpoint(make_checkpoint("1.0.0"), repo_id, **FAST)
    assert hub_env.requests == []


# ----------------------------------------------------------------------------------------- faults


def test_injected_5xx_errors_are_retried(hub_env, make_checkpoint):
    faults = [
        hub_env.inject(r"^/api/repos/create$", method="POST", status=503),  # not retried by the client: ours
        hub_env.inject(r"/branch/", method="POST", status=500),
        hub_env.inject(
            r"^/api/validate-yaml$", method="POST", status=502, html_body=True
        ),  # gateway HTML page
        hub_env.inject(r"/commit/", method="POST", status=503),  # retried inside huggingface_hub
        hub_env.inject(r"/tag/", method="POST", status=503),
        hub_env.inject(r"/resolve/.+/model\.safetensors$", method="GET", status=503),  # verification download
    ]
    result = publish_checkpoint(make_checkpoint("1.0.0"), REPO, **FAST)

    assert [f.hits for f in faults] == [1] * len(faults)
    assert result.attempts == {
        "list published versions": 1, "create repo": 2, "create branch": 2, "upload": 2, "create tag": 2, "verify": 2,
        "update main": 1, "verify main": 1,
    }  # fmt: skip
    assert hub_env.refs(REPO)["tags"] == {"v1.0.0": result.commit_sha}
    assert len(hub_env.requests_matching("POST", "/commit/release-1.0.0")) == 2
    assert len(hub_env.requests_matching("POST", "/commit/main")) == 1


def test_dropped_connections_are_retried(hub_env, make_checkpoint):
    faults = [
        hub_env.inject(r"^/api/repos/create$", method="POST", drop=True),
        hub_env.inject(r"/preupload/", method="POST", drop=True),
        # The commit is applied but its response is lost; huggingface_hub re-sends it (a second, identical commit).
        hub_env.inject(r"/commit/", method="POST", drop=True, after_handling=True),
        hub_env.inject(
            r"/tag/", method="POST", drop=True, after_handling=True
        ),  # tag made, answer lost: 409 on retry
        hub_env.inject(r"/resolve/.+/config\.json$", method="HEAD", drop=True),  # escapes snapshot_download
        hub_env.inject(r"/resolve/.+/model\.safetensors$", method="GET", drop=True),  # resumed by the client
    ]
    checkpoint = make_checkpoint("1.0.0")
    result = publish_checkpoint(checkpoint, REPO, **FAST)

    assert [f.hits for f in faults] == [1] * len(faults)
    assert [r.status for r in hub_env.requests_matching("POST", "/tag/")] == [None, 409]
    assert result.attempts["create repo"] == 2 and result.attempts["create tag"] == 2
    assert result.attempts["verify"] == 2
    commits = hub_env.requests_matching("POST", "/commit/release-1.0.0")
    assert [r.status for r in commits] == [None, 200]
    refs = hub_env.refs(REPO)
    assert (
        refs["tags"] == {"v1.0.0": result.commit_sha}
        and refs["branches"]["release-1.0.0"] == result.commit_sha
    )
    assert result.verified_files == sha256_tree(checkpoint)


def test_persistent_failure_before_upload_is_bounded_and_tags_nothing(hub_env, make_checkpoint):
    fault = hub_env.inject(r"/branch/", method="POST", status=500, times=None)
    with pytest.raises(PublishError) as failed:
        publish_checkpoint(make_checkpoint("1.0.0"), REPO, max_retries=2, **FAST)
    message = str(failed.value)
    assert "create branch failed after 3 attempt(s) (transient error, retries exhausted): HTTP 500" in message
    assert "Nothing was tagged" in message and "\n" not in message
    assert fault.hits == 3
    assert hub_env.requests_matching("POST", "/commit/") == []
    assert hub_env.refs(REPO)["tags"] == {}


@pytest.mark.slow  # huggingface_hub retries a failing commit 5 times itself (1 s each with Retry-After: 0): ~10 s
def test_persistent_upload_failure_creates_no_tag(hub_env, make_checkpoint):
    fault = hub_env.inject(r"/commit/", method="POST", status=503, times=None, retry_after_s=0)
    with pytest.raises(
        PublishError,
        match=r"upload failed after 2 attempt\(s\) \(transient error, retries exhausted\): HTTP 503",
    ):
        publish_checkpoint(make_checkpoint("1.0.0"), REPO, max_retries=1, **FAST)
    assert fault.hits == 2 * 6  # our 2 attempts x (1 + 5 retries inside huggingface_hub)
    assert hub_env.requests_matching("POST", "/tag/") == []
    refs = hub_env.refs(REPO)
    assert refs["tags"] == {}
    assert refs["branches"]["release-1.0.0"] == refs["branches"]["main"]  # nothing committed


def test_client_error_fails_fast_and_a_rerun_resumes(hub_env, make_checkpoint):
    checkpoint = make_checkpoint("1.0.0")
    hub_env.inject(r"/commit/", method="POST", status=403)
    with pytest.raises(
        PublishError,
        match=r"upload failed after 1 attempt\(s\) \(not retried\): HTTP 403.*write access to 'rf-org'",
    ):
        publish_checkpoint(checkpoint, REPO, **FAST)
    assert len(hub_env.requests_matching("POST", "/commit/")) == 1
    assert hub_env.refs(REPO)["tags"] == {}

    result = publish_checkpoint(checkpoint, REPO, **FAST)  # same command again: branch exists, upload resumes
    assert hub_env.refs(REPO)["tags"] == {"v1.0.0": result.commit_sha}


def test_corrupted_download_fails_verification_and_removes_the_tag(hub_env, make_checkpoint):
    hub_env.inject(r"/resolve/.+/model\.safetensors$", method="GET", corrupt=True, times=None)
    with pytest.raises(
        PublishError,
        match=r"v1\.0\.0 failed verification \(sha256 differs for model\.safetensors\); the tag was deleted",
    ):
        publish_checkpoint(make_checkpoint("1.0.0"), REPO, **FAST)
    refs = hub_env.refs(REPO)
    assert refs["tags"] == {}
    assert "release-1.0.0" in refs["branches"]  # the upload stays on its branch for inspection


# ----------------------------------------------------------------------------------------- token hygiene


def test_token_is_sent_but_never_written_printed_or_logged(
    hub_env, hub_token, make_checkpoint, tmp_path, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    result = publish_checkpoint(make_checkpoint("1.0.0"), REPO, **FAST)  # token=None: taken from HF_TOKEN
    hub_env.inject(r"/commit/", method="POST", status=401)
    with pytest.raises(PublishError) as failed:
        publish_checkpoint(make_checkpoint("1.1.0", gate_value=0.9), REPO, **FAST)

    writes = hub_env.requests_matching(None, WRITE_PATHS)
    assert len(writes) >= 8
    assert all(r.authorization() == f"Bearer {hub_token}" for r in writes)
    secret = hub_token.encode()
    assert not any(secret in r.body for r in hub_env.requests)
    assert not any(secret in stored for stored in hub_env.stored_texts())
    assert result.verified_files  # the publish that succeeded really did upload
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert written and not [p for p in written if secret in p.read_bytes()]
    captured = capsys.readouterr()
    assert hub_token not in captured.out + captured.err
    assert not [r for r in caplog.records if hub_token in r.getMessage()]
    chain, error = [], failed.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert len(chain) >= 2 and not [e for e in chain if hub_token in f"{e!s} {e!r}"]


# ----------------------------------------------------------------------------------------- command line


def test_cli_publishes_with_hf_endpoint_and_hf_token_from_the_environment(
    hub_env, hub_token, make_checkpoint, tmp_path
):
    checkpoint = make_checkpoint("2.0.0")
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_env.url,  # read by a fresh process at import: the path a user takes
        "HF_TOKEN": hub_token,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "cli_hf_home"),
    }
    command = [
        sys.executable,
        "-m",
        "routerforge.registry.publish",
        str(checkpoint),
        "--repo",
        REPO,
        "--private",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"published {REPO} v2.0.0 (branch release-2.0.0" in done.stdout
    assert "7 files verified by sha256" in done.stdout
    assert hub_token not in done.stdout + done.stderr
    assert hub_env.repo(REPO).private is True
    assert "v2.0.0" in hub_env.refs(REPO)["tags"]

    (checkpoint / "model.pt").write_bytes(b"pickle")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {checkpoint}: refusing to publish 1 file(s) of a type that is never published: model.pt."
        " Only safetensors, JSON, markdown, PNG and tokenizer files are published; remove these (save weights"
        " with safetensors)."
    ]


def test_upload_branch_holds_exactly_the_checkpoint(hub_env, hub_token, make_checkpoint):
    from huggingface_hub import HfApi

    # The default branch already has a file of its own (a user's notes); --branch starts from it.
    api = HfApi(endpoint=hub_env.url, token=hub_token)
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"old notes\n", path_in_repo="notes/old.txt", repo_id=REPO)
    checkpoint = make_checkpoint("1.0.0")
    result = publish_checkpoint(checkpoint, REPO, branch="staging", **FAST)

    assert result.branch == "staging"
    assert hub_env.refs(REPO)["branches"]["staging"] == result.commit_sha
    assert set(hub_env.files_at(REPO, "v1.0.0")) == set(sha256_tree(checkpoint)) | {".gitattributes"}
    # main then holds exactly the newest version: what from_pretrained(REPO) downloads.
    assert hub_env.files_at(REPO, "main") == hub_env.files_at(REPO, "v1.0.0")
    with pytest.raises(PublishError, match="--branch 'main': not a valid upload branch"):
        publish_checkpoint(make_checkpoint("1.1.0", seed=1), REPO, branch="main", **FAST)
