"""PPO math for token sequences, as pure torch functions (no modules, no state, no optimiser).

TRL 1.x removed its PPO trainer, so RouterForge owns this. Everything works on [batch, time]
response tensors and a `mask` of the same shape: 1 on tokens the POLICY generated, 0 on padding AND
on tokens the environment inserted (``<information>`` blocks). Router-R1 calls this "state
masking" (``actor.state_masking=true`` in its train.sh; its ``apply_kl_penalty`` uses the
``info_mask``): inserted tokens are not actions, so they take no part in the policy loss, the
value loss, the entropy bonus or the KL penalty, and GAE steps over them.

What each function follows (veRL ``verl/trainer/ppo/core_algos.py`` and ``verl/utils/torch_functional.py``,
which Router-R1 runs on):

* `masked_mean`, `masked_var` (unbiased), `masked_whiten`: veRL's, with the same 1e-8 guards.
* `compute_gae`: veRL's ``compute_gae_advantage_return`` in its current form, which "skips values
  and TD-error on observation tokens": at a masked step the running advantage and the next value
  are carried over unchanged, so the TD error of the policy token before an ``<information>`` block
  bootstraps from the value of the first policy token after it, as if the inserted tokens were not
  there. Deviation: veRL whitens inside; ours returns raw advantages (call `masked_whiten`), and sets
  advantages and returns to 0 on masked positions instead of leaving carried-over values there.
* `clipped_policy_loss`: PPO-clip (Schulman et al. 2017, arXiv 1707.06347), ``max(-A*r, -A*clip(r))``
  averaged over policy tokens (veRL ``compute_policy_loss``, "token-mean"), with veRL's optional
  dual clip (Ye et al. 2020, arXiv 1912.09729) for negative advantages.
* `clipped_value_loss`: veRL ``compute_value_loss``: ``0.5 * max((v - R)^2, (clip(v, v_old +- eps) - R)^2)``.
* `entropy_from_logits`: ``logsumexp(z) - sum softmax(z) * z`` (veRL's form, stable for large logits).
* `kl_penalty`: per-token estimators of KL(pi || pi_ref) from log-probs of the sampled tokens
  (Schulman, "Approximating KL divergence", 2020): k1 = log pi - log pi_ref; k2 = 0.5 (k1)^2;
  k3 = exp(-k1) + k1 - 1 >= 0 (veRL's ``low_var_kl``, clamped to [-10, 10] as there).
  `apply_kl_penalty` subtracts beta * KL from the token rewards (KL in the reward, as Router-R1
  trains: ``algorithm.kl_ctrl.kl_coef=0.001``, no KL loss term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"tensors must have one shape, got {shapes}")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is 1 (over `dim`, or everything)."""
    product = values * mask
    return product.sum() if dim is None else product.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1; 0 (not NaN) for an all-zero mask."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / (count + 1e-8)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` over the masked positions (Bessel-corrected when `unbiased`)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count <= 1:
            raise ValueError(f"an unbiased masked variance needs at least 2 unmasked values, got {int(count)}")
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / std over the masked positions; `shift_mean=False` adds the mean back."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def sequence_reward_to_tokens(sequence_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch] scalar rewards -> [batch, time] token rewards: each on its LAST policy token (veRL's placement).

    A row with no policy token gets no reward (all zeros).
    """
    if sequence_rewards.dim() != 1 or sequence_rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"sequence_rewards must be [batch={mask.shape[0]}], got {tuple(sequence_rewards.shape)}")
    time_index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), time_index, torch.full_like(time_index, -1)).max(dim=1).values
    token_rewards = torch.zeros(mask.shape, dtype=sequence_rewards.dtype, device=mask.device)
    rows = torch.nonzero(last >= 0).squeeze(1)
    token_rewards[rows, last[rows]] = sequence_rewards[rows]
    return token_rewards


def compute_gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the policy tokens (Schulman et al. 2016, arXiv 1506.02438).

    token_rewards, values, mask: [batch, time]; mask 1 on policy tokens. Going backwards over policy
    tokens t with next policy token t' (none after the last: its value is 0):

        delta_t = r_t + gamma * V(t') - V(t);   A_t = delta_t + gamma * lam * A_t'

    Masked steps are skipped (their reward is ignored). Returns (advantages, returns = A + V), both 0
    on masked positions; no whitening (see the module docstring).
    """
    _check_same_shape(token_rewards=token_rewards, values=values, mask=mask)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    with torch.no_grad():
        rewards, vals, keep = token_rewards.detach(), values.detach(), mask.detach().to(values.dtype)
        next_value = torch.zeros_like(vals[:, 0])
        running = torch.zeros_like(vals[:, 0])
        advantages = torch.zeros_like(vals)
        for t in reversed(range(vals.shape[1])):
            delta = rewards[:, t] + gamma * next_value - vals[:, t]
            candidate = delta + gamma * lam * running
            # On an inserted or padding token carry both the running advantage and the next value over.
            running = keep[:, t] * candidate + (1 - keep[:, t]) * running
            next_value = keep[:, t] * vals[:, t] + (1 - keep[:, t]) * next_value
            advantages[:, t] = running
        advantages = advantages * keep
        returns = (advantages + vals) * keep
    return advantages, returns


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    clip_fraction: torch.Tensor  # share of policy tokens whose clipped term was taken
    approx_kl: torch.Tensor  # mean (old log-prob - new log-prob) over policy tokens, a drift diagnostic


def clipped_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                        dual_clip: float | None = None) -> PolicyLossOutput:
    """PPO-clip loss, token-mean over `mask`.

    ratio r = exp(log_probs - old_log_probs); per token max(-A r, -A clip(r, 1-eps, 1+eps_high)).
    clip_eps_high: upper clip (default: clip_eps). dual_clip: c > 1 caps the loss of a negative-advantage
    token at -A * c (veRL's clip_ratio_c); None disables it.
    """
    _check_same_shape(log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages, mask=mask)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_eps <= 0 or high <= 0:
        raise ValueError(f"clip ranges must be > 0, got {clip_eps}, {high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    log_ratio = log_probs - old_log_probs.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        capped = torch.minimum(per_token, -advantages * dual_clip)
        per_token = torch.where(advantages < 0, capped, per_token)
    return PolicyLossOutput(
        loss=masked_mean(per_token, mask),
        clip_fraction=masked_mean((clipped > unclipped).to(log_probs.dtype), mask).detach(),
        approx_kl=masked_mean(-log_ratio, mask).detach(),
    )


def clipped_value_loss(value_preds: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip_range: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * token-mean of max((v - R)^2, (v_old + clip(v - v_old, +-clip_range) - R)^2); and the clip fraction."""
    _check_same_shape(value_preds=value_preds, old_values=old_values, returns=returns, mask=mask)
    if clip_range <= 0:
        raise ValueError(f"value clip_range must be > 0, got {clip_range}")
    old_values, returns = old_values.detach(), returns.detach()
    clipped_preds = torch.clamp(value_preds, old_values - clip_range, old_values + clip_range)
    loss_unclipped = (value_preds - returns) ** 2
    loss_clipped = (clipped_preds - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clip_fraction = masked_mean((loss_clipped > loss_unclipped).to(value_preds.dtype), mask).detach()
    return loss, clip_fraction


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distribution at each position: [..., vocab] -> [...]."""
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def log_probs_from_logits(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_ids) under `logits`: [batch, time, vocab] and [batch, time] -> [batch, time].

    The caller aligns them: logits[:, t] must be the prediction FOR token_ids[:, t] (i.e. shifted by one
    against the input ids of a causal LM).
    """
    if logits.shape[:-1] != token_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match token_ids {tuple(token_ids.shape)}")
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, token_ids.unsqueeze(-1)).squeeze(-1)


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from the sampled tokens' log-probs (see the module docstring)."""
    _check_same_shape(log_probs=log_probs, ref_log_probs=ref_log_probs)
    log_ratio = log_probs - ref_log_probs
    if estimator == "k1":
        return log_ratio
    if estimator == "abs":
        return log_ratio.abs()
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.clamp(torch.exp(-log_ratio) + log_ratio - 1.0, min=-10.0, max=10.0)
    raise ValueError(f"KL estimator must be one of {', '.join(KL_ESTIMATORS)}, got '{estimator}'")


def apply_kl_penalty(token_scores: torch.Tensor, log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
                     mask: torch.Tensor, kl_coef: float, estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """token_rewards = token_scores - kl_coef * KL_t on policy tokens (0 KL elsewhere); and the mean KL.

    The mean KL is averaged per sequence over its policy tokens, then over the batch (veRL's logged
    ``critic/kl``; an adaptive controller would consume it).
    """
    _check_same_shape(token_scores=token_scores, log_probs=log_probs, ref_log_probs=ref_log_probs, mask=mask)
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    kl = kl_penalty(log_probs.detach(), ref_log_probs.detach(), estimator) * mask
    token_rewards = token_scores - kl_coef * kl
    mean_kl = masked_mean(kl, mask, dim=-1).mean()
    return token_rewards, mean_kl
