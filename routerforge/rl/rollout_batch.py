"""Finished Router-R1 episodes -> padded PPO tensors, and the per-token forward passes PPO needs.

Layout (veRL's, which Router-R1 trains on): every row is ``[left-padded prompt | right-padded response]``,
so all responses start at the same column P (the padded prompt length) and every response tensor is
[batch, R]. The response holds the policy's segments AND the ``<information>`` blocks the environment
inserted; `response_mask` is 1 only on tokens the policy sampled (Router-R1's state masking), so the
policy loss, value loss, entropy bonus, KL penalty and GAE all ignore inserted tokens and padding.
`env_mask` marks the inserted tokens (for logs and tests).

The logits that predict response token t sit at column P - 1 + t (a causal LM predicts the next
token), and so does the critic's value of the state before token t.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from routerforge.rl.env import Rollout
from routerforge.rl.ppo_math import entropy_from_logits, log_probs_from_logits


@dataclass(frozen=True)
class RolloutBatch:
    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R], 1 on real tokens
    position_ids: torch.Tensor  # [B, P + R], 0 at each row's first real token
    responses: torch.Tensor  # [B, R] response token ids (pad where the row is shorter)
    response_mask: torch.Tensor  # [B, R] float, 1 on POLICY tokens only
    env_mask: torch.Tensor  # [B, R] float, 1 on environment-inserted tokens
    rewards: torch.Tensor  # [B] float, the episode rewards
    truncated: torch.Tensor  # [B] bool, the response was cut at max_response_tokens

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1] - self.responses.shape[1]

    def rows(self, index: torch.Tensor) -> RolloutBatch:
        """The sub-batch of rows `index` (a mini- or micro-batch)."""
        return RolloutBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str) -> RolloutBatch:
        return RolloutBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collate_rollouts(rollouts: Sequence[Rollout], prompt_ids: Sequence[Sequence[int]], tokenizer,
                     pad_token_id: int, max_response_tokens: int) -> RolloutBatch:
    """Pad the episodes into one `RolloutBatch`.

    prompt_ids: the token ids each episode's policy was conditioned on (the prompt, chat-templated if so);
    the response ids and the policy mask come from `Rollout.token_ids_and_mask`. A response longer than
    `max_response_tokens` is cut there (its reward still sits on its last kept policy token).
    """
    if len(rollouts) != len(prompt_ids) or not rollouts:
        raise ValueError(f"need one prompt per rollout and at least one rollout, got {len(rollouts)} rollouts "
                         f"and {len(prompt_ids)} prompts")
    responses, masks, truncated = [], [], []
    for rollout in rollouts:
        ids, mask = rollout.token_ids_and_mask(tokenizer)
        truncated.append(len(ids) > max_response_tokens)
        responses.append(ids[:max_response_tokens])
        masks.append(mask[:max_response_tokens])
    prompt_len = max(len(p) for p in prompt_ids)
    response_len = max(1, max(len(r) for r in responses))
    batch = len(rollouts)
    input_ids = torch.full((batch, prompt_len + response_len), pad_token_id, dtype=torch.long)
    attention = torch.zeros((batch, prompt_len + response_len), dtype=torch.long)
    policy_mask = torch.zeros((batch, response_len))
    env_mask = torch.zeros((batch, response_len))
    for row, (prompt, response, mask) in enumerate(zip(prompt_ids, responses, masks, strict=True)):
        start = prompt_len - len(prompt)
        input_ids[row, start:prompt_len] = torch.tensor(list(prompt), dtype=torch.long)
        attention[row, start:prompt_len] = 1
        if response:
            input_ids[row, prompt_len:prompt_len + len(response)] = torch.tensor(response, dtype=torch.long)
            attention[row, prompt_len:prompt_len + len(response)] = 1
            mask_t = torch.tensor(mask, dtype=torch.float32)
            policy_mask[row, :len(response)] = mask_t
            env_mask[row, :len(response)] = 1.0 - mask_t
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    rewards = torch.tensor([r.reward.reward if r.reward is not None else 0.0 for r in rollouts], dtype=torch.float32)
    return RolloutBatch(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                        responses=input_ids[:, prompt_len:].clone(), response_mask=policy_mask, env_mask=env_mask,
                        rewards=rewards, truncated=torch.tensor(truncated, dtype=torch.bool))


def response_log_probs(model, batch: RolloutBatch, temperature: float, with_entropy: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response token t | prefix) [B, R] (and the entropy at each position when `with_entropy`).

    Logits are divided by the sampling `temperature` so the log-probs are those of the distribution the
    tokens were sampled from (veRL does the same).
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids, use_cache=False).logits
    start = batch.prompt_length - 1
    logits = logits[:, start:start + batch.responses.shape[1]].float() / temperature
    log_probs = log_probs_from_logits(logits, batch.responses)
    return log_probs, entropy_from_logits(logits) if with_entropy else None


def response_values(critic, batch: RolloutBatch) -> torch.Tensor:
    """The critic's value of the state before each response token, [B, R]."""
    values = critic(batch.input_ids, batch.attention_mask, batch.position_ids)
    start = batch.prompt_length - 1
    return values[:, start:start + batch.responses.shape[1]].float()
