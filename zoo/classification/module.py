"""ImageClassifier: any registered classification network, any torch optimizer and scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from zoo.classification.finetune import FreezeUnfreeze, LoadReport, load_pretrained, resolve_freeze_depth
from zoo.classification.models.googlenet import googlenet_loss, main_logits
from zoo.core.module import SchedulerInterval, ZooModule


class ImageClassifier(ZooModule):
    """Train, evaluate and run a classifier from the registry.

    Logs ``train/loss``, ``train/acc``, ``{val,test}/{loss,acc,acc_top5}``; at test time also the
    per-class accuracy (``test/acc_class/<name>``) and the expected calibration error ``test/ece`` (15
    equal-width confidence bins, Guo et al. 2017). ``test_step`` returns the logits, which
    ``zoo.evaluation`` collects for its report (confusion matrix, reliability diagram, misclassified images).

    Args:
        network: registered name (``zoo.list_models(family="classification")``); ``backbone`` before
            checkpoint format 2 (older checkpoints are read with it renamed).
        num_classes: output classes; linked from the datamodule by ``train.py``.
        in_channels: input channels; linked from the datamodule by ``train.py``.
        network_kwargs: extra keyword arguments of the network's builder.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016, sec. 7).
        optimizer: any ``torch.optim`` class with its arguments (``class_path``/``init_args`` in YAML).
        lr_scheduler: any ``torch.optim.lr_scheduler`` class; OneCycleLR gets ``total_steps``
            from the trainer when not given, and steps per batch.
        lr_scheduler_interval: ``auto`` (per step for OneCycleLR/CyclicLR, else per epoch).
        class_names: names for per-class metrics and figures; linked from the datamodule.
        pretrained: path of a local weights file loaded into the network after it is built
            (``zoo.classification.finetune.load_pretrained``): a torchvision / timm state dict, a
            dict holding one under ``state_dict`` / ``model``, or a zoo checkpoint (e.g. an MNIST
            run, to fine-tune on Fashion-MNIST). A classifier head of another ``num_classes`` is
            left freshly initialised; any other mismatch is an error. ``load_from_checkpoint``
            does not read this file again (the checkpoint holds the trained weights), so a
            fine-tuned checkpoint reloads without it.
        freeze_stages: freeze the network's first N stages (``finetune.stages``; ``-1``: all of
            them, i.e. train only the head) before training. 0 freezes nothing.
        unfreeze_at_epoch: epoch (0-based) at which the frozen stages start training, in a new
            optimizer parameter group; ``None``: they stay frozen.
        unfreeze_lr_factor: learning rate of the unfrozen stages relative to the current one.
        aux_loss_weight: weight of auxiliary classifiers' losses in training (GoogLeNet: 0.3).
        output_dir: where ``predict`` writes ``predictions.csv`` (one row per image: its position in the
            predict set, the predicted class, its name and confidence, the top-5 classes with their
            probabilities); default ``<log dir>/predictions``.
    """

    family = "classification"
    renamed_arguments = {"backbone": "network", "backbone_kwargs": "network_kwargs"}  # checkpoint format 1

    def __init__(
        self,
        network: str = "convnet",
        num_classes: int = 10,
        in_channels: int = 1,
        network_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: SchedulerInterval = "auto",
        class_names: list[str] | None = None,
        pretrained: str | None = None,
        freeze_stages: int = 0,
        unfreeze_at_epoch: int | None = None,
        unfreeze_lr_factor: float = 0.1,
        aux_loss_weight: float = 0.3,
        output_dir: str | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, lr_scheduler_interval=lr_scheduler_interval)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        self.num_classes = num_classes
        self.aux_loss_weight = aux_loss_weight
        self.in_channels = in_channels
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.net = self.build_network(
            network, num_classes=num_classes, in_channels=in_channels, **(network_kwargs or {})
        )
        self.pretrained_report: LoadReport | None = None
        if pretrained and not self.restoring:
            self.pretrained_report = load_pretrained(self.net, pretrained)
            rank_zero_info(f"{network}: {self.pretrained_report}")
        if freeze_stages:
            FreezeUnfreeze(freeze_stages, unfreeze_at_epoch, unfreeze_lr_factor)  # checks the arguments
            resolve_freeze_depth(self.net, freeze_stages)  # a depth beyond the stages fails here, not at fit
            if not pretrained:
                rank_zero_warn(
                    f"freeze_stages={freeze_stages} without pretrained weights freezes randomly initialised "
                    "layers. Fix: set pretrained to a weights file (or freeze_stages to 0)."
                )
        top5 = min(5, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro"),
             "acc_top5": MulticlassAccuracy(num_classes, top_k=top5, average="micro")},
            prefix="val/",
        )
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        # Sample-weighted mean losses as torchmetrics (float sums, synced once at compute): Lightning's
        # self.log(sync_dist=True) mean divides an integer sample count by the world size (1,001 samples on 2
        # processes count as 1,000), which biases the loss under DDP.
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.test_per_class = MulticlassAccuracy(num_classes, average="none")
        # Guo et al. 2017: ECE over 15 equal-width confidence bins (their choice); the report's reliability
        # diagram uses the same bins (zoo.evaluation.classification.ECE_BINS).
        self.test_calibration = MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")
        self._checked_stages: set[str] = set()

    def configure_callbacks(self) -> list[pl.Callback]:
        """The freeze/unfreeze schedule, when ``freeze_stages`` asks for one."""
        hp = self.hparams
        fitting = self._trainer is None or self.trainer.state.fn == "fit"
        if not hp.get("freeze_stages") or not fitting:
            return []
        return [FreezeUnfreeze(hp.freeze_stages, hp.unfreeze_at_epoch, hp.unfreeze_lr_factor)]

    # -- plain PyTorch use ---------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of a normalized batch ``(N, in_channels, H, W)``."""
        return main_logits(self.net(images))

    # -- checks ----------------------------------------------------------------------------------------
    def _check_batch(self, stage: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        if stage in self._checked_stages:
            return  # first batch of each stage only: the check costs a device sync
        self._checked_stages.add(stage)
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"{stage} batch has shape {tuple(images.shape)}, but the model expects "
                f"(N, {self.in_channels}, H, W). Fix: set model "
                f"in_channels={images.shape[1] if images.ndim == 4 else '?'} or convert the images."
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"{stage} batch has labels in [{int(labels.min())}, {int(labels.max())}], but the model has "
                f"num_classes={self.num_classes} (labels 0..{self.num_classes - 1}). Fix: set num_classes to "
                f"at least {int(labels.max()) + 1}."
            )

    # -- loops -----------------------------------------------------------------------------------------
    def compute_loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the logits; networks with auxiliary heads (GoogLeNet in training) add
        their losses weighted by ``aux_loss_weight`` (Szegedy et al. 2015, sec. 5)."""
        smoothing = self.hparams.label_smoothing

        def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, target, label_smoothing=smoothing)

        return googlenet_loss(output, labels, criterion, aux_weight=self.aux_loss_weight)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[1]  # a third element (sample indices) is not needed here
        self._check_batch("train", images, labels)
        output = self.net(images)
        loss = self.compute_loss(output, labels)
        logits = main_logits(output)
        self.train_acc.update(logits.detach(), labels)
        if self._is_logging_step():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def _is_logging_step(self) -> bool:
        """True on the steps whose metrics the trainer writes (every ``log_every_n_steps``).

        ``self.log`` costs Lightning about 0.5 ms per call on a CPU (it moves the result's state to
        the value's device), 2% of an MNIST step; a step value logged between two logging steps
        is never written anyway. The progress bar then shows the loss of the last logging step.
        """
        connector = getattr(self._trainer, "_logger_connector", None)
        return True if connector is None else bool(connector.should_update_logs)

    def on_train_epoch_end(self) -> None:
        # Logged once per epoch, not per step: handing a Metric object to self.log every step costs
        # Lightning a device move of the metric's state (about 1 ms/step, 3-4% of an MNIST step on a CPU).
        self.log("train/acc", self.train_acc.compute())
        self.train_acc.reset()

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        self._check_batch(stage, images, labels)
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, labels)
        # weighted by the batch size: the mean over an uneven last batch weighs every sample once.
        loss_metric = self.val_loss if stage == "val" else self.test_loss
        loss_metric.update(loss.detach(), weight=len(labels))
        self.log(f"{stage}/loss", loss_metric, prog_bar=True)
        self.log_dict(metrics, prog_bar=stage == "val")
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self._evaluate(batch, "test")
        self.test_per_class.update(logits, batch[1])
        self.test_calibration.update(logits.softmax(dim=1), batch[1])
        return logits  # per-sample outputs for callbacks (zoo.evaluation's report)

    def on_test_epoch_end(self) -> None:
        per_class = self.test_per_class.compute()
        for name, acc in zip(self.class_names, per_class, strict=True):
            self.log(f"test/acc_class/{name}", acc)
        self.test_per_class.reset()
        self.log("test/ece", self.test_calibration.compute())
        self.test_calibration.reset()

    def on_predict_epoch_start(self) -> None:
        self._predicted: list[torch.Tensor] = []

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self(images).softmax(dim=1)
        confidence, prediction = probs.max(dim=1)
        self._predicted.append(probs.detach().float().cpu())
        return {"prediction": prediction, "confidence": confidence, "probabilities": probs}

    def on_predict_epoch_end(self) -> None:
        """Write ``predictions.csv`` (see ``output_dir``) and say where; one file per process under DDP."""
        import csv

        probs = torch.cat(self._predicted) if self._predicted else torch.empty(0, self.num_classes)
        self._predicted = []
        log_dir = self.trainer.log_dir if self._trainer else None  # a broadcast under DDP: every rank asks
        out_dir = Path(self.hparams.get("output_dir") or Path(log_dir or ".") / "predictions")
        out_dir.mkdir(parents=True, exist_ok=True)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer else (1, 0)
        path = out_dir / ("predictions.csv" if world == 1 else f"predictions_rank{rank}.csv")
        top = probs.topk(min(5, self.num_classes), dim=1) if len(probs) else None
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "class", "class_name", "confidence", "top5"])
            for i in range(len(probs)):
                values, classes = top.values[i].tolist(), top.indices[i].tolist()
                writer.writerow([
                    i, classes[0], self.class_names[classes[0]], f"{values[0]:.6f}",
                    ";".join(f"{self.class_names[c]}:{v:.4f}" for c, v in zip(classes, values, strict=True)),
                ])  # fmt: skip
        print(f"wrote {len(probs)} predictions to {path}", flush=True)
