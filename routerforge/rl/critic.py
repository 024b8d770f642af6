"""The PPO critic of Router-R1: a scalar value head on a transformer trunk.

Router-R1 (arXiv 2506.09033) trains with veRL, whose critic is a separate copy of the policy LM with
its vocabulary head replaced by a 1-unit linear head (``AutoModelForTokenClassification`` with
``num_labels=1``). We build the same thing from parts: `AutoModel` (the trunk, without the LM
head) plus an `nn.Linear(hidden, 1)` value head. The trunk is a SEPARATE copy of the policy's
weights, not shared with the actor: a shared trunk would let the value loss move the policy's
features (and the actor and critic have different learning rates, 1e-6 and 1e-5 in the paper).

The value at response position t estimates the return from the state BEFORE token t is sampled, so
it is read from the hidden state at the position that predicts token t (the same shift as the
policy's logits; see `routerforge.rl.rollout_batch`).
"""

from __future__ import annotations

import torch
from torch import nn


class ValueModel(nn.Module):
    """trunk(input_ids) -> last hidden states -> value_head -> [batch, time] values."""

    def __init__(self, trunk: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.value_head = nn.Linear(hidden_size, 1)
        # Zero init: every state starts at value 0, so the first advantages are the raw rewards
        # (veRL initialises the critic head from scratch too; zero keeps the first steps calm).
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False).last_hidden_state
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)


def build_value_model(model_name_or_path: str, dtype: torch.dtype | None = None, revision: str | None = None
                      ) -> ValueModel:
    """A critic whose trunk starts from the weights of `model_name_or_path` (a causal LM checkpoint).

    `AutoModel` loads the base model of a causal-LM checkpoint and drops the LM head.
    """
    from transformers import AutoModel

    trunk = AutoModel.from_pretrained(model_name_or_path, dtype=dtype, revision=revision)
    return ValueModel(trunk, int(trunk.config.hidden_size))
