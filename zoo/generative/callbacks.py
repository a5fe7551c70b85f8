"""Sample grids during training and the writer of ``predict``'s generated images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid, save_image


def _log_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


class SampleGridCallback(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, log the model's ``sample_grids()`` (generated
    samples from fixed noise, reconstructions, interpolations) to TensorBoard (``samples/<name>``)
    and save them as ``<log_dir>/samples/<name>_epoch=<NNN>.png``.

    Works with any LightningModule that has ``sample_grids() -> dict[str, Tensor]`` returning
    ``(N, C, H, W)`` images in [0, 1] (every ``zoo.generative`` model).
    """

    def __init__(self, every_n_epochs: int = 1, nrow: int = 8, save_png: bool = True) -> None:
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow
        self.save_png = save_png

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not hasattr(pl_module, "sample_grids"):
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        # trainer.log_dir is a broadcast under DDP: every rank reads it, or rank 0 waits forever.
        log_dir = _log_dir(trainer)
        if not trainer.is_global_zero:
            return
        grids: dict[str, torch.Tensor] = pl_module.sample_grids()
        experiment = getattr(trainer.logger, "experiment", None)
        for name, images in grids.items():
            grid = make_grid(images.detach().float().cpu(), nrow=self.nrow, padding=2)
            if hasattr(experiment, "add_image"):
                experiment.add_image(f"samples/{name}", grid, global_step=trainer.global_step)
            if self.save_png:
                folder = log_dir / "samples"
                folder.mkdir(parents=True, exist_ok=True)
                save_image(grid, folder / f"{name}_epoch={trainer.current_epoch:03d}.png")


class GenerativePredictionWriter(pl.Callback):
    """Writes what a generative model's ``predict_step`` returns: every tensor, concatenated over
    batches, to ``<output_dir>/predictions.pt`` (a dict of tensors), and a grid PNG of the first
    ``grid_size`` images of each image entry (``samples``, ``inputs``, ``reconstructions``) to
    ``<output_dir>/<name>.png``. ``output_dir`` defaults to ``<log_dir>/predictions``.

    ``zoo.generative`` models add this writer themselves when predicting without one configured.
    """

    def __init__(self, output_dir: str | None = None, grid_size: int = 64, nrow: int = 8) -> None:
        self.output_dir = output_dir
        self.grid_size = grid_size
        self.nrow = nrow
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.written: Path | None = None

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._outputs = []

    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, dict):
            self._outputs.append({k: v.detach().cpu() for k, v in outputs.items() if isinstance(v, torch.Tensor)})

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir is a broadcast under DDP: read it on every rank before any rank returns.
        folder = Path(self.output_dir) if self.output_dir else _log_dir(trainer) / "predictions"
        if not self._outputs or not trainer.is_global_zero:
            return
        merged = {k: torch.cat([o[k] for o in self._outputs]) for k in self._outputs[0]}
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(merged, folder / "predictions.pt")
        for name, value in merged.items():
            if value.ndim == 4:
                save_image(value[: self.grid_size].float(), folder / f"{name}.png", nrow=self.nrow, padding=2)
        self.written = folder
        print(f"predictions ({', '.join(f'{k} {tuple(v.shape)}' for k, v in merged.items())}) written to {folder}")
        self._outputs = []
