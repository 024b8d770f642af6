"""One chat turn of a local Hugging Face causal LM: (reply text, prompt tokens, generated tokens).

Shared by the Router-R1 local candidate pool (routerforge.rl.pools) and the labeling stage's
`transformers` endpoint (routerforge.label.client), so both count tokens, and so bill, the same way.
"""

from __future__ import annotations


def generate_chat_reply(model, tokenizer, messages: list[dict], *, use_chat_template: bool, max_new_tokens: int,
                        temperature: float, top_p: float, seed: int | None) -> tuple[str, int, int]:
    """Greedy when temperature is 0, else seeded sampling. Without a chat template (or with
    `use_chat_template` off) the messages' contents are joined by blank lines and tokenized as text."""
    import torch

    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        encoded = tokenizer("\n\n".join(m["content"] for m in messages), return_tensors="pt")
    encoded = {k: v.to(model.device) for k, v in encoded.items()}
    sampled = temperature > 0
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": sampled}
    if sampled:
        kwargs.update(temperature=temperature, top_p=top_p)
        torch.manual_seed(seed if seed is not None else 0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        output = model.generate(**encoded, pad_token_id=pad_id, **kwargs)
    prompt_len = encoded["input_ids"].shape[1]
    new_ids = output[0, prompt_len:]
    if tokenizer.eos_token_id is not None:
        # Count only up to and including the first EOS (generate pads finished sequences after it).
        eos_positions = (new_ids == tokenizer.eos_token_id).nonzero()
        if len(eos_positions):
            new_ids = new_ids[:int(eos_positions[0]) + 1]
    return tokenizer.decode(new_ids, skip_special_tokens=True), int(prompt_len), int(new_ids.shape[0])
