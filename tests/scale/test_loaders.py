"""The zoo's samplers and resumable loader (datamodules.distributed), in one process."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import datamodules.distributed as distributed
from datamodules.distributed import (
    EverySampleOnceSampler,
    ResumableDataLoader,
    make_dataloader,
)


def test_every_sample_once_sampler_splits_without_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = list(range(11))
    sampler = EverySampleOnceSampler(dataset)
    assert isinstance(sampler, DistributedSampler)  # so Lightning does not replace it with a padding one
    assert list(sampler) == dataset  # no process group: everything, in order
    per_rank = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "_world", lambda rank=rank: (3, rank))
        per_rank.append(list(sampler))
        assert len(sampler) == len(per_rank[-1])
    assert sorted(sum(per_rank, [])) == dataset
    assert [len(r) for r in per_rank] == [4, 4, 3]


def _epoch(loader: ResumableDataLoader, epoch: int, save_after: int | None = None) -> tuple[list, list, dict | None]:
    """Batches and the 'augmentation' random draws after each, as a training loop sees them (``epoch``: for
    the reader; a RandomSampler's order comes from the global generator, which the loader restores)."""
    batches, draws, state = [], [], None
    for i, (x,) in enumerate(loader, start=1):
        batches.append(x.clone())
        draws.append(torch.rand(2))  # the global generator, as augmentation and dropout use it
        if i == save_after:
            state = loader.state_dict()
    return batches, draws, state


def test_resumable_loader_resumes_mid_epoch_with_the_same_batches_and_random_stream() -> None:
    dataset = TensorDataset(torch.arange(40.0))
    torch.manual_seed(5)
    reference = make_dataloader(dataset, batch_size=4, shuffle=True)
    assert isinstance(reference, ResumableDataLoader)
    _epoch(reference, 0)
    batches, draws, state = _epoch(reference, 1, save_after=3)
    after_epoch = _epoch(reference, 2)

    torch.manual_seed(999)  # a new process: other random states, other history
    resumed = make_dataloader(dataset, batch_size=4, shuffle=True)
    resumed.load_state_dict(state)
    torch.rand(7)  # things a resumed run does before its first batch (sanity check, iterator seeds)
    rest_batches, rest_draws, _ = _epoch(resumed, 1)
    assert len(rest_batches) == len(batches) - 3
    for got, expected in zip(rest_batches + rest_draws, batches[3:] + draws[3:], strict=True):
        assert torch.equal(got, expected)
    for got, expected in zip(sum(_epoch(resumed, 2)[:2], []), sum(after_epoch[:2], []), strict=True):
        assert torch.equal(got, expected)


def test_resumable_loader_records_the_dataset_indices_of_each_batch() -> None:
    dataset = TensorDataset(torch.arange(10) * 10)
    loader = make_dataloader(dataset, batch_size=3, shuffle=True)
    for (values,) in loader:
        assert [int(v) // 10 for v in values] == loader.current_indices


def test_evaluation_loader_reads_in_order_through_the_every_sample_once_sampler() -> None:
    loader = make_dataloader(TensorDataset(torch.arange(7)), batch_size=3)
    assert type(loader) is DataLoader and isinstance(loader.sampler, EverySampleOnceSampler)
    assert torch.cat([b for (b,) in loader]).tolist() == list(range(7))
