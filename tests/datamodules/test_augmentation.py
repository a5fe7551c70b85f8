"""Augmentation touches the training split only, and what it does is what it says."""

import math

import pytorch_lightning as pl
import torch

from datamodules import DigitsDataModule, MNISTDataModule
from datamodules.transforms import random_affine_batch
from zoo.classification import ImageClassifier


class BatchRecorder(ImageClassifier):
    """Keeps every batch the model receives, per stage."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].clone())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].clone())
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.seen["test"].append(batch[0].clone())
        return super().test_step(batch, batch_idx)


def _nearest_distance(batch: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return torch.cdist(batch.flatten(1), pool.flatten(1)).min(dim=1).values


def test_training_batches_are_augmented_and_val_test_batches_are_not(data_root):
    dm = MNISTDataModule(data_dir=str(data_root), download=False, batch_size=16, eval_batch_size=64)
    model = BatchRecorder()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2, limit_test_batches=2,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    trainer.test(model, dm)
    # val/test batches are exactly the stored images, in order
    torch.testing.assert_close(torch.cat(model.seen["val"]), dm.val_set.images[:128])
    torch.testing.assert_close(torch.cat(model.seen["test"]), dm.test_set.images[:128])
    # every training image differs from every stored training image (it was warped)
    train = torch.cat(model.seen["train"])
    assert len(train) == 48
    assert (_nearest_distance(train, dm.train_set.images) > 1.0).all()


def test_augment_false_leaves_training_batches_untouched():
    dm = DigitsDataModule(augment=False, batch_size=32)
    model = BatchRecorder()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    train = torch.cat(model.seen["train"])
    assert (_nearest_distance(train, dm.train_set.images) < 0.05).all()  # cdist rounding only


def test_random_affine_with_zero_ranges_is_the_identity():
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = random_affine_batch(images, degrees=0, translate_px=0, scale=0)
    # the identity grid samples pixel centres up to float32 rounding of the grid coordinates
    torch.testing.assert_close(out, images, atol=1e-4, rtol=0)


def test_random_affine_shifts_by_at_most_translate_px():
    # a single bright pixel in the middle moves by at most 2 px in x and in y
    images = torch.zeros(64, 1, 29, 29)
    images[:, :, 14, 14] = 1.0
    out = random_affine_batch(images, degrees=0, translate_px=2, scale=0)
    ys, xs = torch.meshgrid(torch.arange(29.0), torch.arange(29.0), indexing="ij")
    mass = out[:, 0].clamp_min(0)
    cy = (mass * ys).sum((1, 2)) / mass.sum((1, 2))
    cx = (mass * xs).sum((1, 2)) / mass.sum((1, 2))
    assert ((cy - 14).abs() <= 2 + 1e-4).all() and ((cx - 14).abs() <= 2 + 1e-4).all()
    assert (cx - 14).abs().max() > 1.0  # and it does move


def test_random_affine_fills_uncovered_pixels_with_the_background():
    images = torch.full((8, 1, 28, 28), -0.42)
    out = random_affine_batch(images, degrees=30, translate_px=3, scale=0.2, fill=-0.42)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    assert math.isclose(-0.1307 / 0.3081, MNISTDataModule.background.fget(MNISTDataModule()), rel_tol=1e-6)
