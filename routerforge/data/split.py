"""Seeded split by prompt group: no prompt (nor any near-duplicate of it) appears in two splits.

The split of a group is a pure function of (seed, group id): u = sha256(seed, group) / 2**64 in [0, 1);
u < test -> test, u < test + validation -> validation, else train. Streaming-friendly (no shuffle of
the whole set), stable when rows are added (existing prompts keep their split), and identical across
processes.
"""

from __future__ import annotations

import hashlib


def unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(group_id: str, seed: int, validation: float, test: float) -> str:
    u = unit_hash(seed, group_id)
    if u < test:
        return "test"
    if u < test + validation:
        return "validation"
    return "train"


def in_holdout(prompt_id: str, seed: int, fraction: float) -> bool:
    """Per-source evaluation holdout draw (independent of the split draw: different salt)."""
    return fraction > 0 and unit_hash(seed, "holdout\x1f" + prompt_id) < fraction
