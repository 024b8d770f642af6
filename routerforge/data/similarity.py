"""Cosine-similarity search over L2-normalised embeddings with faiss (exact inner-product index).

Used for near-duplicate grouping and embedding-based decontamination. Exact search (IndexFlatIP):
the sets here are at most a few hundred thousand prompts, where exact search on CPU is fast enough
and an approximate index could silently miss a contaminated prompt.
"""

from __future__ import annotations

import faiss
import numpy as np


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def max_cosine(queries: np.ndarray, corpus: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, (best cosine, index of best corpus row); (-inf, -1) when the corpus is empty."""
    n = len(queries)
    if len(corpus) == 0 or n == 0:
        return np.full(n, -np.inf, dtype=np.float32), np.full(n, -1, dtype=np.int64)
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(_as_f32(corpus))
    best = np.empty(n, dtype=np.float32)
    arg = np.empty(n, dtype=np.int64)
    for start in range(0, n, batch):
        sims, ids = index.search(_as_f32(queries[start:start + batch]), 1)
        best[start:start + batch] = sims[:, 0]
        arg[start:start + batch] = ids[:, 0]
    return best, arg


def near_duplicate_groups(ids: list[str], embeddings: np.ndarray, threshold: float) -> dict[str, str]:
    """Map every id to its group's representative (the smallest id) under cosine >= threshold.

    Groups are connected components of the "cosine >= threshold" graph (union-find), so near-duplicate
    chains share one group and therefore one split.
    """
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if threshold > 0 and len(ids) > 1:
        index = faiss.IndexFlatIP(embeddings.shape[1])
        emb = _as_f32(embeddings)
        index.add(emb)
        lims, _, neighbours = index.range_search(emb, float(threshold))
        for i in range(len(ids)):
            for j in neighbours[lims[i]:lims[i + 1]]:
                ri, rj = find(i), find(int(j))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for i in range(len(ids)):
        members.setdefault(find(i), []).append(i)
    out: dict[str, str] = {}
    for group in members.values():
        rep = min(ids[i] for i in group)
        for i in group:
            out[ids[i]] = rep
    return out
