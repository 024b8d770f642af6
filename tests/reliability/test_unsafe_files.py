"""A pickle payload where weights are expected is refused, unread: nothing RouterForge loads is unpickled.

The payload, when unpickled, creates a marker file (a stand-in for arbitrary code). Every test checks the
loader raised a named RouterForge error AND the marker never appeared. Placements:
- an export's model.safetensors (torch.save zip, raw pickle, garbage), with or without its manifest sha256
  updated to match (an attacker who rewrites both): `load_export_weights`, MF and cluster
  `init.from_export`, and the registry's `Router.from_pretrained`;
- a step checkpoint's random_states_0.pkl: accelerate reads those with torch.load(weights_only=False), so
  a resume refuses any checkpoint file whose sha256 differs from the one recorded in COMPLETE at save time.
  (Step checkpoints are trusted input written by the run itself; docs/running_at_scale.md says so.)
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from routerforge.errors import CheckpointError, RouterForgeError
from routerforge.io.safetensors_file import UnsafeWeightsError, load_export_weights
from routerforge.train.checkpointing import CorruptCheckpointError
from tests.fixtures.recipe_runner import REPO_ROOT, run_recipe, run_recipe_in_process
from tests.fixtures.tiny_dataset import build_tiny_dataset

CONFIG = "configs/mf/tiny.yaml"


class Payload:
    """Unpickling this calls open(marker, "w"): proof that the file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path: Path, kind: str, marker: Path) -> None:
    if kind == "torch_save_zip":
        torch.save({"P.weight": Payload(marker)}, path)
    elif kind == "pickle_protocol_2":
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    elif kind == "pickle_protocol_5":
        path.write_bytes(pickle.dumps(Payload(marker), protocol=5))
    else:
        path.write_bytes(b"\x00" * 64)


def match_manifest(export_dir: Path) -> None:
    """What an attacker who can write the export would also do: re-record the weights' sha256."""
    manifest_path = export_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.safetensors"] = hashlib.sha256((export_dir / "model.safetensors").read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"), n_pairs=200)


@pytest.fixture(scope="module")
def mf_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mf")
    run_recipe_in_process("train_mf", ["--config", str(REPO_ROOT / CONFIG), f"data.path={tiny_data}",
                                       f"run.output_dir={out}", "run.max_optimizer_steps=4",
                                       "checkpoint.every_optimizer_steps=2", "checkpoint.keep_last=5"])
    return out / "mf" / "mf-tiny"


@pytest.fixture
def poisoned_export(mf_run, tmp_path):
    def make(kind: str, manifest_matches: bool) -> tuple[Path, Path]:
        export_dir = tmp_path / f"export-{kind}-{manifest_matches}"
        shutil.copytree(mf_run / "final", export_dir)
        marker = tmp_path / f"UNPICKLED-{kind}"
        write_payload(export_dir / "model.safetensors", kind, marker)
        if manifest_matches:
            match_manifest(export_dir)
        return export_dir, marker
    return make


KINDS = ["torch_save_zip", "pickle_protocol_2", "pickle_protocol_5", "garbage"]


@pytest.mark.parametrize("manifest_matches", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_load_export_weights_refuses_anything_but_safetensors(poisoned_export, kind, manifest_matches):
    export_dir, marker = poisoned_export(kind, manifest_matches)
    with pytest.raises(UnsafeWeightsError) as info:
        load_export_weights(export_dir)
    message = str(info.value)
    assert message.startswith(f"{export_dir / 'model.safetensors'}: refused, the file is ")
    expected = {"torch_save_zip": "a zip archive (torch.save's format: pickled Python objects)",
                "pickle_protocol_2": "a Python pickle", "pickle_protocol_5": "a Python pickle",
                "garbage": "not safetensors (no valid header)"}[kind]
    assert expected in message and "never unpickles" in message and "\n" not in message
    assert not marker.exists()


def test_a_real_export_loads_and_a_modified_one_is_refused(mf_run, tmp_path):
    weights = load_export_weights(mf_run / "final")
    assert set(weights) == {"P.weight", "text_proj.weight", "classifier.weight"}
    export_dir = tmp_path / "export"
    shutil.copytree(mf_run / "final", export_dir)
    from safetensors.torch import save_file
    save_file({k: v + 1 for k, v in weights.items()}, str(export_dir / "model.safetensors"))  # valid, but not ours
    with pytest.raises(CheckpointError, match="sha256 differs from .*manifest.json"):
        load_export_weights(export_dir)


def test_mf_init_from_export_refuses_a_pickle(poisoned_export, tiny_data, tmp_path):
    export_dir, marker = poisoned_export("torch_save_zip", True)
    with pytest.raises(UnsafeWeightsError, match="refused, the file is a zip archive"):
        run_recipe_in_process("train_mf", ["--config", str(REPO_ROOT / CONFIG), f"data.path={tiny_data}",
                                           f"run.output_dir={tmp_path}", f"init.from_export={export_dir}",
                                           "run.name=extended"])
    assert not marker.exists() and not (tmp_path / "mf" / "extended" / "final").exists()


@pytest.mark.slow
def test_mf_init_from_export_with_a_pickle_exits_2_with_one_line(poisoned_export, tiny_data, tmp_path):
    export_dir, marker = poisoned_export("pickle_protocol_5", True)
    proc = run_recipe("training/train_mf.py", CONFIG, [f"data.path={tiny_data}", f"run.output_dir={tmp_path}",
                                                       f"init.from_export={export_dir}", "run.name=extended"],
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {export_dir / 'model.safetensors'}: refused, the file is a Python pickle; RouterForge loads weights "
        f"only from safetensors and never unpickles them. Re-export the router with RouterForge.")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["torch_save_zip", "pickle_protocol_5"])
def test_router_from_pretrained_never_unpickles_a_payload(poisoned_export, kind):
    from routerforge.router import Router

    for manifest_matches in (False, True):
        export_dir, marker = poisoned_export(kind, manifest_matches)
        with pytest.raises(Exception):  # noqa: B017 (the named-error part is the test below)
            Router.from_pretrained(export_dir)
        assert not marker.exists()


def test_router_from_pretrained_names_the_refused_file(poisoned_export):
    from routerforge.router import Router

    export_dir, marker = poisoned_export("pickle_protocol_5", True)  # manifest rewritten to match
    with pytest.raises(RouterForgeError, match="model.safetensors: refused, the file is a Python pickle"):
        Router.from_pretrained(export_dir)
    assert not marker.exists()


def test_a_payload_swapped_into_a_step_checkpoint_is_never_unpickled(mf_run, tiny_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(mf_run, out / "mf" / "mf-tiny")
    shutil.rmtree(out / "mf" / "mf-tiny" / "final")
    checkpoint = out / "mf" / "mf-tiny" / "step-000004"
    marker = tmp_path / "UNPICKLED-rng"
    torch.save(Payload(marker), checkpoint / "random_states_0.pkl")
    with pytest.raises(CorruptCheckpointError, match="random_states_0.pkl is corrupt: its sha256 differs"):
        run_recipe_in_process("train_mf", ["--config", str(REPO_ROOT / CONFIG), f"data.path={tiny_data}",
                                           f"run.output_dir={out}", "resume=auto"])
    assert not marker.exists()


def test_cluster_base_router_loader_refuses_a_pickle(poisoned_export):
    # train_cluster.load_base_router reads an exported cluster router (init.from_export); its weights go
    # through the same check. Relabel the poisoned export as a cluster router so the loader gets that far.
    from tests.fixtures.recipe_runner import load_recipe_module

    export_dir, marker = poisoned_export("torch_save_zip", True)
    config = json.loads((export_dir / "config.json").read_text())
    (export_dir / "config.json").write_text(json.dumps({**config, "router_type": "cluster"}))
    encoder = json.loads((export_dir / "manifest.json").read_text())["encoder"]
    with pytest.raises(UnsafeWeightsError, match="refused, the file is a zip archive"):
        load_recipe_module("train_cluster").load_base_router(export_dir, encoder)
    assert not marker.exists()


def match_manifest_file(export_dir: Path, rel: str) -> None:
    """Like match_manifest, for any listed file (the difficulty export lists its backbone weights too)."""
    manifest_path = export_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][rel] = hashlib.sha256((export_dir / rel).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def difficulty_export(tmp_path_factory):
    """A hand-made difficulty export (tiny random DeBERTa-v2 + heads) with a manifest of its files' sha256."""
    from routerforge.models.difficulty import (
        DifficultyHeads,
        DifficultyRouter,
        HeadSpec,
        load_backbone,
        save_backbone_files,
    )
    from routerforge.train.final_export import export_router
    from tests.fixtures.tiny_deberta import tiny_deberta_spec

    backbone, tokenizer, _ = load_backbone(tiny_deberta_spec(tmp_path_factory))
    heads = DifficultyHeads(HeadSpec(hidden_size=32, num_candidates=1, difficulty=True, num_models=2, dropout=0.0))
    export_dir = tmp_path_factory.mktemp("difficulty") / "export"
    router = DifficultyRouter(backbone, heads, "cls")
    export_router(export_dir, heads.state_dict(),  # the recipe's export; manifest.json records every file's sha256
                  {"router_type": "difficulty", "heads": heads.spec.to_dict(), "pooling": "cls"}, {},
                  extra_files=lambda directory: save_backbone_files(router, tokenizer, directory))
    return export_dir


@pytest.mark.parametrize("planted", ["model.safetensors", "backbone/model.safetensors"])
def test_difficulty_loader_refuses_a_pickle_in_heads_or_backbone(difficulty_export, tmp_path, planted):
    from routerforge.models.difficulty import load_router

    export_dir = tmp_path / "export"
    shutil.copytree(difficulty_export, export_dir)
    load_router(export_dir)  # the untouched copy loads
    marker = tmp_path / "UNPICKLED"
    write_payload(export_dir / planted, "pickle_protocol_5", marker)
    match_manifest_file(export_dir, planted)
    with pytest.raises(UnsafeWeightsError, match=f"{planted}: refused, the file is a Python pickle"):
        load_router(export_dir)
    assert not marker.exists()


def test_difficulty_loader_never_reads_a_pytorch_model_bin(difficulty_export, tmp_path):
    # Only the pickle is offered (model.safetensors removed): from_pretrained(use_safetensors=True) must not
    # fall back to it.
    from routerforge.models.difficulty import load_router

    export_dir = tmp_path / "export"
    shutil.copytree(difficulty_export, export_dir)
    (export_dir / "backbone" / "model.safetensors").unlink()
    marker = tmp_path / "UNPICKLED"
    torch.save({"embeddings.word_embeddings.weight": Payload(marker)}, export_dir / "backbone" / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        load_router(export_dir)
    assert not marker.exists()


def test_probe_loader_refuses_a_pickle_with_a_matching_manifest(tmp_path):
    from routerforge.models.probe import LinearProbe, load_probe_router
    from routerforge.train.final_export import export_router

    config = {"router_type": "probe", "probe_kind": "linear", "input_dim": 8, "layer": 1, "pooling": "mean",
              "temperature": 1.0, "weak_model": "weak", "strong_model": "strong", "lm": {}}
    export_dir = export_router(tmp_path / "export", LinearProbe(8).state_dict(), config, {"recipe": "probe"})
    marker = tmp_path / "UNPICKLED"
    write_payload(export_dir / "model.safetensors", "torch_save_zip", marker)
    match_manifest(export_dir)
    with pytest.raises(UnsafeWeightsError, match="model.safetensors: refused, the file is a zip archive"):
        load_probe_router(export_dir)
    assert not marker.exists()
