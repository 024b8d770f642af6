"""routerforge.models.mf: the score formula, extension of the pool, training only new model embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from routerforge.models.mf import MFModel, extend_model_pool, freeze_all_but_new_models, new_model_l2_penalty


def test_score_is_w_dot_normalized_v_times_projected_prompt():
    torch.manual_seed(0)
    model = MFModel(num_models=5, prompt_embedding_dim=6, model_embedding_dim=4)
    q = torch.randn(3, 6)
    a, b = torch.tensor([0, 1, 4]), torch.tensor([2, 3, 0])
    v = F.normalize(model.P.weight, dim=-1)
    W, w = model.text_proj.weight, model.classifier.weight.squeeze(0)
    expected_delta = torch.stack([w @ (v[m] * (W @ q[i])) for i, m in enumerate(a.tolist())])
    assert torch.allclose(model.scores(a, model.text_proj(q)), expected_delta, atol=1e-6)

    logits = model(a, b, q)
    assert torch.allclose(logits, -model(b, a, q), atol=1e-6)  # P(a > b) = 1 - P(b > a)
    assert torch.allclose(model.win_probability(a, b, q), torch.sigmoid(logits))
    all_scores = model.score_all_models(q)
    assert all_scores.shape == (3, 5)
    assert torch.allclose(all_scores[torch.arange(3), a] - all_scores[torch.arange(3), b], logits, atol=1e-6)
    # Row scale of P does not matter (v_m is normalised).
    with torch.no_grad():
        model.P.weight[0] *= 7.0
    assert torch.allclose(model(a, b, q), logits, atol=1e-5)


def test_from_config_rebuilds_the_shape_an_export_config_describes():
    torch.manual_seed(0)
    model = MFModel(3, 8, 4, use_projection=True)
    export_config = {**model.config(), "model_pool": ["a", "b", "c"], "router_type": "mf"}  # as config.json holds
    rebuilt = MFModel.from_config(export_config)
    assert rebuilt.config() == model.config()
    rebuilt.load_state_dict(model.state_dict())  # strict: every tensor has its shape
    q, a, b = torch.randn(2, 8), torch.tensor([0, 1]), torch.tensor([1, 2])
    assert torch.equal(rebuilt(a, b, q), model(a, b, q))
    assert MFModel.from_config({**model.config(), "use_projection": False, "model_embedding_dim": 8}).config()[
        "use_projection"] is False


def test_noise_is_applied_only_when_asked():
    torch.manual_seed(0)
    model = MFModel(3, 4, 4)
    q, a, b = torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([1, 2])
    assert torch.equal(model(a, b, q), model(a, b, q))
    assert not torch.equal(model(a, b, q, noise_std=0.1), model(a, b, q))


def test_only_the_new_models_embeddings_train():
    torch.manual_seed(0)
    base = MFModel(3, 8, 4)
    model = extend_model_pool(base, 2)
    assert model.num_models == 5 and torch.equal(model.P.weight[:3], base.P.weight)
    assert torch.equal(model.text_proj.weight, base.text_proj.weight)
    assert torch.equal(model.classifier.weight, base.classifier.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    freeze_all_but_new_models(model, num_frozen_models=3)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.0)
    assert [p.shape for group in optimizer.param_groups for p in group["params"]] == [model.P.weight.shape]
    a, b = torch.tensor([3, 4, 0, 3]), torch.tensor([0, 1, 1, 4])  # includes a pair of two frozen models
    q = torch.randn(4, 8)
    for _ in range(20):
        loss = F.binary_cross_entropy_with_logits(model(a, b, q, noise_std=0.1), torch.ones(4))
        loss = loss + new_model_l2_penalty(model, 3, weight_decay=1e-2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert torch.equal(after["P.weight"][:3], before["P.weight"][:3])
    assert torch.equal(after["text_proj.weight"], before["text_proj.weight"])
    assert torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert not torch.equal(after["P.weight"][3:], before["P.weight"][3:])
