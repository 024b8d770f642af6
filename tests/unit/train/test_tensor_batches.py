"""TensorBatches deals exactly the batches the DataLoader path (EpochShuffleSampler + accelerate's
BatchSamplerShard with even_batches) deals, to 1 or 2 processes, and resumes mid-epoch exactly."""

from __future__ import annotations

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from routerforge.train.data_loading import EpochShuffleSampler
from routerforge.train.tensor_batches import TensorBatches


def dataloader_path_batches(n: int, batch: int, seed: int, epoch: int, process: int, processes: int) -> list[list[int]]:
    sampler = EpochShuffleSampler(n, seed)
    sampler.set_epoch(epoch)
    batches = BatchSampler(sampler, batch, drop_last=False)
    if processes == 1:
        return [list(b) for b in batches]
    return [list(b) for b in BatchSamplerShard(batches, num_processes=processes, process_index=process,
                                               even_batches=True)]


@pytest.mark.parametrize("n,batch,processes", [(109, 16, 1), (109, 16, 2), (96, 16, 2), (112, 16, 2), (5, 4, 2),
                                                (3, 4, 2), (64, 8, 3)])
def test_batches_are_the_dataloader_paths(n, batch, processes):
    rows = torch.arange(n)
    for process in range(processes):
        batches = TensorBatches((rows, rows * 2), batch, seed=7, process_index=process, num_processes=processes)
        for epoch in (0, 1):
            expected = dataloader_path_batches(n, batch, 7, epoch, process, processes)
            got = list(batches.epoch(epoch))
            assert len(batches) == len(expected) == len(got)
            assert [b[0].tolist() for b in got] == expected
            assert all(torch.equal(b[1], b[0] * 2) for b in got)  # every column gathered by the same rows
            assert [b[0].tolist() for b in batches.epoch(epoch, skip_batches=2)] == expected[2:]


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        TensorBatches((torch.arange(3), torch.arange(4)), 2, 0, 0, 1)
