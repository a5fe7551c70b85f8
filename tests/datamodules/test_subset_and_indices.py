"""The in-memory datamodules' ``train_subset`` (class-balanced, deterministic) and ``return_indices``."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from datamodules import DigitsDataModule, FashionMNISTDataModule
from datamodules.base import class_balanced_subset


def test_train_subset_is_class_balanced_deterministic_and_nested():
    def subset(size, seed=0):
        dm = DigitsDataModule(train_subset=size, split_seed=seed)
        dm.setup("fit")
        return dm

    full, a, b, small = DigitsDataModule(), subset(95), subset(95), subset(30)
    full.setup("fit")
    counts = torch.bincount(a.train_set.labels, minlength=10).tolist()
    assert counts == [10] * 5 + [9] * 5  # 95 = 9 per class, the first five classes one more
    assert torch.equal(a.train_set.source_indices, b.train_set.source_indices)
    assert torch.equal(a.train_set.images, b.train_set.images)
    assert set(small.train_set.source_indices.tolist()) <= set(a.train_set.source_indices.tolist())
    assert not torch.equal(subset(95, seed=1).train_set.source_indices, a.train_set.source_indices)
    # validation is untouched, and the subset comes from the training part only
    assert torch.equal(a.val_set.source_indices, full.val_set.source_indices)
    assert set(a.train_set.source_indices.tolist()) <= set(full.train_set.source_indices.tolist())


def test_train_subset_of_real_fashion_mnist(fashion_root):
    dm = FashionMNISTDataModule(data_dir=str(fashion_root), download=False, train_subset=1000)
    dm.setup("fit")
    assert len(dm.train_set) == 1000 and len(dm.val_set) == 5000
    assert torch.bincount(dm.train_set.labels).tolist() == [100] * 10
    # source indices point into the official training split, in its order
    images, labels = dm.load_split(train=True)
    idx = dm.train_set.source_indices
    assert torch.equal(labels[idx], dm.train_set.labels)
    torch.testing.assert_close(dm.normalize(images[idx]), dm.train_set.images)


def test_a_subset_too_large_for_a_class_names_the_class_and_the_limit():
    labels = torch.tensor([0] * 50 + [1] * 5)
    with pytest.raises(ValueError, match=r"class 1 has 5 training samples.*train_subset <= 10"):
        class_balanced_subset(labels, 20, seed=0)
    with pytest.raises(ValueError, match="between the number of classes"):
        class_balanced_subset(labels, 1, seed=0)


def test_return_indices_adds_source_indices_to_every_batch_and_augmentation_keeps_them():
    dm = DigitsDataModule(return_indices=True, batch_size=32)
    dm.setup("fit")
    images, labels, indices = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and indices.dtype == torch.long
    assert torch.equal(dm.train_set.labels[torch.searchsorted(dm.train_set.source_indices, indices)], labels)

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)
            self.seen: list[int] = []

        def training_step(self, batch, batch_idx):
            images, labels, indices = batch
            self.seen.append(len(indices))
            return torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    pl.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(probe, dm)
    assert probe.seen == [32, 32]

    plain = DigitsDataModule()
    plain.setup("fit")
    assert len(next(iter(plain.train_dataloader()))) == 2  # off by default
