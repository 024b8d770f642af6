"""Router API on real trained routers of every family: from_pretrained, score, route modes, pairs, CLI.

MF and cluster routers are trained by their recipes on RouteLLM MMLU outcomes prepared by the real data-prep
pipeline (packaged all-MiniLM-L6-v2); the difficulty router on MMLU outcomes + Arena votes with a tiny
random-init DeBERTa-v2 (tests/fixtures/registry_routers.py); the probe router on a tiny random-init
Qwen2's hidden states.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from routerforge.data.dataset_io import load_prepared
from routerforge.errors import CheckpointError
from routerforge.models.cluster import ClusterRouter
from routerforge.registry.publish_validation import validate_checkpoint
from routerforge.registry.register import finalize_export
from routerforge.router import Router, RoutingError
from routerforge.router_cli import route_main
from tests.fixtures import registry_routers as rr

pytestmark = pytest.mark.slow  # the session's first test prepares + embeds the MMLU data (~30 s on 2 cores)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def registry(base, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("router-registry")
    for family in ("mf", "cluster", "difficulty"):
        finalize_export(rr.trained_any(base, family, tmp_path_factory), root)
    return root


@pytest.fixture(scope="module")
def dataset(base):
    return load_prepared(rr.mmlu_dataset(base))


@pytest.fixture(scope="module")
def probe(base) -> list[str]:
    return rr.read_eval_prompts(rr.eval_table(base))[:40]


@pytest.mark.parametrize("family", ["mf", "cluster", "difficulty"])
def test_every_family_loads_scores_and_routes_batched(registry, probe, family):
    router = Router.from_pretrained(registry / family)  # the router directory: its LATEST
    assert router.version == "1.0.0" and router.router_type == family and router.name == family
    validate_checkpoint(router.path)  # publishable as exported (tokenizer/backbone files of difficulty included)
    scores = router.score(probe, rr.STRONG, rr.WEAK)
    assert scores.shape == (len(probe),) and np.all(np.isfinite(scores))
    names = router.route(probe, threshold=float(np.median(scores)), strong=rr.STRONG, weak=rr.WEAK)
    assert set(names) <= {rr.STRONG, rr.WEAK}
    assert names == [rr.STRONG if s >= np.median(scores) else rr.WEAK for s in scores]
    routed = router.route(probe, cost_weight=0.0)
    assert len(routed) == len(probe) and set(routed) <= set(router.models)
    # Batching (and the length-sorted batch order) does not change any result.
    one_by_one = Router.from_pretrained(registry / family, batch_size=1)
    np.testing.assert_allclose(one_by_one.score(probe[:8], rr.STRONG, rr.WEAK), scores[:8], atol=1e-5)
    assert router.route(probe[0]) == router.route([probe[0]])  # a single string is a batch of one
    assert router.timing["prompts"] >= len(probe) and router.timing["encode_s"] > 0


def test_mf_reembeds_prompts_as_in_training_and_scores_like_the_paper(registry, dataset):
    """The router's own encoder reproduces the stored training embeddings; its score is σ(δ_s − δ_w)."""
    router = Router.from_pretrained(registry / "mf")
    ids, stored = dataset.embeddings("train")
    text_of = dict(zip(dataset.prompts["train"]["prompt_id"], dataset.prompts["train"]["prompt"], strict=True))
    prompts = [text_of[i] for i in ids[:24]]
    embedded = router.scorer.encode(prompts)
    cosine = (embedded * stored[:24]).sum(1) / np.linalg.norm(embedded, axis=1) / np.linalg.norm(stored[:24], axis=1)
    assert cosine.min() > 0.9999

    weights = load_file(str(router.path / "model.safetensors"))
    pool = router.manifest["model_pool"]
    s, w = pool.index(rr.STRONG), pool.index(rr.WEAK)
    projected = torch.from_numpy(stored[:24]) @ weights["text_proj.weight"].T
    vectors = torch.nn.functional.normalize(weights["P.weight"], dim=-1)
    delta = (projected[:, None, :] * vectors[None]) @ weights["classifier.weight"][0]
    expected = torch.sigmoid(delta[:, s] - delta[:, w]).numpy()
    np.testing.assert_allclose(router.score(prompts, rr.STRONG, rr.WEAK), expected, atol=1e-4)


def test_cluster_routes_by_cost_weight_as_its_module_does(registry, dataset):
    router = Router.from_pretrained(registry / "cluster")
    module = ClusterRouter.from_state_dict(load_file(str(router.path / "model.safetensors")))
    ids, stored = dataset.embeddings("test")
    text_of = dict(zip(dataset.prompts["test"]["prompt_id"], dataset.prompts["test"]["prompt"], strict=True))
    prompts = [text_of[i] for i in ids]
    for cost_weight in (0.0, 1e3, 1e5, float("inf")):
        expected = module.route(torch.from_numpy(stored), cost_weight).tolist()
        assert router.route(prompts, cost_weight=cost_weight) == [router.models[j] for j in expected]
    # the default is the recipe's routing.cost_weight
    assert router.route(prompts) == router.route(prompts, cost_weight=router.config["cost_weight"])


def test_pairs_the_router_never_saw(registry, probe):
    mf = Router.from_pretrained(registry / "mf")
    with pytest.raises(RoutingError, match=r"cannot score the pair \(gpt-4o, llama-3-8b\): it knows "
                                           r"gpt-4-1106-preview, mistralai/Mixtral-8x7B-Instruct-v0.1\. Pass "
                                           r"router_pair"):
        mf.score(probe, "gpt-4o", "llama-3-8b")
    stand_in = mf.score(probe, "gpt-4o", "llama-3-8b", router_pair=(rr.STRONG, rr.WEAK))
    np.testing.assert_array_equal(stand_in, mf.score(probe, rr.STRONG, rr.WEAK))
    assert set(mf.route(probe, threshold=0.5, strong="gpt-4o", weak="llama-3-8b",
                        router_pair=(rr.STRONG, rr.WEAK))) <= {"gpt-4o", "llama-3-8b"}
    with pytest.raises(RoutingError, match="cannot score router_pair"):
        mf.score(probe, "gpt-4o", "llama-3-8b", router_pair=("gpt-4o", rr.WEAK))

    # The difficulty head is pair-free: any pair is scored by the predicted difficulty, no mapping needed.
    difficulty = Router.from_pretrained(registry / "difficulty")
    spec = difficulty.score_spec("gpt-4o", "llama-3-8b")
    assert spec.kind == "pair_free"
    np.testing.assert_allclose(difficulty.score(probe, "gpt-4o", "llama-3-8b"), difficulty.predict(probe)["difficulty"])
    # ...while its own (reference, candidate) pair uses the BEST-Route candidate head: 1 − P(weak matches).
    assert difficulty.score_spec(rr.STRONG, rr.WEAK).kind == "pair"
    outputs = difficulty.predict(probe)
    np.testing.assert_allclose(difficulty.score(probe, rr.STRONG, rr.WEAK), 1 - outputs["quality"][:, 1])

    # The batched, padded predictions equal the module's own forward on each prompt alone (no padding).
    from routerforge.models.difficulty import load_router

    module, tokenizer, config = load_router(difficulty.path)
    for i, prompt in enumerate(probe[:5]):
        ids = tokenizer([prompt], truncation=True, max_length=config["max_seq_tokens"], return_tensors="pt")
        with torch.no_grad():
            out = module(ids["input_ids"], ids["attention_mask"])
        np.testing.assert_allclose(outputs["difficulty"][i], torch.sigmoid(out["difficulty_logit"])[0], atol=1e-5)
        np.testing.assert_allclose(outputs["candidate_match"][i], torch.sigmoid(out["candidate_logits"])[0], atol=1e-5)
        np.testing.assert_allclose(outputs["strengths"][i], out["model_strengths"][0], atol=1e-5)


def test_probe_router_is_a_pair_free_router(base, probe, tmp_path):
    from routerforge.models.probe import load_probe_router

    version_dir = finalize_export(rr.trained_probe_export(base), tmp_path / "checkpoints")
    validate_checkpoint(version_dir)
    router = Router.from_pretrained(version_dir)
    assert router.router_type == "probe" and router.models == ()
    spec = router.score_spec("gpt-4o", "llama-3-8b")
    assert spec.kind == "pair_free" and "answers correctly" in spec.rule
    expected = load_probe_router(version_dir).score(probe[:6])  # the probe module's own API
    np.testing.assert_allclose(router.score(probe[:6], "gpt-4o", "llama-3-8b"), expected, atol=1e-6)
    names = router.route(probe[:6], threshold=float(np.median(expected)), strong="gpt-4o", weak="llama-3-8b")
    assert names == ["gpt-4o" if s >= np.median(expected) else "llama-3-8b" for s in expected]
    with pytest.raises(RoutingError, match="predicts no per-model quality"):
        router.route(probe[:2])


def test_routing_requests_it_cannot_serve_are_clear_errors(registry, probe):
    mf = Router.from_pretrained(registry / "mf")
    with pytest.raises(CheckpointError, match=r"not calibrated; run `routerforge calibrate"):
        mf.route(probe, strong_share=0.2)
    with pytest.raises(RoutingError, match="pass one of strong_share, threshold or cost_weight"):
        mf.route(probe, strong_share=0.2, threshold=0.5)
    with pytest.raises(RoutingError, match=r"predicts no cost, so cost_weight=5\.0 cannot trade"):
        mf.route(probe, cost_weight=5.0)
    with pytest.raises(RoutingError, match="name the strong and weak model"):
        mf.score(probe)
    with pytest.raises(RoutingError, match=r"prompts\[1\] is int"):
        mf.route(["fine", 3])


def test_route_command(registry, probe, capsys):
    assert route_main([str(registry / "cluster"), probe[0], probe[1], "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    router = Router.from_pretrained(registry / "cluster")
    assert [r["model"] for r in rows] == router.route(probe[:2]) and [r["prompt"] for r in rows] == probe[:2]

    assert route_main([str(registry / "mf" / "1.0.0"), probe[0], "--threshold", "0.0", "--strong", rr.STRONG,
                       "--weak", rr.WEAK]) == 0
    assert capsys.readouterr().out.startswith(f"{rr.STRONG}\t")

    assert route_main([str(registry / "mf"), probe[0], "--strong-share", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "routerforge calibrate" in err
    assert route_main([str(registry / "nope"), "hi"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
