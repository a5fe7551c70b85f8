"""In-memory image classification data: decoded once into a tensor, batched by indexing.

A data set of small images (MNIST: 60,000 x 28 x 28 bytes) fits in memory many times over, so
it is decoded once at ``setup`` and each batch is one tensor index, not ``batch_size`` calls to
``__getitem__`` plus a collate. Normalization happens once at load time; augmentation happens per
batch in :meth:`InMemoryClassificationDataModule.on_after_batch_transfer`, on the training split
only, on the device the batch lives on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.transforms import random_affine_batch


class TensorImageDataset(Dataset):
    """Images ``(N, C, H, W)`` (float, normalized) and integer labels ``(N,)`` held in memory.

    ``__getitems__`` lets the ``DataLoader`` fetch a whole batch with one index operation;
    pair it with :func:`collate_batch`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def collate_batch(batch: Any) -> Any:
    """The batch is already stacked by ``TensorImageDataset.__getitems__``; a list of samples
    (a dataset without ``__getitems__``) is stacked the usual way."""
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)


def deterministic_split(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train, holdout) indices, the same for a given ``seed`` on every
    machine and process (its own generator: independent of the global RNG and of ``seed_everything``)."""
    if not 0 <= holdout < n:
        raise ValueError(f"holdout size must be in [0, {n}), got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


class InMemoryClassificationDataModule(pl.LightningDataModule):
    """Base for small classification sets held in memory. Subclasses implement :meth:`load_split`.

    Attributes read by the model through LightningCLI links: ``num_classes``, ``in_channels``,
    ``class_names``.
    """

    num_classes: int
    in_channels: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 0,
        augment: bool = True,
        rotation_degrees: float = 10.0,
        translate_px: float = 2.0,
        scale: float = 0.1,
        eval_batch_size: int = 1000,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.split_seed = split_seed
        self.augment = augment
        self.rotation_degrees = rotation_degrees
        self.translate_px = translate_px
        self.scale = scale
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None

    # -- subclasses ------------------------------------------------------------------------------
    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images uint8 (N, C, H, W), labels int64 (N,))`` of the official train or test split."""
        raise NotImplementedError

    # -- data --------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [0, 1] -> (x - mean) / std per channel."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images.float().div_(255) - mean) / std

    @property
    def background(self) -> float:
        """The normalized value of a black pixel: what augmentation fills uncovered pixels with."""
        return -self.mean[0] / self.std[0]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self.load_split(train=True)
            train_idx, val_idx = deterministic_split(len(labels), self.val_size, self.split_seed)
            images = self.normalize(images)
            self.train_set = TensorImageDataset(images[train_idx], labels[train_idx])
            self.val_set = TensorImageDataset(images[val_idx], labels[val_idx])
        if stage in (None, "test", "predict") and self.test_set is None:
            images, labels = self.load_split(train=False)
            self.test_set = TensorImageDataset(self.normalize(images), labels)

    def _loader(self, dataset: TensorImageDataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) > batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # -- augmentation ------------------------------------------------------------------------------
    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """The training augmentation (random rotation, scale and shift) of a normalized batch."""
        return random_affine_batch(
            images, self.rotation_degrees, self.translate_px, self.scale, fill=self.background
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Only the training loop augments: validation, test and predict see the images as they are.
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training:
            images, labels = batch
            batch = (self.augment_batch(images), labels)
        return batch
