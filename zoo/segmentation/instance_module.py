"""InstanceSegmenter: the U-Net route of instance segmentation, a semantic network plus post-processing.

A semantic network cannot output "nucleus 1, nucleus 2"; it can be trained so that touching nuclei come out
apart, and a watershed then numbers them (:mod:`zoo.segmentation.instances`). Two targets, one module:

* **two classes + the weight map** (background / nucleus; Ronneberger et al. 2015, "U-Net: convolutional
  networks for biomedical image segmentation", MICCAI, sec. 3, eq. 2): the loss weighs the thin background
  gaps between touching cells heavily, so the network learns to leave them; instances are the foreground's
  components cut by a distance-transform watershed (``mode="two_class"``). Data: ``weight_maps: true``,
  ``loss: weighted_ce``.
* **three classes** (background / interior / boundary, ``datamodules.instance_targets.three_class_target``;
  the contour-aware target of the 2018 Data Science Bowl solutions, Caicedo et al. 2019, Nature Methods 16,
  and of the U-Net of Caicedo et al. 2019, Cytometry A 95; contours as a class after DCAN, Chen et al. 2016):
  the predicted interiors are the seeds, the watershed grows them over the predicted boundary
  (``mode="three_class"``). Data: ``target: three_class``.

The mode follows ``num_classes`` (3: three classes, 2: two classes), which ``train.py`` links from the
datamodule's ``target``.

Scored as the 2018 Data Science Bowl scored submissions: the mean over images of the mean over IoU thresholds
0.5:0.05:0.95 of TP / (TP + FP + FN) (:class:`~zoo.core.instance_metrics.DSBScore`; Caicedo et al. 2019), and as
COCO scores instance masks (mask AP, :class:`~zoo.core.instance_metrics.COCOMaskMetrics`; Lin et al. 2014), with
each instance's score the mean foreground probability over its pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from scipy import ndimage

from zoo.core.coco import COCO_MAX_DETECTIONS, Backend, gather_objects
from zoo.core.instance_metrics import COCOMaskMetrics, DSBScore, dsb_score, match_instances
from zoo.core.instances import InstancePredictionWriter
from zoo.core.module import SchedulerInterval
from zoo.segmentation.instances import Elevation, InstanceMode, InstancePostprocessor, SeedMethod
from zoo.segmentation.module import SemanticSegmenter

MODES: dict[int, InstanceMode] = {3: "three_class", 2: "two_class"}
Ranked = list[tuple[float, int, dict[str, Any]]]  # (DSB score, position in the test set, the kept example)


def instance_scores(foreground: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The score of each instance 1..K of ``labels``: the mean of ``foreground`` (the probability of not being
    background) over its pixels. A watershed has no per-object confidence of its own; this one ranks the
    objects the network is surest of first, which is what mask AP needs (a constant score would make the
    precision-recall curve depend on the objects' order)."""
    count = int(labels.max()) if labels.size else 0
    if count == 0:
        return np.zeros(0, np.float32)
    return np.asarray(ndimage.mean(foreground, labels, index=np.arange(1, count + 1)), np.float32)


def _as_uint16(labels: np.ndarray) -> np.ndarray:
    # uint16 halves the memory of int32 and is what the label PNGs hold; more instances keep their width
    return labels.astype(np.uint16) if labels.size == 0 or int(labels.max()) <= 65535 else labels


class InstanceSegmenter(SemanticSegmenter):
    """A :class:`~zoo.segmentation.SemanticSegmenter` whose evaluation and predictions are instances.

    Training is the semantic segmenter's (loss on random crops; ``weighted_ce`` with the weight map for two
    classes, any loss for three). Validation and test segment every whole image as the semantic segmenter
    does (overlap-tile inference, :func:`~zoo.segmentation.predict_tiled`, any size), turn the softmax
    probabilities into instances with :class:`~zoo.segmentation.instances.InstancePostprocessor` and score
    them against the batch's ``instances`` (whole-image label images, served by ``DSB2018DataModule``).
    Logged, besides the semantic segmenter's metrics: ``{val,test}/dsb_score`` (the 2018 Data Science Bowl
    score), ``/f1_50`` (F1 at IoU 0.5, pooled over images), ``/mask_map`` and ``/mask_map_50`` (COCO mask AP
    @[.5:.95] and @.5; COCO keeps the 100 highest-scoring instances of an image, so on images with more nuclei
    the mask AP counts only those). The configs (``configs/instance/``) select checkpoints by ``val/dsb_score``
    (ModelCheckpoint ``mode: max``); :attr:`monitor`, what ZooModule hands ReduceLROnPlateau, is ``val/dsb_score``
    too, so a ReduceLROnPlateau needs ``mode: max`` (its default ``min`` would lower the rate as the score rises).
    Under DDP the scores are synchronised (torchmetrics); ``last_test_result``'s per-image rows and examples are
    gathered from every process.

    After ``test``, :attr:`last_test_result` holds what an evaluation report needs: ``dsb`` (the
    :meth:`DSBScore.summary`: score per IoU threshold, TP / FP / FN, F1, merged and split counts),
    ``mask_coco`` (the 12 COCO numbers), ``per_image`` (name, path, DSB score, true and predicted objects,
    merged, split) and ``examples`` (``best`` and ``worst``: the ``examples`` images of highest and lowest
    score with the image as uint8 ``(H, W, C)`` and the true and predicted label images as uint16; only those
    are kept while the test runs, so memory does not grow with the test set).

    ``predict`` writes per image ``<stem>.png`` (the instances as a 16-bit label image, 0 background),
    ``<stem>_outlines.png`` and, for the whole set, ``predictions.json`` (COCO results, RLE masks, scores) to
    ``output_dir`` (default ``<log dir>/predictions``) through :class:`~zoo.core.instances.InstancePredictionWriter`.

    For plain PyTorch use, :meth:`predict_instances` maps normalized images to ``(labels, scores)``. Exported
    (``python -m zoo.export``), the model is the semantic network alone (its logits on one tile); the overlap
    tiling, softmax and watershed are Python (numpy / scikit-image) and run outside the exported file.

    Args:
        network, num_classes, in_channels, network_kwargs, loss, loss_kwargs, optimizer, lr_scheduler,
        lr_scheduler_interval, class_names, tile_size, tile_overlap, tile_batch_size, tta_flips, output_dir,
        log_images: as in :class:`~zoo.segmentation.SemanticSegmenter`. ``num_classes`` must be 3 (three
            classes) or 2 (two classes): it chooses the post-processing mode.
        foreground_class: as in :class:`~zoo.segmentation.SemanticSegmenter` (the Rand error's and the ISBI
            pixel error's class). Default None: with three classes no one class is "the cells" (the instance
            scores measure what the Rand error would); set 1 with two classes to compare with the semantic runs.
        foreground_threshold, interior_threshold, elevation, seed_method, h, erosion, min_seed_size, min_size,
            connectivity: the post-processing, :func:`~zoo.segmentation.instances.instances_from_probabilities`.
        mask_map_backend: COCOeval implementation of the mask AP (``faster_coco_eval`` or ``pycocotools``).
        mask_max_detections: instances per image that the mask AP / AR count, the highest-scoring first (COCO's
            100 by default; a note is logged when an image holds more, see
            :class:`~zoo.core.instance_metrics.COCOMaskMetrics`). The DSB score counts every instance whatever
            this is.
        examples: best and worst test images kept with their label images in :attr:`last_test_result`.
    """

    monitor: ClassVar[str] = "val/dsb_score"

    def __init__(
        self,
        network: str = "unet",
        num_classes: int = 3,
        in_channels: int = 3,
        network_kwargs: dict[str, Any] | None = None,
        loss: str = "ce",
        loss_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: SchedulerInterval = "auto",
        class_names: list[str] | None = None,
        foreground_class: int | None = None,
        tile_size: int | None = None,
        tile_overlap: int = 64,
        tile_batch_size: int = 4,
        tta_flips: bool = False,
        output_dir: str | None = None,
        log_images: int = 4,
        foreground_threshold: float = 0.5,
        interior_threshold: float = 0.5,
        elevation: Elevation = "probability",
        seed_method: SeedMethod = "erosion",
        h: float = 2.0,
        erosion: int = 3,
        min_seed_size: int = 3,
        min_size: int = 10,
        connectivity: Literal[1, 2] = 1,
        mask_map_backend: Backend = "faster_coco_eval",
        mask_max_detections: int = COCO_MAX_DETECTIONS,
        examples: int = 3,
        **kwargs: Any,
    ) -> None:
        if num_classes not in MODES:
            raise ValueError(
                f"InstanceSegmenter takes num_classes 3 (background / interior / boundary) or 2 (background / "
                f"nucleus with the weight map), got {num_classes}. Fix: set the datamodule's target: three_class "
                f"or two_class (train.py links num_classes from it)."
            )
        super().__init__(
            network=network,
            num_classes=num_classes,
            in_channels=in_channels,
            network_kwargs=network_kwargs,
            loss=loss,
            loss_kwargs=loss_kwargs,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            lr_scheduler_interval=lr_scheduler_interval,
            class_names=class_names,
            foreground_class=foreground_class,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            tile_batch_size=tile_batch_size,
            tta_flips=tta_flips,
            output_dir=output_dir,
            log_images=log_images,
            **kwargs,
        )
        if examples < 0:
            raise ValueError(f"examples must be >= 0, got {examples}")
        # Built (and so validated) here: a bad threshold stops the run before training, not at the first validation.
        self.postprocessor = InstancePostprocessor(
            mode=MODES[num_classes],
            foreground_threshold=foreground_threshold,
            interior_threshold=interior_threshold,
            elevation=elevation,
            seed_method=seed_method,
            h=h,
            erosion=erosion,
            min_seed_size=min_seed_size,
            min_size=min_size,
            connectivity=connectivity,
        )
        self.val_dsb, self.test_dsb = DSBScore(), DSBScore()
        self.val_mask_coco = COCOMaskMetrics(backend=mask_map_backend, max_detections=mask_max_detections)
        self.test_mask_coco = COCOMaskMetrics(backend=mask_map_backend, max_detections=mask_max_detections)
        self.last_test_result: dict[str, Any] | None = None
        self._test_rows: list[dict[str, Any]] = []
        self._test_examples: Ranked = []
        self._writer: InstancePredictionWriter | None = None
        self._image_ids: dict[str, int] = {}

    # -- plain PyTorch use ---------------------------------------------------------------------------
    @property
    def mode(self) -> InstanceMode:
        """The post-processing mode, ``"three_class"`` or ``"two_class"`` (from ``num_classes``)."""
        return self.postprocessor.mode

    def instances_from_logits(self, logits: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(labels, scores)`` per image of full-size logits ``(N, num_classes, H, W)``: int32 label images
        (0 background, 1..K) and float32 scores ``(K,)`` (mean foreground probability of each instance)."""
        probs = logits.detach().float().softmax(dim=1).cpu().numpy()
        out = []
        for p in probs:
            labels = self.postprocessor(p)
            assert isinstance(labels, np.ndarray)
            out.append((labels, instance_scores(1.0 - p[0], labels)))
        return out

    @torch.no_grad()
    def predict_instances(self, images: torch.Tensor, flips: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(labels, scores)`` of normalized images ``(N, C, H, W)`` of any size (:meth:`instances_from_logits`)."""
        return self.instances_from_logits(self.segment(images, flips=flips))

    # -- checks ----------------------------------------------------------------------------------------
    def _check_instances(self, stage: str, batch: dict[str, Any]) -> None:
        if "instances" not in batch:
            raise ValueError(
                f"{stage} batches carry no 'instances' (the true label images the instance scores compare with). "
                f"Fix: use a datamodule that serves them (DSB2018DataModule; a folder layout with target: "
                f"three_class), or SemanticSegmenter for semantic scores only."
            )

    # -- evaluation ------------------------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, Any], stage: str, batch_idx: int) -> torch.Tensor:
        # SemanticSegmenter's evaluation (loss, pixel metrics), keeping the logits for the instances.
        self._check_batch(stage, batch)
        self._check_instances(stage, batch)
        logits = self.segment(batch["image"])
        loss, _ = self.compute_loss(logits, batch)
        preds = self.update_metrics(self.val_metrics if stage == "val" else self.test_metrics, logits, batch["mask"])
        loss_metric = self.val_loss if stage == "val" else self.test_loss
        loss_metric.update(loss.detach(), weight=len(preds))
        self.log(f"{stage}/loss", loss_metric, prog_bar=True)

        predicted = self.instances_from_logits(logits)
        true = [t.cpu() if isinstance(t, torch.Tensor) else torch.as_tensor(t) for t in batch["instances"]]
        dsb = self.val_dsb if stage == "val" else self.test_dsb
        coco = self.val_mask_coco if stage == "val" else self.test_mask_coco
        labels = [torch.from_numpy(p) for p, _ in predicted]
        dsb.update(labels, true)
        scores = [torch.from_numpy(s) for _, s in predicted]
        coco.update(
            [{"labels_image": lab, "scores": s} for lab, s in zip(labels, scores, strict=True)],
            [{"labels_image": t} for t in true],
        )
        if stage == "test":
            self._record_test_images(batch, [p for p, _ in predicted], true)
        return preds

    def _record_test_images(self, batch: dict[str, Any], predicted: list[np.ndarray], true: list[torch.Tensor]) -> None:
        for i, (pred, target) in enumerate(zip(predicted, true, strict=True)):
            target_np = target.numpy()
            match = match_instances(pred, target_np)
            score = dsb_score(pred, target_np)
            index = len(self._test_rows)
            name = str(batch["name"][i]) if "name" in batch else f"image_{index}"
            row = {
                "name": name,
                "path": str(batch["path"][i]) if "path" in batch else None,
                "dsb_score": score,
                "true_objects": len(match.true_ids),
                "pred_objects": len(match.pred_ids),
                "merged": match.merged,
                "split": match.split,
            }
            self._test_rows.append(row)
            if self.hparams.examples == 0 or math.isnan(score):
                continue  # an image without objects has no score to rank it by
            self._test_examples.append(
                (score, index, {"name": name, "path": row["path"], "dsb_score": score,
                                "image": self._display_image(batch["image"][i]), "true": _as_uint16(target_np),
                                "pred": _as_uint16(pred)})
            )  # fmt: skip
            self._test_examples = self._keep_extremes(self._test_examples)

    def _keep_extremes(self, ranked: Ranked) -> Ranked:
        """The ``examples`` lowest and highest of ``ranked`` (score, position), in increasing score."""
        k = self.hparams.examples
        ranked = sorted(ranked, key=lambda r: (r[0], r[1]))
        return ranked if len(ranked) <= 2 * k else ranked[:k] + ranked[-k:]

    def _display_image(self, image: torch.Tensor) -> np.ndarray:
        """A normalized ``(C, H, W)`` image as uint8 ``(H, W, C)``: un-normalized with the datamodule's mean / std
        when it has them (the colours the microscope gave), else stretched to 0..255."""
        x = image.detach().float().cpu()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        if mean is not None and std is not None and len(mean) == len(std) == x.shape[0]:
            x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        else:
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
        return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()

    def _log_instance_metrics(self, stage: str) -> tuple[dict[str, Any], dict[str, float]] | None:
        dsb = self.val_dsb if stage == "val" else self.test_dsb
        coco = self.val_mask_coco if stage == "val" else self.test_mask_coco
        if not dsb.update_called:
            return None  # no batch reached this stage (limit_val_batches: 0)
        summary = dsb.summary()
        mask_numbers = coco.compute()
        dsb.reset()
        coco.reset()
        values = {
            f"{stage}/dsb_score": float(summary["score"]),  # type: ignore[arg-type]
            f"{stage}/f1_50": float(summary["f1_50"]),  # type: ignore[arg-type]
            f"{stage}/mask_map": mask_numbers["map"],
            f"{stage}/mask_map_50": mask_numbers["map_50"],
        }
        for key, value in values.items():
            self.log(key, value, prog_bar=key.endswith("/dsb_score"))
        return summary, mask_numbers

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_instance_metrics("val")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.last_test_result = None
        self._test_rows, self._test_examples = [], []

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        logged = self._log_instance_metrics("test")
        rows = gather_objects(self._test_rows)
        examples = self._keep_extremes(gather_objects(self._test_examples))
        k = self.hparams.examples
        if logged is not None:
            summary, mask_numbers = logged
            worst = [e[2] for e in examples[: min(k, len(examples))]]
            best = [e[2] for e in reversed(examples[max(len(examples) - k, 0) :])]
            self.last_test_result = {
                "mode": self.mode,
                "postprocessing": asdict(self.postprocessor),
                "dsb": summary,
                "mask_coco": mask_numbers,
                "per_image": rows,
                "examples": {"best": best, "worst": worst},
            }
        self._test_rows, self._test_examples = [], []

    # -- predict ---------------------------------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._writer = InstancePredictionWriter(self._output_dir())
        # COCO image ids: the position in the datamodule's list of images, the same whichever process predicts it
        paths = getattr(getattr(self.trainer, "datamodule", None), "predict_paths", None) or []
        self._image_ids = {str(p): i for i, p in enumerate(paths, start=1)}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        """Instances of each image, written as ``<stem>.png`` and ``<stem>_outlines.png``; returns the label PNGs'
        paths (``predictions.json`` is written when the predict epoch ends)."""
        self._check_batch("predict", batch)
        if self._writer is None:
            self._writer = InstancePredictionWriter(self._output_dir())
        results = self.instances_from_logits(self.segment(batch["image"], flips=self.hparams.tta_flips))
        written = []
        for i, (labels, scores) in enumerate(results):
            path = str(batch["path"][i]) if "path" in batch else f"{batch_idx:05d}_{i}.png"
            # the outlines are drawn on the image as read (not the normalized network input)
            image = batch["raw"][i].permute(2, 0, 1).float().div(255) if "raw" in batch else batch["image"][i]
            image_id = self._image_ids.get(path) or len(self._image_ids) + self._writer.images + 1
            self._writer.add(image.cpu(), labels, scores, path, image_id)
            written.append(str(self._writer.folder / f"{Path(path).stem}.png"))
        return written

    def on_predict_epoch_end(self) -> None:
        if self._writer is not None:
            self._writer.finish(self.global_rank, self.trainer.world_size)
            self._writer = None


__all__ = ["InstanceSegmenter", "instance_scores"]
