"""PPO math against hand-computed values: GAE with env-token masks, clipped losses, entropy, KL."""

from __future__ import annotations

import math

import pytest
import torch

from routerforge.rl.ppo_math import (
    apply_kl_penalty,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    entropy_from_logits,
    kl_penalty,
    log_probs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    sequence_reward_to_tokens,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def assert_values(tensor: torch.Tensor, expected) -> None:
    """Elementwise equality up to float rounding (pytest.approx does not take nested lists)."""
    torch.testing.assert_close(tensor, torch.tensor(expected, dtype=tensor.dtype), rtol=1e-6, atol=1e-6)


def test_gae_by_hand_skips_an_env_inserted_token():
    # gamma 0.9, lam 0.8 (gamma*lam = 0.72); token 1 was inserted by the environment (mask 0).
    rewards = t([0.0, 5.0, 0.0, 1.0])
    values = t([0.5, 9.0, 0.2, 0.4])
    mask = t([1, 0, 1, 1])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=3: delta = 1 + 0.9*0 - 0.4 = 0.6                  A3 = 0.6
    # t=2: delta = 0 + 0.9*0.4 - 0.2 = 0.16               A2 = 0.16 + 0.72*0.6 = 0.592
    # t=1: skipped (its reward 5 and value 9 are ignored)  A1 = 0
    # t=0: delta = 0 + 0.9*V(t=2)=0.2 ... = 0.18 - 0.5 = -0.32; A0 = -0.32 + 0.72*0.592 = 0.10624
    assert_values(adv, [[0.10624, 0.0, 0.592, 0.6]])
    assert_values(ret, [[0.60624, 0.0, 0.792, 1.0]])
    # what sits under the mask cannot matter
    other_adv, other_ret = compute_gae(t([0.0, -7.0, 0.0, 1.0]), t([0.5, -3.0, 0.2, 0.4]), mask, 0.9, 0.8)
    assert torch.equal(adv, other_adv) and torch.equal(ret, other_ret)


def test_gae_without_masking_is_the_textbook_recursion():
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.1, 0.2, 0.3]), t([1, 1, 1])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # gamma = lam = 1: A_t = sum of future rewards - V_t (Monte Carlo)
    assert_values(adv, [[0.9, 0.8, 0.7]])
    assert_values(ret, [[1.0, 1.0, 1.0]])
    # lam = 0: one-step TD errors
    adv0, _ = compute_gae(rewards, values, mask, gamma=0.5, lam=0.0)
    assert_values(adv0, [[0.5 * 0.2 - 0.1, 0.5 * 0.3 - 0.2, 1.0 - 0.3]])


def test_gae_rows_are_independent_and_trailing_padding_changes_nothing():
    short = compute_gae(t([0.0, 1.0]), t([0.3, 0.6]), t([1, 1]), 0.9, 0.95)
    padded = compute_gae(t([0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 2.0]), t([0.3, 0.6, 4.0, 4.0], [0.0, 1.0, 1.0, 1.0]),
                         t([1, 1, 0, 0], [1, 1, 1, 1]), 0.9, 0.95)
    assert padded[0][0, :2].tolist() == pytest.approx(short[0][0].tolist())
    assert padded[1][0, :2].tolist() == pytest.approx(short[1][0].tolist())
    assert padded[0][0, 2:].tolist() == [0.0, 0.0]


def test_gae_does_not_track_gradients():
    values = torch.tensor([[0.1, 0.2]], requires_grad=True)
    adv, ret = compute_gae(torch.tensor([[0.0, 1.0]]), values, torch.ones(1, 2), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad


def test_masked_statistics_by_hand():
    values, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_var(values, mask).item() == pytest.approx(1.0)  # unbiased: ((1)+(0)+(1))/2
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert_values(masked_whiten(values, mask), [[-1.0, 0.0, 1.0, 98.0]])
    assert masked_whiten(values, mask, shift_mean=False)[0, :3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)
    assert masked_mean(t([[1.0, 5.0]]), t([[0, 0]])).item() == 0.0  # empty mask: 0, not NaN
    assert masked_mean(t([1.0, 3.0], [2.0, 4.0]), t([1, 1], [1, 0]), dim=-1).tolist() == pytest.approx([2.0, 2.0])


def test_sequence_reward_lands_on_the_last_policy_token():
    mask = t([1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0])
    tokens = sequence_reward_to_tokens(torch.tensor([2.0, -1.0, 5.0], dtype=torch.float64), mask)
    assert tokens.tolist() == [[0, 0, 0, 2.0, 0], [-1.0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


def _policy_case(advantage: float, ratio: float, dual_clip: float | None = None):
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    new = (old + math.log(ratio)).clone().requires_grad_(True)
    out = clipped_policy_loss(new, old, torch.tensor([[advantage]], dtype=torch.float64), torch.ones(1, 1),
                              clip_eps=0.2, dual_clip=dual_clip)
    out.loss.backward()
    return out, new.grad.item()


@pytest.mark.parametrize("advantage, ratio, loss, clipped", [
    (1.0, 1.1, -1.1, 0.0),    # A > 0, inside [0.8, 1.2]: plain -A*r
    (1.0, 1.5, -1.2, 1.0),    # A > 0, above: clipped at 1.2, no gradient
    (1.0, 0.5, -0.5, 0.0),    # A > 0, below: the pessimistic (unclipped) term, gradient flows
    (-1.0, 1.5, 1.5, 0.0),    # A < 0, above: unclipped term is larger, gradient flows
    (-1.0, 0.5, 0.8, 1.0),    # A < 0, below: clipped at 0.8, no gradient
    (-1.0, 0.9, 0.9, 0.0),    # A < 0, inside
])
def test_clipped_policy_loss_cases(advantage, ratio, loss, clipped):
    out, grad = _policy_case(advantage, ratio)
    assert out.loss.item() == pytest.approx(loss)
    assert out.clip_fraction.item() == pytest.approx(clipped)
    # d(-A r)/d log p = -A r when the unclipped term is taken, 0 when the clipped (constant) term is
    assert grad == pytest.approx(0.0 if clipped else -advantage * ratio)
    assert out.approx_kl.item() == pytest.approx(-math.log(ratio))


def test_dual_clip_caps_the_loss_of_negative_advantages():
    out, grad = _policy_case(-1.0, 5.0, dual_clip=3.0)
    assert out.loss.item() == pytest.approx(3.0) and grad == 0.0
    unbounded, _ = _policy_case(-1.0, 5.0)
    assert unbounded.loss.item() == pytest.approx(5.0)
    positive, _ = _policy_case(1.0, 1.1, dual_clip=3.0)  # positive advantages are untouched
    assert positive.loss.item() == pytest.approx(-1.1)


def test_policy_loss_ignores_env_tokens_entirely():
    old = torch.tensor([[-1.0, -2.0, -1.5]])
    new = torch.tensor([[-0.9, -2.0, -1.6]], requires_grad=True)
    adv = torch.tensor([[1.0, 1000.0, -0.5]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # token 1 was inserted by the environment
    out = clipped_policy_loss(new, old, adv, mask)
    out.loss.backward()
    assert new.grad[0, 1].item() == 0.0
    kept = clipped_policy_loss(new[:, [0, 2]], old[:, [0, 2]], adv[:, [0, 2]], torch.ones(1, 2))
    assert out.loss.item() == pytest.approx(kept.loss.item())


def test_clipped_value_loss_by_hand():
    old, ret, mask = t([1.0]), t([3.0]), t([1])
    # v = 2 is outside 1 +- 0.5: clipped prediction 1.5, (1.5-3)^2 = 2.25 > (2-3)^2 = 1 -> 0.5*2.25
    loss, frac = clipped_value_loss(t([2.0]), old, ret, mask, clip_range=0.5)
    assert loss.item() == pytest.approx(1.125) and frac.item() == pytest.approx(1.0)
    # v = 1.2 is inside: both terms (1.2-3)^2 = 3.24 -> 1.62, nothing clipped
    loss, frac = clipped_value_loss(t([1.2]), old, ret, mask, clip_range=0.5)
    assert loss.item() == pytest.approx(1.62) and frac.item() == 0.0
    # v = 0 is below 0.5: clipped 0.5 -> 6.25 < 9 = (0-3)^2: the unclipped term is the max
    loss, frac = clipped_value_loss(t([0.0]), old, ret, mask, clip_range=0.5)
    assert loss.item() == pytest.approx(4.5) and frac.item() == 0.0
    # env tokens do not count
    loss, _ = clipped_value_loss(t([1.2, 50.0]), t([1.0, 0.0]), t([3.0, -50.0]), t([1, 0]), clip_range=0.5)
    assert loss.item() == pytest.approx(1.62)


def test_entropy_from_logits():
    assert entropy_from_logits(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    assert entropy_from_logits(torch.tensor([[1000.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), expected, atol=1e-6)


def test_log_probs_from_logits_gathers_the_taken_tokens():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0]]])  # p = [1/4, 3/4], [4/5, 1/5]
    assert_values(log_probs_from_logits(logits, torch.tensor([[1, 0]])), [[math.log(0.75), math.log(0.8)]])
    with pytest.raises(ValueError, match="do not match"):
        log_probs_from_logits(logits, torch.tensor([[1, 0, 1]]))


def test_kl_estimators_by_hand_and_k3_is_never_negative():
    logp, ref = t([-1.0]), t([-2.0])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(-1.0) + 1.0 - 1.0)
    assert kl_penalty(ref, logp, "abs").item() == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=generator) * 3, torch.randn(1000, generator=generator) * 3
    k3 = kl_penalty(a, b, "k3")
    assert (k3 >= 0).all() and kl_penalty(a, a, "k3").abs().max().item() == 0.0
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        kl_penalty(a, b, "k4")


def test_k3_is_an_unbiased_kl_estimate_under_the_policy():
    # KL(p || q) for two categoricals, estimated from samples of p with k1 and k3
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    exact = (p * (p / q).log()).sum().item()
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    for estimator in ("k1", "k3"):
        estimate = kl_penalty(p.log()[samples], q.log()[samples], estimator).mean().item()
        assert estimate == pytest.approx(exact, abs=0.01)


def test_kl_penalty_goes_into_the_reward_on_policy_tokens_only():
    scores = t([0.0, 0.0, 1.0])
    mask = t([1, 0, 1])  # token 1 is inserted information
    logp = t([-1.0, -1.0, -1.0])
    ref = t([-1.5, -4.0, -1.2])  # k1 = 0.5, 3.0 (masked), 0.2
    rewards, mean_kl = apply_kl_penalty(scores, logp, ref, mask, kl_coef=0.1, estimator="k1")
    assert_values(rewards, [[-0.05, 0.0, 0.98]])
    assert mean_kl.item() == pytest.approx(0.35)
    zero, _ = apply_kl_penalty(scores, logp, ref, mask, kl_coef=0.0)
    assert torch.equal(zero, scores)


def test_shape_and_range_errors_are_clear():
    with pytest.raises(ValueError, match="one shape"):
        compute_gae(t([1.0, 2.0]), t([1.0]), t([1.0]), 1.0, 1.0)
    with pytest.raises(ValueError, match="gamma"):
        compute_gae(t([1.0]), t([1.0]), t([1.0]), 1.5, 1.0)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(t([0.0]), t([0.0]), t([1.0]), t([1.0]), dual_clip=0.5)
