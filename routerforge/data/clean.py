"""Row filters every source goes through after reading (the `clean` stage).

Applied in this order, each drop counted under its reason in stage "clean":
alias map -> empty prompt (bad row) -> prompt length -> self-battle (bad row) -> language -> exact
duplicate row. Ties are kept as ties. Near-duplicate *prompts* are not dropped here: they are grouped
later (`routerforge.data.split.near_duplicate_groups`) so they land in one split and never leak.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from routerforge.data.config import CleanConfig, SourceConfig
from routerforge.data.report import Ledger

_MODEL_FIELDS = ("model_a", "model_b", "model")


def _row_key(record: dict, produces: str) -> bytes:
    """8-byte digest of what makes a row a duplicate: same prompt and same (models, verdict/turn)."""
    if produces == "pairs":
        parts = (record["prompt_id"], record["model_a"], record["model_b"], record["winner"])
        if record.get("p_model_a_wins") is not None:  # soft labels: same verdict, other probability = other row
            parts += (repr(record["p_model_a_wins"]),)
    elif produces == "outcomes":
        parts = (record["prompt_id"], record["model"])
    else:  # judge_scores
        parts = (record["prompt_id"], record["model"], str(record["turn"]), record["judge"])
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).digest()


def clean_records(records: Iterator[dict], src: SourceConfig, cfg: CleanConfig, ledger: Ledger,
                  produces: str) -> Iterator[dict]:
    """Yield the records of one source that pass every filter; count every drop by reason."""
    seen: set[bytes] = set()
    aliases = cfg.aliases
    languages = set(cfg.languages)
    for record in records:
        file, line = record["source_file"], record["source_line"]
        for key in _MODEL_FIELDS:
            if key in record:
                record[key] = aliases.get(record[key], record[key])
        prompt = record["prompt"]
        n_chars = len(prompt.strip())
        if n_chars == 0:
            ledger.bad(src.name, file, line, "empty_prompt", "prompt is empty", "prompt", stage="clean")
            continue
        if n_chars < cfg.min_prompt_chars:
            ledger.count(src.name, "clean", dropped={"prompt_too_short": 1})
            continue
        if len(prompt) > cfg.max_prompt_chars:
            ledger.count(src.name, "clean", dropped={"prompt_too_long": 1})
            continue
        if produces == "pairs" and record["model_a"] == record["model_b"]:
            ledger.bad(src.name, file, line, "self_battle", f"model_a == model_b == {record['model_a']!r}",
                       "model_b", stage="clean")
            continue
        if languages and record.get("language") and record["language"] not in languages:
            ledger.count(src.name, "clean", dropped={"language": 1})
            continue
        key = _row_key(record, produces)
        if key in seen:
            ledger.count(src.name, "clean", dropped={"duplicate_row": 1})
            continue
        seen.add(key)
        ledger.count(src.name, "clean", kept=1)
        yield record
