"""Registry: versioned export of real trained routers, LATEST, verified loading, tamper/mismatch errors, Hub.

The routers are trained for real by the recipes (tests/fixtures/registry_routers.py: MF on RouteLLM MMLU
outcomes prepared by the real data-prep pipeline with the packaged all-MiniLM-L6-v2), once per session.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from routerforge.errors import CheckpointError
from routerforge.registry.publish import publish_checkpoint
from routerforge.registry.publish_validation import validate_checkpoint
from routerforge.registry.register import finalize_export, update_checkpoint, write_calibration
from routerforge.registry.versions import list_versions, read_latest, resolve_local_checkpoint
from routerforge.router import Router
from tests.fixtures import registry_routers as rr

pytestmark = pytest.mark.slow  # the session's first test prepares + embeds the MMLU data (~30 s on 2 cores)

PROBE = ["Which layer of the atmosphere holds the ozone layer?\nA. troposphere\nB. stratosphere\nAnswer:",
         "A ball is thrown straight up. At the top of its path its acceleration is\nA. zero\nB. g downward\nAnswer:"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def mf_export(base) -> Path:
    return rr.trained_export(base, "mf")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_finalize_writes_a_versioned_verified_checkpoint_and_latest(mf_export, tmp_path):
    recipe_manifest = json.loads((mf_export / "manifest.json").read_text())
    version_dir = finalize_export(mf_export, tmp_path / "checkpoints")

    assert version_dir == tmp_path / "checkpoints" / "mf" / "1.0.0"
    assert files_under(version_dir) == {"model.safetensors", "config.json", "manifest.json", "README.md",
                                        "calibration.json"}
    manifest = json.loads((version_dir / "manifest.json").read_text())
    # Every other file is hashed; the model files are the recipe's, bit for bit.
    assert manifest["files"] == {rel: sha256(version_dir / rel) for rel in files_under(version_dir) - {"manifest.json"}}
    for rel in ("model.safetensors", "config.json"):
        assert manifest["files"][rel] == recipe_manifest["files"][rel]
    assert (manifest["router"], manifest["version"], manifest["recipe"]) == ("mf", "1.0.0", "mf")
    for key in ("config", "model_pool", "encoder", "data", "git", "libraries", "metrics"):  # the recipe's record
        assert manifest[key] == recipe_manifest[key]
    assert manifest["encoder"]["revision"].startswith("sha256:") and manifest["data"]["fingerprint"]
    assert set(manifest["model_prices_usd_per_million_tokens"]) == set(manifest["model_pool"])
    assert json.loads((version_dir / "calibration.json").read_text())["calibrations"] == []
    # The model card carries Hub metadata and the pool.
    card = (version_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "routerforge" and "mf" in front["tags"] and front["license"] == "apache-2.0"
    assert front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"  # the encoder the router builds on
    assert "datasets" not in front and "- name: mmlu2" in card  # a local dataset: named in the text, no Hub id
    assert all(model in card for model in manifest["model_pool"])
    assert "## Intended use" in card and "## Limitations" in card
    # publish accepts it as is (its own contract: semver dir, files listed, allowlisted types).
    assert validate_checkpoint(version_dir).version == "1.0.0"

    assert read_latest(tmp_path / "checkpoints" / "mf") == "1.0.0"
    second = finalize_export(mf_export, tmp_path / "checkpoints")
    assert second.name == "1.1.0" and read_latest(second.parent) == "1.1.0"
    assert list_versions(second.parent) == ["1.0.0", "1.1.0"]
    assert resolve_local_checkpoint(second.parent) == second
    assert resolve_local_checkpoint(second.parent / "latest") == second
    third = finalize_export(mf_export, tmp_path / "checkpoints", version="2.0.0")
    assert third.name == "2.0.0" and read_latest(third.parent) == "2.0.0"
    with pytest.raises(CheckpointError, match=r"1\.5\.0 is not higher than the newest .*2\.0\.0; versions only"):
        finalize_export(mf_export, tmp_path / "checkpoints", version="1.5.0")
    with pytest.raises(CheckpointError, match="already exists; versions are immutable"):
        finalize_export(mf_export, tmp_path / "checkpoints", version="2.0.0")
    assert not [p for p in second.parent.iterdir() if p.name.startswith(".tmp")]  # nothing left half-done


def test_finalize_refuses_a_damaged_recipe_export(mf_export, tmp_path):
    damaged = tmp_path / "final"
    shutil.copytree(mf_export, damaged)
    (damaged / "config.json").write_text((damaged / "config.json").read_text().replace("16", "17", 1))
    with pytest.raises(CheckpointError, match=r"sha256 of config\.json differs from manifest\.json"):
        finalize_export(damaged, tmp_path / "checkpoints")
    assert list_versions(tmp_path / "checkpoints" / "final") == []


def test_loading_verifies_files_pool_and_encoder(mf_export, tmp_path):
    good = finalize_export(mf_export, tmp_path / "checkpoints")
    reference = Router.from_pretrained(good).score(PROBE, rr.STRONG, rr.WEAK)

    def variant(name: str) -> Path:
        target = tmp_path / name / "mf" / "1.0.0"
        shutil.copytree(good, target)
        return target

    tampered = variant("tampered")
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-3] ^= 0xFF  # one flipped bit pattern in the last tensor's data
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match=r"sha256 of model\.safetensors differs from manifest\.json: modified "
                                              r"or corrupted after export \(tampered\?\)"):
        Router.from_pretrained(tampered)

    extra = variant("extra")
    (extra / "notes.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"notes\.json not listed in manifest\.json: added after export"):
        Router.from_pretrained(extra)

    missing = variant("missing")
    (missing / "calibration.json").unlink()
    with pytest.raises(CheckpointError, match=r"files listed in manifest\.json are missing: calibration\.json"):
        Router.from_pretrained(missing)

    # Another model pool: config.json (re-hashed, so the sha256 check passes) lists the models in another order.
    other_pool = variant("other_pool")
    config = json.loads((other_pool / "config.json").read_text())
    config["model_pool"] = list(reversed(config["model_pool"]))
    (other_pool / "config.json").write_text(json.dumps(config))
    manifest = json.loads((other_pool / "manifest.json").read_text())
    manifest["files"]["config.json"] = sha256(other_pool / "config.json")
    (other_pool / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="another model pool"):
        Router.from_pretrained(other_pool)

    # Another encoder: the manifest records a revision that is not what this machine's packaged model hashes to.
    other_encoder = variant("other_encoder")
    manifest = json.loads((other_encoder / "manifest.json").read_text())
    manifest["encoder"]["revision"] = "sha256:0000000000000000"
    (other_encoder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"another encoder: .*revision 'sha256:0000000000000000' in the manifest"):
        Router.from_pretrained(other_encoder)

    # The good copy still loads and scores exactly as before.
    np.testing.assert_array_equal(Router.from_pretrained(good).score(PROBE, rr.STRONG, rr.WEAK), reference)


def test_updates_never_bless_a_tampered_file(mf_export, tmp_path):
    version_dir = finalize_export(mf_export, tmp_path / "checkpoints")
    (version_dir / "config.json").write_text((version_dir / "config.json").read_text() + " ")
    entry = {"strong": rr.STRONG, "weak": rr.WEAK, "score": {"kind": "pair", "router_pair": None, "rule": "x"},
             "data": {"prompts_fingerprint": "0" * 64}, "thresholds": []}
    with pytest.raises(CheckpointError, match=r"sha256 of config\.json differs"):
        write_calibration(version_dir, entry)
    assert json.loads((version_dir / "calibration.json").read_text())["calibrations"] == []
    with pytest.raises(CheckpointError, match=r"sha256 of config\.json differs"):
        update_checkpoint(version_dir, {"eval/x.json": b"{}"})
    assert not (version_dir / "eval").exists()


def test_update_checkpoint_rehashes_and_rerenders_the_card(mf_export, tmp_path):
    version_dir = finalize_export(mf_export, tmp_path / "checkpoints")
    entry = {"strong": rr.STRONG, "weak": rr.WEAK,
             "score": {"kind": "pair", "router_pair": None, "rule": "P(strong beats weak)"},
             "data": {"prompts_fingerprint": "ab" * 32, "calibration_prompts": 10, "holdout_prompts": 0},
             "thresholds": [{"strong_share": 0.3, "threshold": 0.512, "tie_fraction": 1.0,
                             "calibration_share": 0.3, "holdout_share": None, "holdout_ci95": None}]}
    manifest = write_calibration(version_dir, entry)
    assert manifest["files"]["calibration.json"] == sha256(version_dir / "calibration.json")
    assert manifest["files"]["README.md"] == sha256(version_dir / "README.md")
    assert manifest["calibration"]["fingerprints"] == {f"{rr.STRONG} over {rr.WEAK}": "ab" * 32}
    assert "| 0.3 | 0.512 | - |" in (version_dir / "README.md").read_text()
    Router.from_pretrained(version_dir)  # still verifies
    validate_checkpoint(version_dir)


def test_publish_then_load_from_the_hub_newest_on_main_and_pinned_by_tag(hub_env, base, mf_export, tmp_path,
                                                                        monkeypatch):
    """The Hub round trip: 1.0.0, then 1.1.0; a bare id loads 1.1.0, a tag pins 1.0.0; a later 1.0.1 leaves main."""
    from huggingface_hub import ModelCard, RepoCard, constants

    repo = "rf-org/mf-router"
    table = rr.eval_table(base)

    def finalize(root: Path, version: str) -> Path:
        return finalize_export(mf_export, root, version=version, eval_outcomes={"mmlu-geo": table}, strong=rr.STRONG,
                               weak=rr.WEAK, gate_set="mmlu-geo", n_bootstrap=20)

    first = publish_checkpoint(finalize(tmp_path / "checkpoints", "1.0.0"), repo, backoff_s=0.01)
    version_dir = finalize(tmp_path / "checkpoints", "1.1.0")
    second = publish_checkpoint(tmp_path / "checkpoints" / "mf", repo, backoff_s=0.01)  # follows LATEST
    assert (first.tag, second.tag) == ("v1.0.0", "v1.1.0")

    local = Router.from_pretrained(version_dir)
    remote = Router.from_pretrained(repo)  # no revision: main, the newest published version
    assert remote.version == "1.1.0" and remote.name == "mf"
    assert remote.path.name == second.main_commit_sha  # the HF cache snapshot of main
    pinned = Router.from_pretrained(repo, revision="v1.0.0")
    assert pinned.version == "1.0.0" and pinned.path.name == first.commit_sha
    np.testing.assert_array_equal(remote.score(PROBE, rr.STRONG, rr.WEAK), local.score(PROBE, rr.STRONG, rr.WEAK))
    assert remote.route(PROBE, threshold=0.5, strong=rr.STRONG, weak=rr.WEAK) == \
        local.route(PROBE, threshold=0.5, strong=rr.STRONG, weak=rr.WEAK)

    # A patch of the older release, published through the Router: tagged, main stays at 1.1.0.
    patch = Router.from_pretrained(finalize(tmp_path / "patches", "1.0.1")).push_to_hub(repo)
    assert patch.tag == "v1.0.1" and patch.main_commit_sha is None
    fresh_cache = tmp_path / "fresh-cache"
    assert Router.from_pretrained(repo, cache_dir=fresh_cache).version == "1.1.0"
    assert Router.from_pretrained(repo, revision="v1.0.1", cache_dir=fresh_cache).version == "1.0.1"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # from the cache alone, no request
    requests_before = len(hub_env.requests)
    assert Router.from_pretrained(repo, cache_dir=fresh_cache, local_files_only=True).version == "1.1.0"
    assert len(hub_env.requests) == requests_before
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    # The card on main, as the Hub serves it: the Hub's validator accepts it; model-index holds the evaluation.
    monkeypatch.setattr(constants, "ENDPOINT", hub_env.url)  # ModelCard.validate posts to constants.ENDPOINT
    card = ModelCard(hub_env.files_at(repo, "main")["README.md"].decode())
    card.validate()
    assert hub_env.requests_matching("POST", "/api/validate-yaml")[-1].status == 200
    assert card.data.library_name == "routerforge" and card.data.license == "apache-2.0"
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.datasets is None  # the sources were local files: no Hub dataset id to name
    evaluation = json.loads((version_dir / "manifest.json").read_text())["evaluations"]["mmlu-geo"]["metrics"]
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {k for k, v in evaluation.items() if v is not None} >= {"apgr", "cpt50", "cpt80"}
    assert all(r.dataset_type == "mmlu-geo" and r.dataset_name == f"mmlu-geo ({rr.STRONG} vs {rr.WEAK})"
               for r in results.values())
    assert results["apgr"].metric_value == pytest.approx(evaluation["apgr"], abs=1e-6)
    # The validator is real: a card whose model-index lacks its metrics is refused.
    # (RepoCard: ModelCard itself would refuse to parse it before asking the Hub.)
    broken = RepoCard(str(card).replace("    metrics:\n", "    metricz:\n"))
    with pytest.raises(ValueError, match=r"results\[0\]\.metrics"):
        broken.validate(repo_type="model")

    with pytest.raises(CheckpointError, match=r"rf-org/mf-router@v9\.9\.9: no such revision on the Hub"):
        Router.from_pretrained(repo, revision="v9.9.9")
    with pytest.raises(CheckpointError, match=r"rf-org/nothing-here: no such model repo"):
        Router.from_pretrained("rf-org/nothing-here", revision="v1.0.0")
    with pytest.raises(CheckpointError, match="applies to Hub ids"):
        Router.from_pretrained(version_dir, revision="v1.0.0")
    # A snapshot in the HF cache is symlinks into its blob store: changing it in place is refused.
    with pytest.raises(CheckpointError, match="symlinks"):
        update_checkpoint(remote.path, {"eval/x.json": b"{}"})
