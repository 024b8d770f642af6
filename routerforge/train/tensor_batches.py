"""Shuffled micro-batches of a table held as tensors on the device, without a DataLoader.

For a tiny model over a big table (the MF router: 1.2M pairs, a 50k-parameter model) the per-step cost
of a DataLoader (iterator, fetcher, collate, accelerate's BatchSamplerShard and DataLoaderShard) is larger
than the step itself. `TensorBatches` keeps the columns where the model is and slices one permutation:

- epoch e visits the rows in `randperm(n)` drawn from a generator seeded with seed + e: the order of
  `routerforge.train.data_loading.EpochShuffleSampler`, so a run sees the batches it saw through the
  DataLoader path;
- with P processes, global batch k goes to process k % P, and the last round is completed with the
  epoch's first rows so every process makes the same number of steps: exactly what accelerate's
  `BatchSamplerShard` does with `even_batches=True` (pinned by tests/unit/train/test_tensor_batches.py).
  With one process the last batch is the partial remainder, as a plain DataLoader with drop_last=False;
- `epoch(e, skip)` starts after `skip` micro-batches: a resume mid-epoch continues exactly where the
  checkpoint was saved, with no batch loaded twice or skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of `epoch`: randperm(num_rows) from a CPU generator seeded with seed + epoch."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(num_rows, generator=generator)


def batches_per_process(num_rows: int, micro_batch_size: int, num_processes: int) -> int:
    """Micro-batches each process takes per epoch (accelerate's BatchSamplerShard length, even_batches)."""
    global_batches = -(-num_rows // micro_batch_size)
    return -(-global_batches // num_processes)


def process_row_order(num_rows: int, micro_batch_size: int, seed: int, epoch: int, process_index: int,
                      num_processes: int) -> list[torch.Tensor]:
    """The row indices of each micro-batch this process takes in `epoch` (CPU int64 tensors)."""
    order = epoch_permutation(num_rows, seed, epoch)
    if num_processes == 1:
        return list(order.split(micro_batch_size))
    rounds = batches_per_process(num_rows, micro_batch_size, num_processes)
    needed = rounds * num_processes * micro_batch_size
    if needed > num_rows:  # complete the last round with the epoch's first rows, cycling if the table is tiny
        order = order.repeat(-(-needed // num_rows))[:needed]
    grid = order.view(rounds, num_processes, micro_batch_size)
    return list(grid[:, process_index])


class TensorBatches:
    """Micro-batches of equal-length column tensors for one process (see the module docstring)."""

    def __init__(self, columns: tuple[torch.Tensor, ...], micro_batch_size: int, seed: int, process_index: int,
                 num_processes: int) -> None:
        lengths = {int(c.shape[0]) for c in columns}
        if len(lengths) != 1:
            raise ValueError(f"columns must have the same length, got {sorted(lengths)}")
        self.columns = columns
        self.num_rows = lengths.pop()
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.process_index = process_index
        self.num_processes = num_processes

    def __len__(self) -> int:
        return batches_per_process(self.num_rows, self.micro_batch_size, self.num_processes)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """This process's micro-batches of `epoch`, after the first `skip_batches` of them."""
        device = self.columns[0].device
        for rows in process_row_order(self.num_rows, self.micro_batch_size, self.seed, epoch, self.process_index,
                                      self.num_processes)[skip_batches:]:
            rows = rows.to(device, non_blocking=True)
            yield tuple(column[rows] for column in self.columns)
