"""The policy LM as the environment's `Policy`: batched `generate`, stopping at </search> or </answer>.

    policy = make_lm_policy(model, tokenizer, templates, device, GenerationSettings(...))
    rollouts = env.rollout_many(tasks, policy)

Shared by the PPO recipe, the GRPO rollout function and evaluation, so an exported policy is evaluated
with exactly the generation it was trained with (greedy when `temperature == 0`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from routerforge.rl.env import PolicyOutput
from routerforge.rl.protocol import STOP_TAGS

STOP_STRINGS = tuple(f"</{tag}>" for tag in STOP_TAGS)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int  # tokens per turn
    token_budget: int  # longest context (prompt + response so far, tokens) that may still generate a turn
    micro_batch_size: int  # contexts per `generate` call
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0


def templated_prompt(tokenizer, prompt: str, use_chat_template: bool) -> str:
    """`prompt` as a user turn in the tokenizer's chat template (when it has one and it is asked for)."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def make_lm_policy(model, tokenizer, templates: dict[str, str], device: torch.device, settings: GenerationSettings):
    """The `Policy` RoutingEnv drives: contexts (prompt + response so far) -> one generated segment each.

    templates: raw prompt -> the text the model is conditioned on (chat-templated). A context longer than
    `settings.token_budget` gets an empty segment, which ends its episode (the env then scores it; an
    unfinished trajectory breaks the format).
    """
    special_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    sampling = ({"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
                if settings.temperature > 0 else {"do_sample": False})

    def conditioned_on(context: str) -> str:
        for raw, templated in templates.items():
            if context.startswith(raw):
                return templated + context[len(raw):]
        raise RuntimeError("the environment passed a context that starts with no known prompt")

    @torch.no_grad()
    def policy(contexts: list[str]) -> list[PolicyOutput]:
        texts = [conditioned_on(c) for c in contexts]
        encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        outputs = [PolicyOutput("") for _ in texts]
        live = [i for i, ids in enumerate(encoded) if len(ids) <= settings.token_budget]
        for start in range(0, len(live), settings.micro_batch_size):
            rows = live[start:start + settings.micro_batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, padding=True, return_tensors="pt",
                                  padding_side="left").to(device)
            # synced_gpus=False: generation is local to this process. transformers turns it on for FSDP2 modules,
            # where it all-reduces a "finished" flag after every token; but processes make different numbers of
            # calls (turns, micro-batches), so that would hang. Under FSDP the caller gathers the weights first
            # (routerforge.train.sharded_models.gathered_for_generation); under DDP they are whole anyway.
            generated = model.generate(
                **batch, **sampling, max_new_tokens=settings.max_new_tokens, stop_strings=list(STOP_STRINGS),
                tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id, synced_gpus=False)
            for row, ids in zip(rows, generated[:, batch["input_ids"].shape[1]:].tolist(), strict=True):
                # Cut at the first EOS/pad: the episode's text ends there (finished rows are padded).
                end = next((k for k, token in enumerate(ids) if token in special_ids), len(ids))
                ids = ids[:end]
                outputs[row] = PolicyOutput(tokenizer.decode(ids, skip_special_tokens=True), tuple(ids))
        return outputs

    return policy
