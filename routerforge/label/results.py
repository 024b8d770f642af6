"""What a labeling run produced (the calls' replies) and what it did (counts, spend, failures)."""

from __future__ import annotations

from dataclasses import dataclass, field

from routerforge.label.cache import CachedReply


@dataclass
class RunStats:
    """What one run did (printed; not part of the label set, which is the same however many runs it took)."""

    new_calls: int = 0
    cached_calls: int = 0
    retries: int = 0
    skipped_calls: int = 0  # not made because of the spend cap
    spent_usd: float = 0.0  # token cost of every call the label set used so far (cached ones included)
    new_spent_usd: float = 0.0  # cost of the calls made by this run
    elapsed_s: float = 0.0
    failures: list[dict] = field(default_factory=list)


@dataclass
class Results:
    """Everything the label set is built from, keyed by prompt and model(s)."""

    answers: dict[tuple[str, str], CachedReply] = field(default_factory=dict)  # (prompt_id, model)
    judgments: dict[tuple, tuple[list[dict], CachedReply]] = field(default_factory=dict)
