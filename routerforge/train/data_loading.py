"""Dataloaders whose order is a pure function of (seed, epoch), so a run can resume mid-epoch exactly.

- `EpochShuffleSampler`: the order of epoch e is `randperm(n)` drawn from a generator seeded with
  seed + e. Every process computes the same order; accelerate's `prepare` then deals the batches out
  to the processes (BatchSamplerShard), and `set_epoch` reaches the sampler through accelerate's
  `DataLoaderShard.set_epoch`.
- Each DataLoader gets its own `torch.Generator`. A DataLoader draws a base seed from its generator
  every time an iterator is created; without one it draws from the GLOBAL torch RNG, which the model
  also uses (e.g. for embedding noise). Then a resumed run, which creates its iterator at a different
  moment, would draw different noise than the uninterrupted run.
- `batches_for_epoch` positions a prepared loader at (epoch, micro-batches already consumed) with
  accelerate's `skip_first_batches`, which skips batch indices without loading them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A deterministic shuffle: epoch e visits the examples in the order randperm(n, seed + e)."""

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.num_examples, generator=generator).tolist()

    def __len__(self) -> int:
        return self.num_examples


def build_train_loader(dataset: Dataset, micro_batch_size: int, seed: int,
                       collate_fn: Callable[[list], Any] | None = None) -> DataLoader:
    """A shuffled training loader (pass it to `accelerator.prepare`). The last partial batch is kept."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=micro_batch_size, sampler=EpochShuffleSampler(len(dataset), seed),
                      collate_fn=collate_fn, generator=generator, drop_last=False)


def build_eval_loader(dataset: Dataset, batch_size: int, collate_fn: Callable[[list], Any] | None = None) -> DataLoader:
    """An in-order evaluation loader (pass it to `accelerate.prepare`; use `gather_for_metrics` on outputs)."""
    generator = torch.Generator()
    generator.manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn, generator=generator)


def batches_for_epoch(accelerator: Accelerator, prepared_loader: DataLoader, epoch: int,
                      batches_done: int) -> Iterable:
    """The prepared loader's batches of `epoch`, without the first `batches_done` (per process) of them."""
    prepared_loader.set_epoch(epoch)
    if batches_done == 0:
        return prepared_loader
    return accelerator.skip_first_batches(prepared_loader, batches_done)


def normalize_position(epoch: int, batches_done: int, batches_per_epoch: int) -> tuple[int, int]:
    """A position saved after an epoch's last batch means: the next epoch, from its start."""
    if batches_done >= batches_per_epoch:
        return epoch + 1, 0
    return epoch, batches_done
