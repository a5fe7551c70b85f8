"""ObjectDetector: any registered detection network (Faster R-CNN, SSD), COCO metrics, any optimizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from zoo.core.module import CompileMode, SchedulerInterval, ZooModule
from zoo.detection.metrics import COCOMetrics, format_coco_table
from zoo.detection.plots import draw_detections

Batch = dict[str, Any]


class ObjectDetector(ZooModule):
    """Train, evaluate and run a detector from the registry (``zoo.list_models(family="detection")``).

    Training sums the network's losses (Faster R-CNN, Ren et al. 2015, sec. 3.1.2: RPN objectness
    and box regression + Fast R-CNN classification and box regression; SSD, Liu et al. 2016,
    sec. 2.2: confidence + localization) and logs each under ``train/<name>``. Validation and test
    compute COCO's metrics (Lin et al. 2014) with :class:`zoo.detection.COCOMetrics` (synced under
    DDP): ``{val,test}/map``, ``/map_50``, ``/map_75``, ``/map_small|medium|large``, ``/mar_1|10|100``,
    per class ``/ap_<name>``; validation logs a grid of images with true (green) and predicted (red,
    ``score >= score_threshold``) boxes to TensorBoard. ``test`` prints COCOeval's table with per-class
    AP and keeps the whole result (per-class PR curves at IoU ``iou_threshold``, the confusion matrix with
    a background row and column) in ``last_test_result``, from which the evaluation report
    (:mod:`zoo.evaluation.detection`) draws ``pr_curves.png``, ``confusion_matrix.png`` and the rest.

    ``predict`` writes ``predictions.json`` (a COCO results file: ``image_id`` (the input JSON's id),
    ``file_name`` (the image file read), ``category_id`` in the data's COCO ids, ``bbox`` ``[x, y, w, h]``,
    ``score``) and ``<image>_boxes.png`` per image
    to ``output_dir`` (default ``<log dir>/predictions``).

    Args:
        network: registered name (``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``,
            ``fasterrcnn_mobilenet_v3_large_fpn``, ``fasterrcnn_mobilenet_v3_large_320_fpn``,
            ``ssd300_vgg16``, ``ssdlite320_mobilenet_v3_large``).
        num_classes, class_names: object classes (no background), linked from the datamodule.
        in_channels: 3 (RGB), linked from the datamodule; anything else is an error.
        trainable_backbone_layers: stages of a pretrained backbone that train (torchvision's rule).
        backbone_weights: local classifier weights (torchvision ImageNet file or zoo checkpoint).
        weights: local whole-detector weights (class-dependent layers of another shape skipped).
        image_size: network input size (see :mod:`zoo.detection.models`); None: the network's default.
        network_kwargs: other keyword arguments of the builder / ``FasterRCNN`` / ``SSD``.
        optimizer, lr_scheduler, lr_scheduler_interval, compile, compile_mode, channels_last: as in
            :class:`~zoo.core.module.ZooModule` (ReduceLROnPlateau watches ``val/map``).
        score_threshold: detections drawn and counted in the confusion matrix.
        iou_threshold: IoU of a true positive for PR curves and the confusion matrix (COCO's mAP
            uses its own thresholds .5:.05:.95).
        category_ids: COCO id of each label (``category_ids[k - 1]``) for the results file; taken from
            the datamodule when not given, and saved in the checkpoint.
        log_images: images in the validation grid (0: none).
        output_dir: where ``predict`` writes.
        map_backend: ``faster_coco_eval`` (C++) or ``pycocotools``; identical numbers.
    """

    family: ClassVar[str] = "detection"
    monitor: ClassVar[str] = "val/map"

    def __init__(
        self,
        network: str = "fasterrcnn_mobilenet_v3_large_320_fpn",
        num_classes: int = 90,
        class_names: list[str] | None = None,
        in_channels: int | None = 3,
        trainable_backbone_layers: int | None = None,
        backbone_weights: str | None = None,
        weights: str | None = None,
        image_size: int | None = None,
        network_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: SchedulerInterval = "auto",
        compile: bool = False,
        compile_mode: CompileMode = "default",
        channels_last: bool = False,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        category_ids: list[int] | None = None,
        log_images: int = 4,
        output_dir: str | None = None,
        map_backend: Literal["faster_coco_eval", "pycocotools"] = "faster_coco_eval",
    ) -> None:
        super().__init__(
            optimizer=optimizer, lr_scheduler=lr_scheduler, lr_scheduler_interval=lr_scheduler_interval,
            compile=compile, compile_mode=compile_mode, channels_last=channels_last,
        )  # fmt: skip
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        if in_channels not in (None, 3):
            raise ValueError(
                f"in_channels={in_channels}: torchvision's detectors take RGB images. Fix: convert the images "
                f"to RGB (the COCO datamodule does) and set in_channels: 3."
            )
        if category_ids is not None and len(category_ids) != num_classes:
            raise ValueError(f"{len(category_ids)} category_ids given for num_classes={num_classes}")
        reserved = {"num_classes", "trainable_backbone_layers", "backbone_weights", "weights"} & set(
            network_kwargs or {}
        )
        if reserved:
            raise ValueError(f"network_kwargs must not set {sorted(reserved)}: they are arguments of ObjectDetector")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(1, num_classes + 1)]
        self.net = self.build_network(  # restoring from a checkpoint: the weight files are not read
            network,
            num_classes=num_classes,
            trainable_backbone_layers=trainable_backbone_layers,
            backbone_weights=backbone_weights,
            weights=weights,
            image_size=image_size,
            **(network_kwargs or {}),
        )
        self.val_map = COCOMetrics(num_classes, map_backend, iou_threshold, score_threshold)
        self.test_map = COCOMetrics(num_classes, map_backend, iou_threshold, score_threshold, extended=True)
        self._grid: list[tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self._results: list[dict[str, Any]] = []
        self.last_test_result: dict[str, Any] | None = None

    # -- plain PyTorch use ---------------------------------------------------------------------------
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections ``[{boxes (x1, y1, x2, y2 pixels of each input), scores, labels (1..K)}]`` of
        RGB images ``(3, H, W)`` in [0, 1], any sizes (call ``eval()`` first)."""
        return self.net(images)

    # -- checks --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)  # num_classes must be the datamodule's
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        ids = getattr(datamodule, "category_ids", None)
        if self.hparams.category_ids is None and ids is not None:
            self.hparams.category_ids = list(ids)  # saved with the checkpoint: predict needs no datamodule

    @staticmethod
    def _train_targets(targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        # only what the networks read; crowd regions never train (COCO ignores detections in them)
        out = []
        for t in targets:
            keep = t["iscrowd"] == 0 if "iscrowd" in t else torch.ones(len(t["boxes"]), dtype=torch.bool)
            out.append({"boxes": t["boxes"][keep], "labels": t["labels"][keep]})
        return out

    # -- loops ---------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        losses = self.net(batch["images"], self._train_targets(batch["targets"]))
        loss = sum(losses.values())
        n = len(batch["images"])
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def _evaluate(self, batch: Batch, metric: COCOMetrics) -> list[dict[str, torch.Tensor]]:
        preds = self.net(batch["images"])
        metric.update(preds, batch["targets"])
        return preds

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        preds = self._evaluate(batch, self.val_map)
        room = self.hparams.log_images - len(self._grid)
        for i in range(max(0, min(room, len(preds)))):
            pred = {k: v.detach().cpu() for k, v in preds[i].items()}
            target = {k: v.cpu() for k, v in batch["targets"][i].items()}
            self._grid.append((batch["images"][i].detach().cpu(), target, pred))

    def test_step(self, batch: Batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Detections of the batch (the evaluation report draws some), after adding them to the COCO metrics."""
        return self._evaluate(batch, self.test_map)

    def _log_result(self, stage: str, result: dict[str, Any]) -> None:
        for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100"):
            self.log(f"{stage}/{key}", float(result[key]), prog_bar=key in ("map", "map_50"))
        for label, values in result["per_class"].items():
            if values["ap"] > -1 and 1 <= label <= self.num_classes:
                self.log(f"{stage}/ap_{self.class_names[label - 1]}", values["ap"])

    def on_validation_epoch_end(self) -> None:
        result = self.val_map.compute()
        self.val_map.reset()
        self._log_result("val", result)
        if self._grid:
            self._log_grid()
        self._grid = []

    def on_test_epoch_end(self) -> None:
        result = self.test_map.compute()
        self.test_map.reset()
        self._log_result("test", result)
        self.last_test_result = result  # the evaluation report's figures and tables come from it
        if self._trainer is None or self.trainer.is_global_zero:
            print("\nCOCO box metrics (Lin et al. 2014):\n" + format_coco_table(result, self.class_names), flush=True)

    def _log_grid(self) -> None:
        experiment = getattr(self.logger, "experiment", None) if self._trainer else None
        if not hasattr(experiment, "add_image") or not self.trainer.is_global_zero:
            return
        from torchvision.utils import make_grid

        tiles = [
            draw_detections(img, pred, self.class_names, self.hparams.score_threshold, tgt)
            for img, tgt, pred in self._grid
        ]
        h = max(t.shape[1] for t in tiles)
        w = max(t.shape[2] for t in tiles)
        tiles = [torch.nn.functional.pad(t, (0, w - t.shape[2], 0, h - t.shape[1])) for t in tiles]
        experiment.add_image("val/detections", make_grid(tiles, nrow=len(tiles), padding=4), self.global_step)

    # -- predict -------------------------------------------------------------------------------------
    def _output_dir(self) -> Path:
        if self.hparams.output_dir:
            return Path(self.hparams.output_dir)
        log_dir = self.trainer.log_dir if self._trainer else None  # a broadcast under DDP: every rank asks
        return Path(log_dir or ".") / "predictions"

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Detect, draw ``<image>_boxes.png`` and collect COCO results (written at the epoch's end)."""
        from PIL import Image

        preds = self.net(batch["images"])
        out_dir = self._output_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        ids = self.hparams.category_ids or list(range(1, self.num_classes + 1))
        for image, pred, target, path in zip(batch["images"], preds, batch["targets"], batch["paths"], strict=True):
            pred = {k: v.detach().cpu() for k, v in pred.items()}
            image_id = int(target["image_id"])
            for box, score, label in zip(
                pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True
            ):
                x1, y1, x2, y2 = box
                self._results.append({
                    "image_id": image_id, "file_name": str(path), "category_id": int(ids[label - 1]),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(score, 5),
                })  # fmt: skip
            drawn = draw_detections(image.cpu(), pred, self.class_names, self.hparams.score_threshold)
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out_dir / f"{Path(path).stem}_boxes.png")
        return preds

    def on_predict_epoch_end(self) -> None:
        out_dir = self._output_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        rank = self.trainer.global_rank if self._trainer else 0
        world = self.trainer.world_size if self._trainer else 1
        name = "predictions.json" if world == 1 else f"predictions_rank{rank}.json"
        (out_dir / name).write_text(json.dumps(self._results))
        rank_zero_info(f"wrote {len(self._results)} detections to {out_dir / name}")
        self._results = []


__all__ = ["ObjectDetector"]
