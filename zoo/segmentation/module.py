"""SemanticSegmenter: any registered segmentation network, loss by name, any torch optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.segmentation import DiceScore

from zoo.core.module import CompileMode, SchedulerInterval, ZooModule
from zoo.segmentation.losses import build_loss
from zoo.segmentation.metrics import ISBIPixelError, PixelError, RandError
from zoo.segmentation.models.unet import center_crop
from zoo.segmentation.plots import GridSample, validation_grid, write_prediction
from zoo.segmentation.tiling import predict_tiled


class SemanticSegmenter(ZooModule):
    """Train, evaluate and run a semantic segmentation network from the registry.

    Training runs the network on the datamodule's crops; a valid-convolution network's smaller
    output is compared with the centre of the mask (and weight map). Validation, test and predict
    segment whole images of any size with :func:`zoo.segmentation.predict_tiled` (``tile_size``
    None: one mirror-padded pass over the whole image).

    Logs ``train/loss``; ``{val,test}/loss``, ``/pixel_error`` (argmax), ``/isbi_pixel_error`` (the
    challenge's 1 - best F-score of ``foreground_class``, :class:`~zoo.segmentation.ISBIPixelError`),
    ``/rand_error`` (ISBI foreground-restricted, cells = components of ``foreground_class``), ``/iou``
    and ``/dice`` (mean over classes) and per class ``/iou_<name>``, ``/dice_<name>`` (torchmetrics); and, each
    validation epoch, a grid of image / ground truth / prediction / weight map (TensorBoard).

    ``predict`` writes ``<name>_mask.png`` (two classes: 0 / 255 grayscale, e.g. ISBI's polarity
    0 membrane / 255 cell; more classes: a palette PNG whose pixel values are the class indices)
    and ``<name>_overlay.png`` (the image with the classes other than 0 tinted) to ``output_dir``
    (:func:`zoo.segmentation.plots.write_prediction`).

    Optimisation, the checkpoint identity, the restore guard (``load_from_checkpoint`` reads no
    ``encoder_weights`` file again: the checkpoint holds the weights) and the metric-state reset come
    from :class:`zoo.core.module.ZooModule`.

    Args:
        network: registered name (``zoo.list_models(family="segmentation")``: ``unet``, ``unet_same``,
            ``pspnet``, ``smp_unet``, ``smp_fpn``, ...).
        num_classes, in_channels, class_names: linked from the datamodule by ``train.py``.
        network_kwargs: extra keyword arguments of the network's builder.
        loss: ``ce``, ``weighted_ce`` (the U-Net loss with weight maps: set ``weight_maps: true`` in
            the data), ``dice``, ``jaccard``, ``focal``, ``lovasz``, ``tversky``, or a sum such as
            ``weighted_ce+dice`` (:func:`zoo.segmentation.losses.build_loss`).
        loss_kwargs: keyword arguments of the loss.
        optimizer, lr_scheduler, lr_scheduler_interval, compile, compile_mode, channels_last: as in
            :class:`~zoo.core.module.ZooModule`.
        foreground_class: class whose connected components are the objects of the Rand error, and the
            positive class of the ISBI pixel error; None skips both.
        tile_size, tile_overlap, tile_batch_size: tiling of validation / test / predict images.
        tta_flips: average predictions over flips at predict time (test-time augmentation).
        output_dir: where ``predict`` writes; default ``<log dir>/predictions``.
        log_images: images in the validation grid (0: none).
    """

    family = "segmentation"

    def __init__(
        self,
        network: str = "unet",
        num_classes: int = 2,
        in_channels: int = 1,
        network_kwargs: dict[str, Any] | None = None,
        loss: str = "ce",
        loss_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: SchedulerInterval = "auto",
        compile: bool = False,
        compile_mode: CompileMode = "default",
        channels_last: bool = False,
        class_names: list[str] | None = None,
        foreground_class: int | None = 1,
        tile_size: int | None = None,
        tile_overlap: int = 64,
        tile_batch_size: int = 4,
        tta_flips: bool = False,
        output_dir: str | None = None,
        log_images: int = 4,
    ) -> None:
        super().__init__(
            optimizer=optimizer, lr_scheduler=lr_scheduler, lr_scheduler_interval=lr_scheduler_interval,
            compile=compile, compile_mode=compile_mode, channels_last=channels_last,
        )  # fmt: skip
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        if foreground_class is not None and not 0 <= foreground_class < num_classes:
            raise ValueError(f"foreground_class={foreground_class} is not a class index of num_classes={num_classes}")
        reserved = {"num_classes", "in_channels"} & set(network_kwargs or {})
        if reserved:
            raise ValueError(f"network_kwargs must not set {sorted(reserved)}: they are arguments of the model itself")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.net = self.build_network(
            network, num_classes=num_classes, in_channels=in_channels, **(network_kwargs or {})
        )
        self.loss_fn = build_loss(loss, loss_kwargs)
        self.val_metrics = self.build_metrics()
        self.test_metrics = self.build_metrics()
        # Image-weighted mean losses as torchmetrics (float sums, synced once at compute): Lightning's
        # self.log(sync_dist=True) mean divides an integer image count by the world size, biasing it under DDP.
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self._checked_stages: set[str] = set()
        self._grid: list[GridSample] = []

    def build_metrics(self) -> torch.nn.ModuleDict:
        """A fresh set of the evaluation metrics: pixel error, per-class IoU and Dice and, with a
        ``foreground_class``, the Rand error and the ISBI challenge's pixel error."""
        k = self.num_classes
        metrics = {
            "pixel_error": PixelError(),
            "iou": MulticlassJaccardIndex(k, average="none"),
            "dice": DiceScore(k, average="none", aggregation_level="global", input_format="index"),
        }
        if self.hparams.foreground_class is not None:
            metrics["rand_error"] = RandError(self.hparams.foreground_class)
            metrics["isbi_pixel_error"] = ISBIPixelError(self.hparams.foreground_class)
        return torch.nn.ModuleDict(metrics)

    def update_metrics(self, metrics: torch.nn.ModuleDict, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Update ``metrics`` (from :meth:`build_metrics`) with full-size ``logits``; return the class maps. The
        challenge's pixel error takes the foreground probability, every other metric the argmax class."""
        preds = logits.argmax(dim=1)
        for metric in metrics.values():
            if isinstance(metric, ISBIPixelError):
                metric.update(logits.float().softmax(dim=1)[:, metric.foreground_class], mask)
            else:
                metric.update(preds, mask)
        return preds

    @property
    def aux_weight(self) -> float:
        return float(getattr(self.net, "aux_weight", 0.0))

    # -- plain PyTorch use ---------------------------------------------------------------------------
    def segment(self, images: torch.Tensor, flips: bool = False) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` of normalized images ``(N, C, H, W)`` of any size
        (tiled as set by ``tile_size``; mirror-padded for valid-convolution networks)."""
        hp = self.hparams
        return predict_tiled(self.net, images, hp.tile_size, hp.tile_overlap, hp.tile_batch_size, flips)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Full-size logits of a normalized batch, whatever the network's padding (see :meth:`segment`)."""
        return self.segment(images)

    # -- checks ----------------------------------------------------------------------------------------
    def _check_batch(self, stage: str, batch: dict[str, Any]) -> None:
        if stage in self._checked_stages:
            return  # first batch of each stage only: the checks cost a device sync
        self._checked_stages.add(stage)
        images = batch["image"]
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"{stage} batch has shape {tuple(images.shape)}, but the model expects "
                f"(N, {self.in_channels}, H, W). "
                f"Fix: set in_channels={images.shape[1] if images.ndim == 4 else '?'} or convert the images."
            )
        masks = batch.get("mask")
        if masks is not None and masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= self.num_classes):
            raise ValueError(
                f"{stage} masks hold classes in [{int(masks.min())}, {int(masks.max())}], but the model has "
                f"num_classes={self.num_classes}. Fix: check the datamodule's mask_values / set num_classes."
            )
        if stage == "train" and getattr(self.loss_fn, "needs_weight_map", False) and "weight" not in batch:
            raise ValueError(
                f"loss {self.hparams.loss!r} needs the U-Net weight maps, but the batches carry none. "
                f"Fix: set the datamodule's weight_maps: true (--data.init_args.weight_maps true), "
                f"or use loss: ce."
            )

    # -- loss ------------------------------------------------------------------------------------------
    def compute_loss(self, output: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of a network output (logits, or ``(logits, aux_logits)``) against the batch's masks,
        centre-cropped to the output size for valid-convolution networks; returns (loss, logits)."""
        logits, aux = (output, None) if isinstance(output, torch.Tensor) else (output[0], output[1])

        def targets(size: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None]:
            mask, weight = batch["mask"], batch.get("weight")
            if mask.shape[-2:] != size:
                mask = center_crop(mask, *size)
                weight = center_crop(weight, *size) if weight is not None else None
            return mask, weight

        mask, weight = targets(logits.shape[-2:])
        loss = self.loss_fn(logits, mask, weight)
        if aux is not None and self.aux_weight:
            aux_mask, aux_w = targets(aux.shape[-2:])
            loss = loss + self.aux_weight * self.loss_fn(aux, aux_mask, aux_w)
        return loss, logits

    # -- loops -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._check_batch("train", batch)
        loss, _ = self.compute_loss(self.net(batch["image"]), batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str, batch_idx: int) -> torch.Tensor:
        self._check_batch(stage, batch)
        logits = self.segment(batch["image"])
        loss, _ = self.compute_loss(logits, batch)
        preds = self.update_metrics(self.val_metrics if stage == "val" else self.test_metrics, logits, batch["mask"])
        loss_metric = self.val_loss if stage == "val" else self.test_loss
        loss_metric.update(loss.detach(), weight=len(preds))
        self.log(f"{stage}/loss", loss_metric, prog_bar=True)
        return preds

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        preds = self._evaluate(batch, "val", batch_idx)
        room = self.hparams.log_images - len(self._grid)
        if room > 0:
            weight = batch.get("weight")
            for i in range(min(room, len(preds))):
                self._grid.append(
                    (
                        batch["image"][i].detach().cpu(),
                        batch["mask"][i].cpu(),
                        preds[i].cpu(),
                        weight[i].cpu() if weight is not None else None,
                    )
                )

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # the predicted class maps, for callbacks (zoo.evaluation's per-image table and overlays)
        return self._evaluate(batch, "test", batch_idx)

    def _log_metrics(self, stage: str) -> dict[str, float]:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values: dict[str, torch.Tensor] = {}
        for name, metric in metrics.items():
            value = metric.compute()
            metric.reset()
            if value.ndim:  # per class
                for cls, v in zip(self.class_names, value, strict=True):
                    values[f"{stage}/{name}_{cls}"] = v
                value = value.nanmean()
            values[f"{stage}/{name}"] = value
        for key, value in values.items():
            self.log(key, value, prog_bar=key.endswith(("/pixel_error", "/rand_error")))
        return {k: float(v) for k, v in values.items()}

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        if self._grid:
            self._log_grid()
        self._grid = []

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_grid(self) -> None:
        """Rows: image | ground truth | prediction | weight map (TensorBoard ``val/samples``)."""
        experiment = getattr(self.logger, "experiment", None) if self._trainer else None
        if hasattr(experiment, "add_image") and self.trainer.is_global_zero:
            experiment.add_image("val/samples", validation_grid(self._grid, self.num_classes), self.global_step)

    # -- predict ---------------------------------------------------------------------------------------
    def _output_dir(self) -> Path:
        if self.hparams.output_dir:
            return Path(self.hparams.output_dir)
        log_dir = self.trainer.log_dir if self._trainer else None
        return Path(log_dir or ".") / "predictions"

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        """Segment each image, write ``<name>_mask.png`` and ``<name>_overlay.png``; return the mask paths."""
        self._check_batch("predict", batch)
        preds = self.segment(batch["image"], flips=self.hparams.tta_flips).argmax(dim=1).cpu().numpy()
        out_dir = self._output_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for i, pred in enumerate(preds):
            name = batch["name"][i] if "name" in batch else f"{batch_idx:05d}_{i}"
            raw = batch["raw"][i].cpu().numpy() if "raw" in batch else None
            written.append(str(write_prediction(out_dir, name, pred, self.num_classes, raw)))
        return written
