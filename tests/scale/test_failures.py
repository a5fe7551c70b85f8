"""Failure handling (zoo.core.reliability.FailureGuard): a NaN loss stops training with the step, the batch
indices and the last good checkpoint named, or skips the batch when asked (counted); out-of-memory gets a
note with the batch size to try."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from datamodules.distributed import make_dataloader
from zoo.core.reliability import FailureGuard, NonFiniteLossError, ResumeCheckpoint

POISONED = 37  # the sample whose features are NaN


class Points(Dataset):
    """64 samples of 4 features; sample ``POISONED`` holds NaNs."""

    def __init__(self) -> None:
        self.x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.x[POISONED] = float("nan")
        self.y = self.x.nan_to_num().sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class Regressor(pl.LightningModule):
    def __init__(self, oom_from_batch_size: int | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.oom_from_batch_size = oom_from_batch_size

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.oom_from_batch_size and len(x) >= self.oom_from_batch_size:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def fit(tmp_path: Path, guard: FailureGuard, batch_size: int = 8, model: Regressor | None = None) -> Regressor:
    pl.seed_everything(0, verbose=False)
    model = model or Regressor()
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[guard, ResumeCheckpoint(every_n_train_steps=1, dirpath=str(tmp_path / "ckpt"))],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, make_dataloader(Points(), batch_size=batch_size, shuffle=True))
    return model


def test_nan_loss_stops_with_step_batch_indices_and_last_good_checkpoint(tmp_path: Path) -> None:
    model = Regressor()
    with pytest.raises(NonFiniteLossError) as error:
        fit(tmp_path, FailureGuard(), model=model)
    message = str(error.value)
    assert "NaN training loss" in message and "global step" in message
    indices = eval(message.split("dataset indices of the batch: ")[1].split(";")[0])  # noqa: S307  (our own message)
    assert POISONED in indices and len(indices) == 8
    checkpoint = tmp_path / "ckpt" / "last-step.ckpt"
    assert f"last good checkpoint: {checkpoint}" in message
    saved = torch.load(checkpoint, weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    # stopped before the bad gradients reached the weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_loss_batches_are_skipped_and_counted_when_configured(tmp_path: Path) -> None:
    guard = FailureGuard(on_nonfinite="skip")
    with pytest.warns(UserWarning, match="Skipped"):
        model = fit(tmp_path, guard)
    assert guard.skipped == 2  # the poisoned sample's batch, once per epoch
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = torch.load(tmp_path / "ckpt" / "last-step.ckpt", weights_only=False)
    assert saved["callbacks"]["FailureGuard"]["skipped"] == 2  # the count survives a resume


def test_skipping_stops_after_max_skipped_batches(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Skipped"), pytest.raises(NonFiniteLossError, match="after 1 skipped"):
        fit(tmp_path, FailureGuard(on_nonfinite="skip", max_skipped=1))


def test_out_of_memory_names_the_batch_size_and_the_one_to_try(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Out of memory"), pytest.raises(torch.OutOfMemoryError) as error:
        fit(tmp_path, FailureGuard(), batch_size=32, model=Regressor(oom_from_batch_size=32))
    notes = "\n".join(getattr(error.value, "__notes__", []))
    assert "batch_size=32" in notes and "--data.init_args.batch_size 16" in notes
