"""A small zoo classifier trained on real MNIST once per session, and its test digits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules import MNISTDataModule
from zoo.classification import ImageClassifier

MNIST_MEAN, MNIST_STD = MNISTDataModule.mean[0], MNISTDataModule.std[0]
BOUNDS = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)  # valid pixels, normalized units


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    # The test machine's 2 cores are shared: two threads fighting other jobs run ~8x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist(data_root: Path) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_root), download=False, batch_size=128, augment=False, val_size=1000)
    dm.setup("fit")
    dm.setup("test")
    return dm


@pytest.fixture(scope="session")
def trained_ckpt(mnist: MNISTDataModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trains the zoo's convnet (width 8) for 400 steps of 64 real MNIST digits (~96% test accuracy, ~12 s of CPU)."""
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(network="convnet", network_kwargs={"width": 8},
                            optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    trainer = pl.Trainer(max_steps=400, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    start = time.perf_counter()
    mnist.batch_size = 64
    trainer.fit(model, train_dataloaders=mnist.train_dataloader())
    print(f"trained the interpret test classifier in {time.perf_counter() - start:.1f} s")
    path = tmp_path_factory.mktemp("interpret") / "mnist_convnet.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def trained(trained_ckpt: Path) -> ImageClassifier:
    return ImageClassifier.load_from_checkpoint(trained_ckpt, map_location="cpu").eval()


@pytest.fixture(scope="session")
def test_digits(mnist: MNISTDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 512 official test digits (normalized) and their labels."""
    return mnist.test_set.images[:512], mnist.test_set.labels[:512]
