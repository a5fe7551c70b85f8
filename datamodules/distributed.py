"""Data loading that survives many processes and a killed run: every sample once, resumable mid-epoch.

Lightning's strategies do the distributed work; what they cannot know is how the zoo wants its data
read. Two pieces, used by every datamodule through :func:`make_dataloader`:

* :class:`EverySampleOnceSampler` (evaluation). Under DDP Lightning gives a validation or test loader a
  ``DistributedSampler``, which pads the last round with repeated samples so that every process gets as
  many: 5 images on 2 processes are evaluated as 6, and the metrics count one image twice. This sampler
  *is* a ``DistributedSampler`` (so Lightning leaves it alone) but splits the indices without padding
  (rank ``r`` takes ``r, r + n, r + 2n, ...``): the processes may run one batch more or less, and
  metrics see every sample exactly once. It reads the world size when it is iterated, so a loader made
  before the process group exists still splits correctly. Evaluation must then avoid a collective per
  step (``self.log(..., on_step=True, sync_dist=True)``): torchmetrics and ``sync_dist`` epoch values
  synchronise once, at compute.
* :class:`ResumableDataLoader` (training). A ``DataLoader`` with ``state_dict`` / ``load_state_dict``,
  which Lightning stores in the checkpoint's fit-loop state: the epoch's position (batches already
  taken) and the random number generator states (torch, CUDA, numpy, ``random``) at the epoch's start
  and at the save. On resume it restores the epoch-start states and re-creates the epoch's iterator:
  the ``RandomSampler`` draws the same seed, hence the same order, and the workers get the same seeds
  (under DDP, Lightning's ``DistributedSampler`` derives the order from the seed and the epoch anyway).
  It then fast-forwards over the batches already trained on (loaded, not trained on: cheap for in-memory
  data, and it keeps per-sample augmentation streams in step) and restores the states of the save: the
  next batch and its augmentation are those of the uninterrupted run. (Lightning hands the state over in
  ``FitLoop.setup_data``; :class:`zoo.core.reliability.ResumeCheckpoint` makes sure it does when the
  loader was built before the restore.) It also remembers the dataset indices of the batch it last handed
  out (``current_indices``), which the failure handling of :mod:`zoo.core.reliability` names when a loss
  is not finite.

Exactness holds for one process with ``num_workers=0`` or non-persistent workers whose randomness
comes from their seed. With ``persistent_workers`` the workers' random streams run on across epochs and
a resumed run's fresh workers start over; a DDP checkpoint holds rank 0's random states only.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


# -- random number generator states (only types that torch.load(weights_only=True) accepts) --------------------
def capture_rng_states() -> dict[str, Any]:
    """The global random states of torch (CPU and, when initialised, CUDA), numpy and ``random``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global random states saved by :func:`capture_rng_states`."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _world() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


# -- evaluation sampler ------------------------------------------------------------------------------------
class EverySampleOnceSampler(DistributedSampler):
    """Evaluation sampler: dataset order, split over the processes without padding (see the module docstring).

    One process: ``0 .. N-1``. ``n`` processes: rank ``r`` takes ``r, r + n, ...``; the ranks together cover
    every index exactly once. Lightning does not replace it, because it is a ``DistributedSampler``.
    """

    def __init__(self, dataset: Sized) -> None:
        # num_replicas / rank given so that the constructor does not need a process group; the real ones are
        # read at iteration time.
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False, drop_last=False)  # type: ignore[arg-type]

    def _indices(self) -> range:
        world_size, rank = _world()
        return range(rank, len(self.dataset), world_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class _RecordingBatchSampler:
    """Wraps the index (batch) sampler of an iterator and queues every index list it hands out, in order."""

    def __init__(self, sampler: Any, sent: deque) -> None:
        self.sampler, self.sent = sampler, sent

    def __iter__(self) -> Iterator[Any]:
        for indices in self.sampler:
            self.sent.append(indices)
            yield indices

    def __len__(self) -> int:
        return len(self.sampler)


# -- the loader ----------------------------------------------------------------------------------------------
class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is part of the checkpoint (see the module docstring).

    Same arguments as ``DataLoader`` (Lightning re-creates it with a ``DistributedSampler`` under DDP).
    ``current_indices``: the dataset indices of the batch handed out last (None before the first).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._rng_epoch_start: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None
        self._sent: deque = deque()
        self.current_indices: list[int] | None = None

    @property
    def _index_sampler(self) -> Any:  # read by every DataLoader iterator when it starts (and on reset)
        return _RecordingBatchSampler(super()._index_sampler, self._sent)

    def _epoch(self) -> int | None:
        return getattr(self.sampler, "epoch", None)

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs until the first batch is asked for, which is after Lightning has called
        # set_epoch (the iterator itself is created earlier, in the fit loop's setup).
        pending, self._pending = self._pending, None
        mid_epoch = pending is not None and 0 < pending["batches_yielded"] < pending["num_batches"]
        if mid_epoch and pending["rng_epoch_start"] is not None:
            restore_rng_states(pending["rng_epoch_start"])
        self._rng_epoch_start = capture_rng_states()
        self._yielded = 0
        self._sent.clear()  # cleared, not replaced: a persistent-workers iterator keeps the recorder of its start
        self.current_indices = None
        iterator = super().__iter__()
        if pending is not None:
            if mid_epoch:
                if pending["num_batches"] != len(self):
                    raise RuntimeError(
                        f"cannot resume mid-epoch: the checkpoint's epoch had {pending['num_batches']} batches, this "
                        f"loader has {len(self)}. The data, batch_size or number of processes changed since the "
                        "checkpoint was saved. Fix: resume with the same settings, or from an end-of-epoch checkpoint."
                    )
                for _ in range(pending["batches_yielded"]):  # already trained on before the interruption
                    next(iterator)
                    self._sent.popleft()
                self._yielded = pending["batches_yielded"]
            restore_rng_states(pending["rng"])
        for batch in iterator:
            self._yielded += 1
            self.current_indices = _as_list(self._sent.popleft()) if self._sent else None
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Position in the epoch and random states; stored by Lightning in the checkpoint's fit-loop state."""
        return {
            "epoch": self._epoch(),
            "batches_yielded": self._yielded,
            "num_batches": len(self),
            "rng_epoch_start": self._rng_epoch_start,
            "rng": capture_rng_states(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved position: applied when the next epoch's iterator starts."""
        self._pending = dict(state_dict)


def _as_list(indices: Any) -> list[int]:
    return [int(i) for i in indices] if isinstance(indices, (list, tuple, torch.Tensor)) else [int(indices)]


def make_dataloader(
    dataset: Dataset,
    batch_size: int = 1,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    persistent_workers: bool = False,
    collate_fn: Any = None,
    **kwargs: Any,
) -> DataLoader:
    """The zoo's ``DataLoader``: a training loader (``shuffle=True``) is a :class:`ResumableDataLoader` (shuffled
    by a ``RandomSampler``, as a plain ``DataLoader`` is); an evaluation loader reads in dataset order through an
    :class:`EverySampleOnceSampler`, so that metrics under DDP count every sample once.

    Arguments as ``DataLoader``'s (``sampler`` and ``shuffle`` are decided here).
    """
    if "sampler" in kwargs or "batch_sampler" in kwargs:
        raise ValueError("make_dataloader chooses the sampler itself; build a DataLoader directly to pass one")
    common = dict(
        batch_size=batch_size, drop_last=drop_last, num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0, collate_fn=collate_fn, **kwargs,
    )
    if shuffle:
        return ResumableDataLoader(dataset, shuffle=True, **common)  # type: ignore[arg-type]
    return DataLoader(dataset, sampler=EverySampleOnceSampler(dataset), **common)  # type: ignore[arg-type]


def make_split_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, collate_fn: Any = None
) -> DataLoader:
    """The loader of a datamodule's split, with the zoo's datamodule settings: a training split (``shuffle=True``)
    drops its last incomplete batch unless that is its only batch; workers persist across epochs. Resumable
    mid-epoch when shuffling, every sample evaluated once under DDP otherwise (:func:`make_dataloader`)."""
    return make_dataloader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > batch_size,  # type: ignore[arg-type]
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )


def batches_per_rank(num_samples: int, batch_size: int, world_size: int) -> list[int]:
    """Evaluation batches each rank runs under :class:`EverySampleOnceSampler` (they differ by at most one)."""
    return [math.ceil(len(range(r, num_samples, world_size)) / batch_size) for r in range(world_size)]


__all__ = [
    "EverySampleOnceSampler",
    "ResumableDataLoader",
    "batches_per_rank",
    "capture_rng_states",
    "make_dataloader",
    "make_split_loader",
    "restore_rng_states",
]
