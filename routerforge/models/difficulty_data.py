"""Outcome and pair tables -> one training example per prompt for the difficulty router.

Every prompt of a split that has outcomes or pairs becomes one example, so the encoder reads each prompt
once per epoch whatever the number of labels on it:

    input_ids            the prompt tokenized by the backbone's tokenizer (truncated to max_seq_tokens)
    candidate_labels [C] BEST-Route soft labels P(best of n samples of m >= reference - t), one per candidate
    candidate_mask   [C] 1 where the label exists (the reference answered the prompt and m has >= n samples)
    difficulty, difficulty_mask   1 - mean over models of the mean score (routerforge.models.difficulty)
    pairs                (model_a, model_b, P(a beats b), weight) of every kept vote on the prompt

Several outcome rows for one (prompt_id, model) are several samples of that model (BEST-Route samples 20
responses per model and prompt). Pairs go through `routerforge.data.pair_tensors.pairs_to_tensors`, the MF
recipe's conversion (same tie rule, source weights and drop counting).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from datasets import Dataset as ArrowTable
from torch.utils.data import Dataset

from routerforge.data.pair_tensors import pairs_to_tensors
from routerforge.errors import DataError
from routerforge.models.difficulty import Candidate, best_of_n_match_probability, difficulty_target

Samples = dict[str, dict[str, list[float]]]  # prompt_id -> model -> sample scores


def outcome_samples(table: ArrowTable | None) -> tuple[dict[str, str], Samples]:
    """(prompt_id -> prompt text, prompt_id -> model -> scores) of an outcomes split, in row order."""
    texts: dict[str, str] = {}
    samples: Samples = defaultdict(lambda: defaultdict(list))
    if table is None or len(table) == 0:
        return texts, {}
    columns = table.select_columns(["prompt_id", "prompt", "model", "score"]).to_dict()
    for pid, prompt, model, score in zip(columns["prompt_id"], columns["prompt"], columns["model"],
                                         columns["score"], strict=True):
        texts.setdefault(pid, prompt)
        samples[pid][model].append(float(score))
    return texts, {pid: dict(by_model) for pid, by_model in samples.items()}


def choose_reference_model(samples: Samples, pool: list[str], configured: str | None, where: str) -> str:
    """`configured`, or the model with the highest mean score over the rows of `samples` (pool order breaks ties)."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for by_model in samples.values():
        for model, scores in by_model.items():
            totals[model][0] += sum(scores)
            totals[model][1] += len(scores)
    if configured is not None:
        if configured not in totals:
            raise DataError(f"labels.reference_model='{configured}' has no outcomes in {where} (models with "
                            f"outcomes: {', '.join(m for m in pool if m in totals)}); pick one of them or null.")
        return configured
    ranked = [m for m in pool if m in totals]
    if not ranked:
        raise DataError(f"{where}: no outcomes, so there is no reference model for the candidate heads.")
    return max(ranked, key=lambda m: (totals[m][0] / totals[m][1], -ranked.index(m)))


def candidates_for(pool: list[str], samples: Samples, reference: str, best_of_n: list[int]) -> list[Candidate]:
    """(model, n) for every model with outcomes (pool order) and every n, except the reference's single sample."""
    with_outcomes = {m for by_model in samples.values() for m in by_model}
    return [Candidate(m, n) for m in pool if m in with_outcomes for n in sorted(best_of_n)
            if not (m == reference and n == 1)]


@dataclass
class DifficultyExamples(Dataset):
    """One example per prompt (see the module docstring); `stats` counts what was kept and dropped."""

    prompt_ids: list[str]
    input_ids: list[list[int]]
    candidate_labels: torch.Tensor  # float32 [N, C]
    candidate_mask: torch.Tensor  # float32 [N, C]
    difficulty: torch.Tensor  # float32 [N]
    difficulty_mask: torch.Tensor  # float32 [N]
    pairs: list[tuple[list[int], list[int], list[float], list[float]]]  # per prompt: a, b, target, weight
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def token_counts(self) -> list[int]:
        """Each example's prompt length in tokens (after truncation), in example order."""
        return [len(ids) for ids in self.input_ids]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "candidate_labels": self.candidate_labels[i],
                "candidate_mask": self.candidate_mask[i], "difficulty": self.difficulty[i],
                "difficulty_mask": self.difficulty_mask[i], "pairs": self.pairs[i]}


def build_examples(outcomes: ArrowTable | None, pairs: ArrowTable | None, *, tokenizer, max_seq_tokens: int,
                   model_index: dict[str, int], candidates: list[Candidate], reference: str | None,
                   tolerance: float, ties: str, use_source_weights: bool, where: str) -> DifficultyExamples:
    """Examples of one split. `outcomes` / `pairs` may be None (that head is not trained)."""
    texts, samples = outcome_samples(outcomes)
    if pairs is not None:
        for pid, prompt in zip(pairs["prompt_id"], pairs["prompt"], strict=True):
            texts.setdefault(pid, prompt)
    prompt_ids = sorted(texts)
    row_of = {pid: i for i, pid in enumerate(prompt_ids)}
    n_prompts, n_candidates = len(prompt_ids), len(candidates)

    labels = torch.zeros(n_prompts, n_candidates)
    label_mask = torch.zeros(n_prompts, n_candidates)
    difficulty = torch.zeros(n_prompts)
    difficulty_mask = torch.zeros(n_prompts)
    dropped: Counter[str] = Counter()
    for pid, by_model in samples.items():
        row = row_of[pid]
        difficulty[row] = difficulty_target(by_model)
        difficulty_mask[row] = 1.0
        reference_scores = by_model.get(reference) if reference else None
        for c, candidate in enumerate(candidates):
            scores = by_model.get(candidate.model)
            if not scores:
                dropped["candidate_model_missing"] += 1
            elif not reference_scores:
                dropped["reference_missing"] += 1
            elif len(scores) < candidate.n_samples:
                dropped["fewer_samples_than_n"] += 1
            else:
                labels[row, c] = best_of_n_match_probability(scores, reference_scores, candidate.n_samples,
                                                             tolerance)
                label_mask[row, c] = 1.0

    per_prompt_pairs: list[tuple[list[int], list[int], list[float], list[float]]] = [
        ([], [], [], []) for _ in range(n_prompts)]
    pair_dropped: dict[str, int] = {}
    n_pairs = 0
    if pairs is not None and len(pairs):
        tensors = pairs_to_tensors(pairs, model_index, row_of, ties, use_source_weights, where=where)
        for a, b, row, target, weight in zip(tensors.model_a.tolist(), tensors.model_b.tolist(),
                                             tensors.prompt_row.tolist(), tensors.target.tolist(),
                                             tensors.weight.tolist(), strict=True):
            entry = per_prompt_pairs[row]
            entry[0].append(a)
            entry[1].append(b)
            entry[2].append(target)
            entry[3].append(weight)
        n_pairs, pair_dropped = len(tensors), tensors.dropped

    input_ids: list[list[int]] = []
    for start in range(0, n_prompts, 1024):
        chunk = [texts[pid] for pid in prompt_ids[start:start + 1024]]
        input_ids.extend(tokenizer(chunk, truncation=True, max_length=max_seq_tokens)["input_ids"])
    stats = {
        "prompts": n_prompts,
        "prompts_with_outcomes": len(samples),
        "outcome_rows": sum(len(s) for by_model in samples.values() for s in by_model.values()),
        "candidate_labels": {cand.name: int(label_mask[:, c].sum()) for c, cand in enumerate(candidates)},
        "candidate_labels_dropped": dict(dropped),
        "pairs": n_pairs,
        "pairs_dropped": dict(pair_dropped),
        "truncated_prompts": sum(len(ids) >= max_seq_tokens for ids in input_ids),
    }
    return DifficultyExamples(prompt_ids, input_ids, labels, label_mask, difficulty, difficulty_mask,
                              per_prompt_pairs, stats)


def collate_examples(pad_token_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Pad a list of examples to a batch: tokens to the longest prompt, pairs to the most pairs (weight 0)."""

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        batch_size = len(examples)
        seq_len = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((batch_size, seq_len), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, seq_len, dtype=torch.long)
        max_pairs = max(1, max(len(e["pairs"][0]) for e in examples))
        pair_a = torch.zeros(batch_size, max_pairs, dtype=torch.long)
        pair_b = torch.zeros(batch_size, max_pairs, dtype=torch.long)
        pair_target = torch.zeros(batch_size, max_pairs)
        pair_weight = torch.zeros(batch_size, max_pairs)
        for i, e in enumerate(examples):
            ids = e["input_ids"]
            input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, :len(ids)] = 1
            a, b, target, weight = e["pairs"]
            if a:
                pair_a[i, :len(a)] = torch.tensor(a)
                pair_b[i, :len(b)] = torch.tensor(b)
                pair_target[i, :len(target)] = torch.tensor(target)
                pair_weight[i, :len(weight)] = torch.tensor(weight)
        return {
            "input_ids": input_ids, "attention_mask": attention_mask,
            "candidate_labels": torch.stack([e["candidate_labels"] for e in examples]),
            "candidate_mask": torch.stack([e["candidate_mask"] for e in examples]),
            "difficulty": torch.stack([e["difficulty"] for e in examples]),
            "difficulty_mask": torch.stack([e["difficulty_mask"] for e in examples]),
            "pair_model_a": pair_a, "pair_model_b": pair_b, "pair_target": pair_target, "pair_weight": pair_weight,
        }

    return collate
