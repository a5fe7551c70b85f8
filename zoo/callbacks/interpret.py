"""A Lightning callback that logs attribution grids (Grad-CAM, saliency, ...) for a fixed set of
validation images every N epochs, to watch what a classifier looks at while it trains."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn


class InterpretationCallback(pl.Callback):
    """Every ``every_n_epochs`` epochs (at the end of the training epoch, after its validation, with
    gradients enabled), compute ``methods`` (names in ``zoo.interpret.attribution.METHODS``:
    ``grad_cam``, ``saliency``, ``smoothgrad``, ``guided_backprop``, ``occlusion``, ``cam``) for the
    first ``num_images`` validation images, explaining their true class, and log one figure per
    method (rows: images; columns: input, map, overlay) to TensorBoard (``interpret/<method>``) or,
    without a TensorBoard logger, save it as ``<log_dir>/interpret/<method>_epoch<E>.png``.

    The images are taken once (from ``trainer.datamodule.val_set`` or the first validation batch),
    so every epoch shows the same ones. ``mean``/``std`` (default: the datamodule's) only affect
    how the inputs are shown.
    """

    def __init__(
        self,
        methods: Sequence[str] = ("grad_cam", "saliency"),
        num_images: int = 8,
        every_n_epochs: int = 1,
        layer: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        from zoo.interpret.attribution import METHODS

        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError("every_n_epochs and num_images must be >= 1")
        self.methods = list(methods)
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.layer = layer
        self.mean, self.std = mean, std
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.saved: list[Path] = []

    def _fixed_images(self, trainer: pl.Trainer) -> None:
        dm = trainer.datamodule
        val_set = getattr(dm, "val_set", None)
        if val_set is not None and hasattr(val_set, "images"):
            images, labels = val_set.images[: self.num_images], val_set.labels[: self.num_images]
        else:
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            if loader is None:
                rank_zero_warn("InterpretationCallback: no validation data; nothing is logged.")
                return
            batch = next(iter(loader))
            images, labels = batch[0][: self.num_images], batch[1][: self.num_images]
        self.images, self.labels = images.detach().clone(), labels.detach().clone()
        if self.mean is None and dm is not None and hasattr(dm, "mean"):
            self.mean, self.std = dm.mean, dm.std

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        # trainer.log_dir is a broadcast under DDP: every rank reads it, or rank 0 waits forever.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        if self.images is None:
            self._fixed_images(trainer)
            if self.images is None:
                return
        from zoo.interpret.attribution import METHODS
        from zoo.interpret.plotting import plot_attribution, save_figure

        images = self.images.to(pl_module.device)
        labels = self.labels.to(pl_module.device)
        for method in self.methods:
            kwargs: dict[str, Any] = {"layer": self.layer} if method in ("grad_cam", "cam") and self.layer else {}
            # Lightning may run hooks under inference mode / no_grad; the maps need gradients.
            with torch.inference_mode(False), torch.enable_grad():
                maps = METHODS[method](pl_module, images.clone(), labels.clone(), **kwargs)
            with torch.no_grad():
                predicted = pl_module(images).argmax(1)
            titles = [f"label {int(a)}, pred {int(b)}" for a, b in zip(labels, predicted, strict=True)]
            fig = plot_attribution(images.cpu(), maps.cpu(), self.mean, self.std, titles, method=method)
            experiment = getattr(trainer.logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure(f"interpret/{method}", fig, global_step=trainer.global_step)
            else:
                folder = log_dir / "interpret"
                self.saved.append(save_figure(fig, folder / f"{method}_epoch{trainer.current_epoch:03d}.png"))
