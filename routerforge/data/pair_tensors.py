"""Preference pairs -> tensors for pairwise recipes (the MF router; later any Bradley-Terry-style head).

Each kept pair becomes (model_a index, model_b index, prompt row, target, weight) where target is the
probability that model_a beats model_b: 1 (model_a won), 0 (model_b won) or, for ties under
`ties=half`, 0.5. A pair with a soft label (`p_model_a_wins`, e.g. a judge's probability) is trained
toward that probability instead; its `winner` (the label rounded) still decides the tie rule. Pairs of
a model against itself carry no preference and are dropped, as RouteLLM's training script drops them;
ties are dropped under `ties=drop` (RouteLLM's rule). Every drop is counted by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import TensorDataset

from routerforge.data.dataset_io import PreparedDataset
from routerforge.errors import DataError

TIE_RULES = {
    "drop": "ties (tie, tie_bothbad) are not trained on (RouteLLM)",
    "half": "ties are trained toward P(a beats b) = 0.5",
}
_TARGET = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie_bothbad": 0.5}


@dataclass(frozen=True)
class PairTensors:
    model_a: torch.Tensor  # int64 [n]
    model_b: torch.Tensor  # int64 [n]
    prompt_row: torch.Tensor  # int64 [n], row of the prompt embedding matrix
    target: torch.Tensor  # float32 [n], P(model_a beats model_b)
    weight: torch.Tensor  # float32 [n], per-pair loss weight (the source's weight)
    dropped: dict[str, int]  # reason -> number of pairs not kept

    def __len__(self) -> int:
        return int(self.model_a.shape[0])

    def dataset(self) -> BatchGatherTensorDataset:
        """The five columns as a dataset whose loader must use `collate_gathered`."""
        return BatchGatherTensorDataset(self.model_a, self.model_b, self.prompt_row, self.target, self.weight)


class BatchGatherTensorDataset(TensorDataset):
    """A TensorDataset the DataLoader reads one batch at a time: one index op per column.

    torch's fetcher calls `__getitems__(indices)` when a dataset has it; the default per-sample path
    (5 x micro_batch tensor indexings + default_collate stacking) cost ~10 ms per epoch of the MF
    recipe's ~40 ms (bench/bench_mf_vs_routellm.py --explain). Same batches, same order: the sampler
    (and accelerate's sharding / skip_first_batches) decides the indices either way. Use with
    `collate_fn=collate_gathered`, which passes the already-stacked tuple through.
    """

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(column[index] for column in self.tensors)


def collate_gathered(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Collate function for `BatchGatherTensorDataset`: the batch is already stacked."""
    return batch


def prompt_embedding_matrix(data: PreparedDataset) -> tuple[dict[str, int], torch.Tensor]:
    """(prompt_id -> row, float32 matrix [n_prompts, dim]) over every split, rows in sorted prompt_id order."""
    index = data.embedding_index()
    prompt_ids = sorted(index)
    dim = int(data.encoder["dim"])
    matrix = np.zeros((len(prompt_ids), dim), dtype=np.float32)
    for row, pid in enumerate(prompt_ids):
        matrix[row] = index[pid]
    return {pid: row for row, pid in enumerate(prompt_ids)}, torch.from_numpy(matrix)


def pairs_to_tensors(pairs: Dataset, model_index: dict[str, int], prompt_row: dict[str, int], ties: str,
                     use_source_weights: bool = True, where: str = "pairs") -> PairTensors:
    """Convert one split of the pairs table; raise DataError on a model or prompt the dataset does not define."""
    if ties not in TIE_RULES:
        raise DataError(f"unknown tie rule '{ties}'; use one of {', '.join(TIE_RULES)}")
    winner_names = pairs.features["winner"].names
    # Datasets written before soft labels existed have no p_model_a_wins column: all labels are hard.
    soft_column = ["p_model_a_wins"] if "p_model_a_wins" in pairs.column_names else []
    columns = pairs.select_columns(["prompt_id", "model_a", "model_b", "winner", "weight", *soft_column]).to_dict()
    soft_labels = columns["p_model_a_wins"] if soft_column else [None] * len(columns["prompt_id"])
    kept_a, kept_b, kept_rows, kept_target, kept_weight = [], [], [], [], []
    dropped: Counter[str] = Counter()
    for i, (pid, model_a, model_b, winner_id, weight, soft) in enumerate(zip(
            columns["prompt_id"], columns["model_a"], columns["model_b"], columns["winner"], columns["weight"],
            soft_labels, strict=True)):
        for model in (model_a, model_b):
            if model not in model_index:
                raise DataError(f"{where} row {i}: model '{model}' is not in the dataset's model pool "
                                f"(manifest 'models'); re-run data prep.")
        if pid not in prompt_row:
            raise DataError(f"{where} row {i}: prompt_id {pid} has no embedding in the prompts table; "
                            f"re-run data prep.")
        winner = winner_names[winner_id]
        if model_a == model_b:
            dropped["same_model"] += 1
            continue
        if winner in ("tie", "tie_bothbad") and ties == "drop":
            dropped[f"{winner}_dropped"] += 1
            continue
        weight = float(weight) if use_source_weights and weight is not None else 1.0
        if weight <= 0:
            dropped["zero_weight"] += 1
            continue
        kept_a.append(model_index[model_a])
        kept_b.append(model_index[model_b])
        kept_rows.append(prompt_row[pid])
        kept_target.append(_TARGET[winner] if soft is None else float(soft))
        kept_weight.append(weight)
    return PairTensors(
        model_a=torch.tensor(kept_a, dtype=torch.int64),
        model_b=torch.tensor(kept_b, dtype=torch.int64),
        prompt_row=torch.tensor(kept_rows, dtype=torch.int64),
        target=torch.tensor(kept_target, dtype=torch.float32),
        weight=torch.tensor(kept_weight, dtype=torch.float32),
        dropped=dict(dropped),
    )
