"""Prompt x model score tables from a prepared dataset, and the routing metric recipes search hyperparameters on.

Families that learn every model's score on a prompt (kNN, linear) share these plain functions:
`score_table` turns one split's outcomes (and, optionally, preference pairs as win/loss results) into a
[prompts, models] matrix with NaN where a model was not scored; `selection_pairs` and `mean_pair_apgr`
score a candidate by the quantity users route on: the mean APGR over the pool's model pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from routerforge.data.dataset_io import PreparedDataset, load_prepared
from routerforge.errors import DataError
from routerforge.eval.binary import binary_headline_metrics


def score_table(data: PreparedDataset, split: str, pool: list[str], pairs_as_outcomes: bool
                ) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """(prompt ids, scores [prompts, models] with NaN where unscored, counts by origin) of one split.

    Measured outcomes win; repeated outcomes of one (prompt, model) are averaged. Pairs fill only cells
    without a measured outcome, with the mean of the model's results on that prompt (win 1, loss 0, tie 0.5).
    """
    column = {m: j for j, m in enumerate(pool)}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}

    def cell(pid: str) -> tuple[np.ndarray, np.ndarray]:
        if pid not in sums:
            sums[pid], counts[pid] = np.zeros(len(pool)), np.zeros(len(pool))
        return sums[pid], counts[pid]

    outcome_rows = 0
    if split in data.outcomes and len(data.outcomes[split]):
        frame = data.outcomes[split].select_columns(["prompt_id", "model", "score"]).to_pandas()
        frame = frame[frame["model"].isin(column)]
        grouped = frame.groupby(["prompt_id", "model"])["score"].agg(["sum", "count"]).reset_index()
        for pid, model, total, n in grouped.itertuples(index=False):
            s, c = cell(pid)
            s[column[model]], c[column[model]] = total, n
        outcome_rows = len(frame)
    pair_rows = 0
    if pairs_as_outcomes and split in data.pairs and len(data.pairs[split]):
        table = data.pairs[split]
        names = table.features["winner"].names
        measured = {pid: counts[pid] > 0 for pid in counts}
        pair_sums: dict[str, np.ndarray] = {}
        pair_counts: dict[str, np.ndarray] = {}
        for pid, a, b, w in zip(table["prompt_id"], table["model_a"], table["model_b"], table["winner"], strict=True):
            if a not in column or b not in column:
                continue
            done = measured.get(pid)
            winner = names[w]
            result_a = 0.5 if winner.startswith("tie") else (1.0 if winner == "model_a" else 0.0)
            for model, result in ((a, result_a), (b, 1.0 - result_a)):
                j = column[model]
                if done is not None and done[j]:
                    continue
                if pid not in pair_sums:
                    pair_sums[pid], pair_counts[pid] = np.zeros(len(pool)), np.zeros(len(pool))
                pair_sums[pid][j] += result
                pair_counts[pid][j] += 1
                pair_rows += 1
        for pid in pair_sums:
            s, c = cell(pid)
            s += pair_sums[pid]
            c += pair_counts[pid]
    prompt_ids = sorted(sums)
    if not prompt_ids:
        return [], np.zeros((0, len(pool)), dtype=np.float32), {"outcome_rows": 0, "pair_results": 0}
    total = np.stack([sums[p] for p in prompt_ids])
    n = np.stack([counts[p] for p in prompt_ids])
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(n > 0, total / np.where(n > 0, n, 1), np.nan).astype(np.float32)
    return prompt_ids, scores, {"outcome_rows": outcome_rows, "pair_results": pair_rows}


def scores_over_splits(data: PreparedDataset, splits: list[str], pool: list[str], pairs_as_outcomes: bool
                       ) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """`score_table` of several splits stacked (prompt ids, scores, counts); every pool model must be scored."""
    ids: list[str] = []
    tables, counts = [], {"outcome_rows": 0, "pair_results": 0}
    for split in splits:
        split_ids, scores, split_counts = score_table(data, split, pool, pairs_as_outcomes)
        ids += split_ids
        tables.append(scores)
        counts = {key: counts[key] + split_counts[key] for key in counts}
    if not ids:
        raise DataError(f"{data.path}: splits {', '.join(splits)} have no scored prompt for the pool.")
    scores = np.concatenate(tables)
    unscored = [pool[j] for j in np.flatnonzero(np.isnan(scores).all(axis=0))]
    if unscored:
        raise DataError(f"{data.path}: {', '.join(unscored)} have no score in {', '.join(splits)}; drop them with "
                        f"data.models or add their outcomes.")
    return ids, scores, counts


@dataclass(frozen=True)
class ScoredPrompts:
    """What a fit-in-one-pass family trains on: the pool, one score row and one embedding per prompt."""

    data: PreparedDataset
    pool: list[str]
    prompt_ids: list[str]
    scores: np.ndarray  # [prompts, models], NaN = unscored
    embeddings: np.ndarray  # [prompts, dim] float32
    counts: dict[str, int]  # rows by origin: outcome_rows, pair_results


def load_scored_prompts(path: str, splits: list[str], models: list[str] | None, pairs_as_outcomes: bool,
                        splits_key: str) -> ScoredPrompts:
    """The prepared dataset at `path` as a score table over `splits` (`splits_key` names the config key in errors)."""
    data = load_prepared(path)
    missing = [split for split in splits if split not in data.prompts]
    if missing:
        raise DataError(f"{data.path}: no split {', '.join(missing)} (has {', '.join(data.prompts)}); set "
                        f"{splits_key}.")
    pool = pool_of(data, models, pairs_as_outcomes)
    if len(pool) < 2:
        raise DataError(f"{data.path}: {len(pool)} scored model(s) ({', '.join(pool) or 'none'}); routing needs "
                        f"at least 2. Add an outcome source (or preference pairs) to the data config.")
    embedding_of = data.embedding_index()
    ids, scores, counts = scores_over_splits(data, list(splits), pool, pairs_as_outcomes)
    return ScoredPrompts(data, pool, ids, scores, np.stack([embedding_of[p] for p in ids]), counts)


def pool_of(data: PreparedDataset, models: list[str] | None, pairs_as_outcomes: bool) -> list[str]:
    """The model pool: `models` (checked to have scores), or every scored model in the manifest's order."""
    scored = {m for split in data.outcomes for m in data.outcomes[split].unique("model")}
    if pairs_as_outcomes:
        for split in data.pairs:
            scored |= set(data.pairs[split].unique("model_a")) | set(data.pairs[split].unique("model_b"))
    if models is not None:
        unknown = [m for m in models if m not in scored]
        if unknown:
            raise DataError(f"data.models: {unknown} have no scores in {data.path} (scored models: "
                            f"{', '.join(sorted(scored))}); fix the names.")
        return list(models)
    pool = [m for m in data.models if m in scored]
    return pool + sorted(scored - set(pool))


def selection_pairs(scores: np.ndarray, pool: list[str], strong: str | None, weak: str | None,
                    min_pair_prompts: int, min_quality_gap: float) -> list[tuple[int, int]]:
    """(strong, weak) column pairs a hyperparameter search scores: the one named pair, or every pair both
    of whose models scored >= min_pair_prompts prompts and whose mean scores differ by >= min_quality_gap."""
    if strong is not None:
        missing = [m for m in (strong, weak) if m not in pool]
        if missing:
            raise DataError(f"select.strong / select.weak: {missing} not in the pool ({', '.join(pool)}).")
        return [(pool.index(strong), pool.index(weak))]
    observed = ~np.isnan(scores)
    means = np.nanmean(np.where(observed, scores, np.nan), axis=0)
    scored, gapped = [], []
    for i, j in itertools.combinations(range(len(pool)), 2):
        if (observed[:, i] & observed[:, j]).sum() < min_pair_prompts:
            continue
        pair = (i, j) if means[i] >= means[j] else (j, i)
        scored.append(pair)
        if abs(means[i] - means[j]) >= min_quality_gap:
            gapped.append(pair)
    return gapped or scored  # two models of equal mean quality still have per-prompt gains to route on


def mean_pair_apgr(predicted: np.ndarray, truth: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    """Mean APGR over `pairs` of routing by predicted[:, s] - predicted[:, w] (truth: NaN = unscored)."""
    values = []
    for s, w in pairs:
        both = ~np.isnan(truth[:, s]) & ~np.isnan(truth[:, w])
        m = binary_headline_metrics(predicted[both, s] - predicted[both, w], truth[both, w], truth[both, s])
        if np.isfinite(m["apgr"]):
            values.append(m["apgr"])
    return float(np.mean(values)) if values else float("nan")
