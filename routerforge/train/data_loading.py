"""Dataloaders whose order is a pure function of (seed, epoch), so a run can resume mid-epoch exactly.

- `EpochShuffleSampler`: the order of epoch e is `randperm(n)` drawn from a generator seeded with
  seed + e. Every process computes the same order; accelerate's `prepare` then deals the batches out
  to the processes (BatchSamplerShard), and `set_epoch` reaches the sampler through accelerate's
  `DataLoaderShard.set_epoch`.
- `LengthGroupedEpochSampler`: the same contract, with transformers' length grouping (Trainer's
  `group_by_length`): a seeded shuffle cut into mega-batches, each sorted by length, so a micro-batch
  holds prompts of similar length and pads little. Text recipes pad each batch to its longest prompt;
  on real prompts (MMLU-Pro: median 120 tokens, 16% over 256) random batches almost always pad to the
  truncation length, grouped ones process ~1.8x fewer tokens.
- Each DataLoader gets its own `torch.Generator`. A DataLoader draws a base seed from its generator
  every time an iterator is created; without one it draws from the GLOBAL torch RNG, which the model
  also uses (e.g. for embedding noise). Then a resumed run, which creates its iterator at a different
  moment, would draw different noise than the uninterrupted run.
- `batches_for_epoch` positions a prepared loader at (epoch, micro-batches already consumed) with
  accelerate's `skip_first_batches`, which skips batch indices without loading them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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


class LengthGroupedEpochSampler(Sampler[int]):
    """Epoch e visits the examples in transformers' length-grouped order drawn from a generator seeded seed + e.

    `get_length_grouped_indices` (what Trainer's `group_by_length` uses) permutes the indices, cuts them into
    mega-batches of up to 50 micro-batches and sorts each by decreasing length, the longest batch first.
    """

    def __init__(self, lengths: Sequence[int], micro_batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.epoch = 0
        # Micro-batches per mega-batch (transformers' own rule: 50, or fewer to make at least 4 mega-batches),
        # passed explicitly so the ETA (micro_batches_per_group) and the order agree.
        self.micro_batches_per_group = max(1, min(len(self.lengths) // (micro_batch_size * 4), 50))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        # Imported here: transformers' trainer module costs ~0.5 s to import, and the recipes without text
        # (MF, probe) use this module too.
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        yield from get_length_grouped_indices(self.lengths, self.micro_batch_size,
                                              mega_batch_mult=self.micro_batches_per_group, generator=generator)

    def __len__(self) -> int:
        return len(self.lengths)


def build_train_loader(dataset: Dataset, micro_batch_size: int, seed: int,
                       collate_fn: Callable[[list], Any] | None = None,
                       lengths: Sequence[int] | None = None) -> DataLoader:
    """A shuffled training loader (pass it to `accelerator.prepare`). The last partial batch is kept.

    `lengths` (one per example, e.g. token counts): batches group examples of similar length.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = (EpochShuffleSampler(len(dataset), seed) if lengths is None
               else LengthGroupedEpochSampler(lengths, micro_batch_size, seed))
    return DataLoader(dataset, batch_size=micro_batch_size, sampler=sampler,
                      collate_fn=collate_fn, generator=generator, drop_last=False)


def build_eval_loader(dataset: Dataset, batch_size: int, collate_fn: Callable[[list], Any] | None = None,
                      lengths: Sequence[int] | None = None) -> DataLoader:
    """An evaluation loader in a fixed order (pass it to `accelerate.prepare`; use `gather_for_metrics`).

    `lengths` given: longest examples first, so each batch pads to a length close to its own prompts' (the
    metrics are sums over examples, so the order does not change them); else the dataset's order.
    """
    generator = torch.Generator()
    generator.manual_seed(0)
    order = None if lengths is None else sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=order, collate_fn=collate_fn,
                      generator=generator)


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
