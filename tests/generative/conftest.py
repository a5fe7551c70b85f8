"""Small synthetic data for the generative tests (no files read) and trainer settings."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.base import TensorImageDataset, collate_batch


class TinyImages(pl.LightningDataModule):
    """``n`` 28x28 one-channel images of random bright squares, in [0, 1] or [-1, 1]."""

    in_channels = 1
    anomaly_class = None

    def __init__(self, n: int = 64, symmetric: bool = False, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        images = torch.zeros(n, 1, 28, 28)
        corners = torch.randint(0, 18, (n, 2), generator=g)
        for i, (r, c) in enumerate(corners.tolist()):
            images[i, 0, r : r + 10, c : c + 10] = 1.0
        self.images = images * 2 - 1 if symmetric else images
        self.labels = torch.randint(0, 10, (n,), generator=g)
        self.batch_size = batch_size

    def _loader(self, shuffle: bool) -> DataLoader:
        dataset = TensorImageDataset(self.images, self.labels)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate_batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader(True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(False)


@pytest.fixture
def tiny_images() -> type[TinyImages]:
    return TinyImages


@pytest.fixture
def make_trainer() -> Any:
    return quiet_trainer


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU trainer without progress bar, summary or logger unless asked for."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
