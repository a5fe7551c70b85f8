"""InstanceDetector: Mask R-CNN (He et al. 2017) trained, validated, tested and run as an instance segmenter.

**Why the detection module extended** rather than a sibling: Mask R-CNN is Faster R-CNN plus a mask branch
(sec. 3), so the losses (the mask loss is one more entry of torchvision's loss dict), the optimizer, the data
format (lists of images and target dicts) and the box metrics are the detector's. What this class adds is what
masks add: the targets' ``masks`` in training, COCO **mask** mAP (:class:`zoo.core.instance_metrics.COCOMaskMetrics`,
COCOeval ``segm``), the **2018 Data Science Bowl score** (:class:`~zoo.core.instance_metrics.DSBScore`) on label
images, and instance outputs from ``predict``.

Masks to instances: torchvision returns per-detection soft masks ``(N, 1, H, W)``; mask mAP takes them as they are
(thresholded at ``mask_threshold``, each with its score, overlaps allowed as COCO allows); the DSB score and
``predict``'s label images take detections with ``score >= score_threshold`` in decreasing score and give each pixel
to the highest-scoring mask covering it (:func:`~zoo.core.instance_metrics.masks_to_labels`: the competition
required non-overlapping objects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from datamodules.instance_targets import labels_from_masks
from zoo.core.coco import COCO_MAX_DETECTIONS, gather_objects
from zoo.core.instance_metrics import COCOMaskMetrics, DSBScore, dsb_precisions, masks_to_labels, match_instances
from zoo.core.instances import InstancePredictionWriter
from zoo.core.module import SchedulerInterval
from zoo.detection.module import Batch, ObjectDetector

# Best and worst images kept for the report's figures.
KEPT_EXAMPLES = 3


class InstanceDetector(ObjectDetector):
    """Mask R-CNN from the registry (``maskrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn_v2``,
    ``maskrcnn_mobilenet_v3_large_fpn``) as an instance segmenter (see the module docstring).

    Logs, besides the detector's box metrics: ``{val,test}/dsb_score`` (Caicedo et al. 2019: per image the mean over
    IoU thresholds .5:.05:.95 of TP / (TP + FP + FN), averaged over images), ``/f1_50`` (pooled F1 at IoU 0.5),
    ``/mask_map``, ``/mask_map_50``, ``/mask_map_75``. ``test`` keeps ``last_test_result`` for the evaluation report
    (:mod:`zoo.evaluation.instances`). ``predict`` writes per image ``<stem>.png`` (16-bit label image: 0 background,
    k = instance k), ``<stem>_outlines.png``, and one ``predictions.json`` (COCO results with RLE masks and scores).

    Args:
        network, num_classes, class_names, in_channels, trainable_backbone_layers, backbone_weights, weights,
            image_size, network_kwargs, optimizer, lr_scheduler, lr_scheduler_interval, iou_threshold, category_ids,
            log_images, output_dir, map_backend: as in :class:`~zoo.detection.module.ObjectDetector`.
        score_threshold: detections kept in label images (DSB score, ``predict``) and drawn.
        mask_threshold: a pixel belongs to a detection's mask when its mask probability is at least this (0.5 in
            He et al. 2017, sec. 3.1 "Inference").
        mask_max_detections: detections per image that the mask AP / AR count, the highest-scoring first (COCO's
            100 by default; a note is logged when an image has more). Raise ``network_kwargs``'
            ``box_detections_per_img`` (torchvision's 100) with it: that caps what the network returns at all.
    """

    monitor: ClassVar[str] = "val/dsb_score"

    def __init__(
        self,
        network: str = "maskrcnn_mobilenet_v3_large_fpn",
        num_classes: int = 1,
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
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        category_ids: list[int] | None = None,
        log_images: int = 4,
        output_dir: str | None = None,
        map_backend: Literal["faster_coco_eval", "pycocotools"] = "faster_coco_eval",
        mask_threshold: float = 0.5,
        mask_max_detections: int = COCO_MAX_DETECTIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            network=network, num_classes=num_classes, class_names=class_names, in_channels=in_channels,
            trainable_backbone_layers=trainable_backbone_layers, backbone_weights=backbone_weights, weights=weights,
            image_size=image_size, network_kwargs=network_kwargs, optimizer=optimizer, lr_scheduler=lr_scheduler,
            lr_scheduler_interval=lr_scheduler_interval, score_threshold=score_threshold, iou_threshold=iou_threshold,
            category_ids=category_ids, log_images=log_images, output_dir=output_dir, map_backend=map_backend, **kwargs,
        )  # fmt: skip
        if not hasattr(self.net, "roi_heads") or not getattr(self.net.roi_heads, "has_mask", lambda: False)():
            raise ValueError(
                f"InstanceDetector needs a network with a mask head (Mask R-CNN); {network!r} has none. Fix: set "
                "network to maskrcnn_mobilenet_v3_large_fpn, maskrcnn_resnet50_fpn or maskrcnn_resnet50_fpn_v2 "
                "(ObjectDetector trains box-only detectors)."
            )
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold={mask_threshold} is not a probability. Fix: a value in (0, 1), e.g. 0.5.")
        self.mask_threshold = mask_threshold
        self.val_masks = COCOMaskMetrics(map_backend, mask_threshold, mask_max_detections)
        self.test_masks = COCOMaskMetrics(map_backend, mask_threshold, mask_max_detections)
        self.val_dsb, self.test_dsb = DSBScore(), DSBScore()
        self._per_image: list[dict[str, Any]] = []
        self._examples: list[dict[str, Any]] = []
        self._writer: InstancePredictionWriter | None = None

    # -- training ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _train_targets(targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        out = []
        for t in targets:  # crowd regions never train (COCO ignores detections in them)
            keep = t["iscrowd"] == 0 if "iscrowd" in t else torch.ones(len(t["boxes"]), dtype=torch.bool)
            out.append({"boxes": t["boxes"][keep], "labels": t["labels"][keep], "masks": t["masks"][keep]})
        return out

    # -- evaluation --------------------------------------------------------------------------------------------------
    def instance_labels(self, pred: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The label image and instance scores of one image's detections (see the module docstring)."""
        return masks_to_labels(pred["masks"], pred["scores"], self.mask_threshold, self.hparams.score_threshold)

    def _evaluate(self, batch: Batch, metric: Any) -> list[dict[str, torch.Tensor]]:
        testing = metric is self.test_map
        preds = super()._evaluate(batch, metric)
        masks, dsb = (self.test_masks, self.test_dsb) if testing else (self.val_masks, self.val_dsb)
        targets = batch["targets"]
        masks.update(preds, targets)
        predicted, true = [], []
        for pred, target in zip(preds, targets, strict=True):
            labels, _ = self.instance_labels(pred)
            predicted.append(labels.cpu())
            masks_of_objects = target["masks"][target["iscrowd"] == 0] if "iscrowd" in target else target["masks"]
            if len(masks_of_objects):
                # datamodules.instance_targets' rule for annotation overlaps: the smaller object keeps the pixel
                true.append(torch.from_numpy(labels_from_masks(masks_of_objects.cpu().numpy())))
            else:  # an image without (non-crowd) objects
                true.append(torch.zeros(tuple(labels.shape), dtype=torch.int32))
        dsb.update(predicted, true)
        if testing:
            paths = batch.get("paths") or [str(i) for i in range(len(preds))]
            for image, path, labels, truth in zip(batch["images"], paths, predicted, true, strict=True):
                self._keep_example(image, str(path), labels, truth)
        return preds

    def _keep_example(self, image: torch.Tensor, path: str, labels: torch.Tensor, truth: torch.Tensor) -> None:
        match = match_instances(labels.numpy(), truth.numpy())
        precisions = dsb_precisions(match)
        score = float(np.nanmean(precisions)) if not np.isnan(precisions).all() else float("nan")
        record = {"image": Path(path).name, "path": path, "dsb_score": score, "true_objects": len(match.true_ids),
                  "predicted_objects": len(match.pred_ids), "merged": match.merged, "split": match.split}  # fmt: skip
        self._per_image.append(record)
        example = {**record, "pixels": image.detach().cpu().numpy().astype(np.float16),
                   "labels": labels.numpy().astype(np.uint16), "truth": truth.numpy().astype(np.uint16)}  # fmt: skip
        self._examples.append(example)
        # keep only the best and worst few (by DSB score): the report's figures, memory-light
        if len(self._examples) > 2 * KEPT_EXAMPLES:
            ranked = sorted(self._examples, key=lambda e: -1 if np.isnan(e["dsb_score"]) else e["dsb_score"])
            self._examples = ranked[:KEPT_EXAMPLES] + ranked[-KEPT_EXAMPLES:]

    def _log_instances(self, stage: str, masks: COCOMaskMetrics, dsb: DSBScore) -> dict[str, Any]:
        mask_result = masks.compute()
        summary = dsb.summary()
        masks.reset()
        dsb.reset()
        self.log(f"{stage}/dsb_score", float(summary["score"]), prog_bar=True)
        self.log(f"{stage}/f1_50", float(summary["f1_50"]))
        for key in ("map", "map_50", "map_75"):
            self.log(f"{stage}/mask_{key}", float(mask_result[key]))
        return {"dsb": summary, "mask": mask_result}

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_instances("val", self.val_masks, self.val_dsb)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._per_image, self._examples = [], []

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        instances = self._log_instances("test", self.test_masks, self.test_dsb)
        assert self.last_test_result is not None
        per_image, examples = gather_objects(self._per_image), gather_objects(self._examples)
        ranked = sorted(examples, key=lambda e: -1 if np.isnan(e["dsb_score"]) else e["dsb_score"])
        examples = ranked if len(ranked) <= 2 * KEPT_EXAMPLES else ranked[:KEPT_EXAMPLES] + ranked[-KEPT_EXAMPLES:]
        self.last_test_result["instances"] = {**instances, "per_image": per_image, "examples": examples}
        if self._trainer is None or self.trainer.is_global_zero:
            dsb = instances["dsb"]
            print(f"DSB2018 score {dsb['score']:.4f} (F1@0.5 {dsb['f1_50']:.4f}) on {dsb['images']} images; mask mAP "
                  f"{instances['mask']['map']:.4f}, mask mAP@.5 {instances['mask']['map_50']:.4f}", flush=True)

    # -- predict -----------------------------------------------------------------------------------------------------
    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Instances of each image: label PNG and outlines written, RLE results collected (written at the end)."""
        preds = self.net(batch["images"])
        if self._writer is None:
            self._writer = InstancePredictionWriter(self._output_dir(), int((self.hparams.category_ids or [1])[0]))
        targets = batch.get("targets") or [{} for _ in preds]
        for i, (image, pred, path) in enumerate(zip(batch["images"], preds, batch["paths"], strict=True)):
            labels, scores = self.instance_labels(pred)
            image_id = int(targets[i]["image_id"]) if "image_id" in targets[i] else batch_idx * len(preds) + i + 1
            self._writer.add(image.cpu(), labels.cpu(), scores.cpu(), str(path), image_id)
        return preds

    def on_predict_epoch_end(self) -> None:
        if self._writer is None:
            return
        rank = self.trainer.global_rank if self._trainer else 0
        world = self.trainer.world_size if self._trainer else 1
        images = self._writer.images
        path = self._writer.finish(rank, world)
        rank_zero_info(f"wrote the instances of {images} images (label PNGs, outlines) and {path}")
        self._writer = None


__all__ = ["InstanceDetector"]
