"""ImageClassifier: any registered classification network, any torch optimizer and scheduler; single-label
(``multiclass``) or multi-label (``multilabel``) targets; mixup / CutMix and class-weighted losses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MultilabelExactMatch,
    MultilabelF1Score,
)

from zoo.classification.finetune import FreezeUnfreeze, LoadReport, load_pretrained, resolve_freeze_depth
from zoo.classification.metrics import MultilabelMeanAUROC, MultilabelMeanAveragePrecision
from zoo.classification.mixing import BatchMixer, multilabel_bce, soft_target_cross_entropy
from zoo.classification.models.googlenet import googlenet_loss, main_logits
from zoo.core.checks import check_model_fits_data
from zoo.core.module import CompileMode, SchedulerInterval, ZooModule

Task = Literal["multiclass", "multilabel"]
TASKS: tuple[str, ...] = ("multiclass", "multilabel")

# The metric each task selects checkpoints by (``checkpoint_monitor``), and the validation metrics only the other
# task logs: a ModelCheckpoint / EarlyStopping watching one of those stops the fit before its first step.
CHECKPOINT_MONITOR: dict[str, tuple[str, str]] = {"multiclass": ("val/acc", "max"), "multilabel": ("val/map", "max")}
TASK_ONLY_METRICS: dict[str, tuple[str, ...]] = {
    "multiclass": ("val/acc", "val/acc_top5"),
    "multilabel": ("val/map", "val/auroc", "val/f1", "val/exact_match"),
}


class ImageClassifier(ZooModule):
    """Train, evaluate and run a classifier from the registry.

    **multiclass** (the default; integer labels ``(N,)``): cross-entropy; logs ``train/loss``, ``train/acc``,
    ``{val,test}/{loss,acc,acc_top5}``; at test time also the per-class accuracy (``test/acc_class/<name>``) and the
    expected calibration error ``test/ece`` (15 equal-width confidence bins, Guo et al. 2017).

    **multilabel** (float multi-hot targets ``(N, num_classes)``, any number of labels per image): binary
    cross-entropy with logits per label; probabilities are sigmoids. Logs ``train/loss``, ``train/f1``,
    ``{val,test}/loss`` (mean BCE over samples and labels), ``{val,test}/map`` (mean average precision, torchmetrics'
    exact AP), ``{val,test}/auroc`` (both macro over the labels where they are defined:
    :class:`MultilabelMeanAveragePrecision`), ``{val,test}/f1`` (macro F1 of the labels whose probability is at least
    ``threshold``) and ``{val,test}/exact_match`` (subset accuracy: every label of the image right); at test time
    ``test/auroc_class/<name>`` and ``test/ap_class/<name>`` (a label without positives in the test set has neither:
    said in the log). Checkpoints are selected by ``val/map`` (mode max; :attr:`checkpoint_monitor`).

    ``{val,test}/loss`` is the plain loss (no label smoothing, no class weights), comparable across runs; training
    uses both. ``test_step`` returns the logits, which ``zoo.evaluation`` collects for its report.

    **Mixup / CutMix** (off by default; :mod:`zoo.classification.mixing`, Zhang et al. 2018, Yun et al. 2019):
    training batches are mixed with a permutation of themselves and trained on the soft targets (cross-entropy with
    probability targets; for multi-label, BCE on the mixed multi-hot targets). ``train/acc`` of a mixed batch counts
    the prediction against the dominant label of each mixed target (the argmax of the soft target); ``train/f1``
    against the labels whose mixed weight is at least 0.5. Validation and test batches are never mixed.

    Args:
        network: registered name (``zoo.list_models(family="classification")``); ``backbone`` before
            checkpoint format 2 (older checkpoints are read with it renamed).
        num_classes: output classes (labels, for multi-label); linked from the datamodule by ``train.py``.
        in_channels: input channels; linked from the datamodule by ``train.py``.
        network_kwargs: extra keyword arguments of the network's builder.
        label_smoothing: label smoothing ``s`` of the training loss (Szegedy et al. 2016, sec. 7): cross-entropy
            targets ``(1 - s) * y + s / C``; multi-label BCE targets ``(1 - s) * y + s / 2`` (as timm's multi-label
            mixup targets). With mixup / CutMix, applied to the mixed targets (as timm does).
        optimizer: any ``torch.optim`` class with its arguments (``class_path``/``init_args`` in YAML).
        lr_scheduler: any ``torch.optim.lr_scheduler`` class; OneCycleLR gets ``total_steps``
            from the trainer when not given, and steps per batch. ReduceLROnPlateau watches ``val/loss``.
        lr_scheduler_interval: ``auto`` (per step for OneCycleLR/CyclicLR, else per epoch).
        compile, compile_mode, channels_last: ``torch.compile`` and the memory format of the network, as in
            :class:`~zoo.core.module.ZooModule`.
        class_names: names for per-class metrics and figures; linked from the datamodule.
        pretrained: the weights the network starts from (:mod:`zoo.core.weight_sources`): a local file (a
            torchvision / timm state dict, a dict holding one under ``state_dict`` / ``model``, or a zoo checkpoint,
            e.g. an MNIST run to fine-tune on Fashion-MNIST), a URL (``https://...#sha256=<hex>``), or a name:
            ``torchvision:IMAGENET1K_V2`` (a member of the network's torchvision weights enum) for the networks
            built from torchvision, ``timm:a1_in1k`` for the timm ones; downloaded once into the cache, verified by
            hash. A classifier head of another ``num_classes`` is left freshly initialised (and reported); any other
            mismatch is an error naming the key and both shapes. A head of the weights' own size gets their class
            names (ImageNet's) unless ``class_names`` are given. ``load_from_checkpoint`` does not read the weights
            again (the checkpoint holds the trained weights, and records which ones it started from).
        freeze_stages: freeze the network's first N stages (``finetune.stages``; ``-1``: all of
            them, i.e. train only the head) before training. 0 freezes nothing.
        unfreeze_at_epoch: epoch (0-based) at which the frozen stages start training, in a new
            optimizer parameter group; ``None``: they stay frozen.
        unfreeze_lr_factor: learning rate of the unfrozen stages relative to the current one.
        aux_loss_weight: weight of auxiliary classifiers' losses in training (GoogLeNet: 0.3).
        output_dir: where ``predict`` writes ``predictions.csv``; default ``<log dir>/predictions``. Multiclass: one
            row per image with its position in the predict set, the predicted class, its name and confidence, the
            top-5 classes with their probabilities. Multilabel: its position, the names of the labels whose
            probability is at least ``threshold`` (``;``-separated), and one ``prob_<name>`` column per label.
        task: ``multiclass`` (one integer label per image) or ``multilabel`` (multi-hot float targets
            ``(N, num_classes)``); linked from the datamodule's ``task`` by ``train.py``.
        threshold: multi-label only: a label is predicted when its probability is at least this (F1, exact
            match, predictions.csv, the report).
        class_weights: one weight per class (linked from the datamodule's ``class_weights``, which a datamodule
            sets for ``balance: loss``). Multiclass: the ``weight`` of the cross-entropy (the loss is the weighted
            mean over samples, PyTorch's). Multilabel: the ``pos_weight`` of ``BCEWithLogitsLoss``, the weight of
            each label's positive term (``num_negatives / num_positives`` balances a label).
        mixup_alpha: mixup's ``Beta(alpha, alpha)`` (Zhang et al. 2018; 0.2 is their ImageNet value); 0: off.
        cutmix_alpha: CutMix's ``Beta(alpha, alpha)`` (Yun et al. 2019 use 1.0); 0: off.
        mix_switch_prob: with both alphas positive, the probability that a batch gets CutMix rather than mixup
            (timm's ``switch_prob``).
        mix_prob: the probability that a training batch is mixed at all (timm's ``prob``).
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
        compile: bool = False,
        compile_mode: CompileMode = "default",
        channels_last: bool = False,
        class_names: list[str] | None = None,
        pretrained: str | None = None,
        freeze_stages: int = 0,
        unfreeze_at_epoch: int | None = None,
        unfreeze_lr_factor: float = 0.1,
        aux_loss_weight: float = 0.3,
        output_dir: str | None = None,
        task: Task = "multiclass",
        threshold: float = 0.5,
        class_weights: list[float] | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_switch_prob: float = 0.5,
        mix_prob: float = 1.0,
    ) -> None:
        super().__init__(
            optimizer=optimizer, lr_scheduler=lr_scheduler, lr_scheduler_interval=lr_scheduler_interval,
            compile=compile, compile_mode=compile_mode, channels_last=channels_last,
        )  # fmt: skip
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not a classification task. Fix: set task to one of {', '.join(TASKS)}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold} is not a probability. Fix: set threshold within (0, 1).")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing}. Fix: set label_smoothing within [0, 1).")
        self.num_classes = num_classes
        self.task: Task = task
        self.threshold = threshold
        self.aux_loss_weight = aux_loss_weight
        self.in_channels = in_channels
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.class_weights = _checked_class_weights(class_weights, num_classes, task)
        # Not persistent: it is a hyperparameter (saved as such), and checkpoints without it keep loading.
        weight = torch.tensor(self.class_weights, dtype=torch.float32) if self.class_weights is not None else None
        self.register_buffer("loss_weight", weight, persistent=False)
        self.mixer = BatchMixer(num_classes, mixup_alpha, cutmix_alpha, mix_switch_prob, mix_prob)
        self._check_subclass_supports(task)
        self.net = self.build_network(
            network, num_classes=num_classes, in_channels=in_channels, **(network_kwargs or {})
        )
        self.pretrained_report: LoadReport | None = None
        if pretrained and not self.restoring:
            resolved = self.resolve_weights(pretrained, network)
            self.pretrained_report = load_pretrained(self.net, resolved)
            rank_zero_info(f"{network}: {self.pretrained_report}")
            self._use_weights_categories(resolved.source.categories, class_names, resolved.source.label)
        if freeze_stages:
            FreezeUnfreeze(freeze_stages, unfreeze_at_epoch, unfreeze_lr_factor)  # checks the arguments
            resolve_freeze_depth(self.net, freeze_stages)  # a depth beyond the stages fails here, not at fit
            if not pretrained:
                rank_zero_warn(
                    f"freeze_stages={freeze_stages} without pretrained weights freezes randomly initialised "
                    "layers. Fix: set pretrained to a weights file (or freeze_stages to 0)."
                )
        if task == "multilabel":
            self._build_multilabel_metrics(num_classes, threshold)
        else:
            self._build_multiclass_metrics(num_classes)
        # Sample-weighted mean losses as torchmetrics (float sums, synced once at compute): Lightning's
        # self.log(sync_dist=True) mean divides an integer sample count by the world size (1,001 samples on 2
        # processes count as 1,000), which biases the loss under DDP.
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self._checked_stages: set[str] = set()

    def _use_weights_categories(self, categories: Sequence[str] | None, given: list[str] | None, label: str) -> None:
        """A head of the weights' own size (1000 ImageNet classes) gets the weights' class names, unless
        ``class_names`` were given (the datamodule's win)."""
        if given is None and categories and len(categories) == self.num_classes and self.task == "multiclass":
            self.class_names = list(categories)
            self.hparams["class_names"] = list(categories)  # a reloaded checkpoint names its classes too
            rank_zero_info(f"class_names: the {len(categories)} categories of {label}")

    @property
    def weights_preprocessing(self) -> dict[str, Any] | None:
        """The evaluation transform of the pretrained weights the network started from (resize, crop, mean, std,
        interpolation), for a datamodule with ``normalize: weights``; None without such metadata (a local file)."""
        for record in self.initial_weights:
            if record.get("preprocessing"):
                return dict(record["preprocessing"])
        return None

    def _build_multiclass_metrics(self, num_classes: int) -> None:
        top5 = min(5, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro"),
             "acc_top5": MulticlassAccuracy(num_classes, top_k=top5, average="micro")},
            prefix="val/",
        )
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.test_per_class = MulticlassAccuracy(num_classes, average="none")
        # Guo et al. 2017: ECE over 15 equal-width confidence bins (their choice); the report's reliability
        # diagram uses the same bins (zoo.evaluation.classification.ECE_BINS).
        self.test_calibration = MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")

    def _build_multilabel_metrics(self, num_labels: int, threshold: float) -> None:
        self.train_f1 = MultilabelF1Score(num_labels, threshold=threshold, average="macro")
        self.val_metrics = MetricCollection(
            {"map": MultilabelMeanAveragePrecision(num_labels),
             "auroc": MultilabelMeanAUROC(num_labels),
             "f1": MultilabelF1Score(num_labels, threshold=threshold, average="macro"),
             "exact_match": MultilabelExactMatch(num_labels, threshold=threshold)},
            prefix="val/",
        )
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.test_auroc_class = MultilabelMeanAUROC(num_labels, average="none")
        self.test_ap_class = MultilabelMeanAveragePrecision(num_labels, average="none")

    def _check_subclass_supports(self, task: str) -> None:
        """A subclass with its own ``training_step`` (distillation) does not mix batches and trains on single
        labels: mixing or ``multilabel`` set for it would be ignored, so they stop here."""
        if type(self).training_step is ImageClassifier.training_step:
            return
        if self.mixer.enabled:
            raise ValueError(
                f"{type(self).__name__} has its own training step, which does not apply mixup / CutMix. Fix: set "
                "mixup_alpha and cutmix_alpha to 0 (or train an ImageClassifier)."
            )
        if task != "multiclass":
            raise ValueError(
                f"{type(self).__name__} trains single-label (multiclass) classifiers only, got task={task!r}. Fix: "
                "use an ImageClassifier for multi-label data."
            )

    @property
    def checkpoint_monitor(self) -> tuple[str, str]:
        """``(metric, mode)`` to select this model's checkpoints by: ``("val/acc", "max")`` for multiclass,
        ``("val/map", "max")`` for multilabel (a config's ModelCheckpoint sets its own; :meth:`setup` refuses one
        that watches a metric only the other task logs)."""
        return CHECKPOINT_MONITOR[self.task]

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

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes (multiclass) or a sigmoid per label (multilabel)."""
        return logits.float().sigmoid() if self.task == "multilabel" else logits.float().softmax(dim=1)

    # -- checks ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        check_model_fits_data(self, ("task",))
        self._check_class_weights_fit_data()
        if stage == "fit" and self._trainer is not None:
            self._check_monitors()

    def _check_class_weights_fit_data(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        data = getattr(datamodule, "class_weights", None)
        if data is None:
            return
        data = [float(w) for w in (data.tolist() if isinstance(data, torch.Tensor) else data)]
        mine = self.class_weights
        if mine is None or len(mine) != len(data) or any(not math.isclose(a, b, rel_tol=1e-6) for a, b in
                                                          zip(mine, data, strict=False)):
            raise ValueError(
                f"the data ({type(datamodule).__name__}) has class_weights={_short(data)} (its balance: loss), but "
                f"the model has class_weights={_short(mine)}. Fix: pass the datamodule's class_weights to the model "
                "(train.py links them), or turn the datamodule's loss balancing off."
            )

    def _check_monitors(self) -> None:
        other = next(t for t in TASKS if t != self.task)
        metric, mode = self.checkpoint_monitor
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(callback, (ModelCheckpoint, EarlyStopping)):
                continue
            watched = getattr(callback, "monitor", None)
            if watched in TASK_ONLY_METRICS[other]:
                raise ValueError(
                    f"{type(callback).__name__} monitors {watched!r}, which a task={self.task} classifier does not "
                    f"log (it logs {', '.join(('val/loss', *TASK_ONLY_METRICS[self.task]))}). Fix: set the "
                    f"callback's monitor to {metric} (mode: {mode}), e.g. in the config's ModelCheckpoint "
                    f"init_args: {{monitor: {metric}, mode: {mode}}}."
                )

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
        if self.task == "multilabel":
            self._check_multilabel_targets(stage, labels)
            return
        if labels.ndim != 1 or labels.is_floating_point():
            hint = (
                "they look like multi-label targets. Fix: set model task=multilabel (train.py links it from the "
                "datamodule's task)"
                if labels.ndim == 2 and labels.shape[1] == self.num_classes
                else "Fix: give one integer class index per image"
            )
            raise ValueError(
                f"{stage} batch has {'float' if labels.is_floating_point() else 'integer'} targets of shape "
                f"{tuple(labels.shape)}, but task=multiclass needs one integer label per image, shape "
                f"({len(images)},); {hint}."
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"{stage} batch has labels in [{int(labels.min())}, {int(labels.max())}], but the model has "
                f"num_classes={self.num_classes} (labels 0..{self.num_classes - 1}). Fix: set num_classes to "
                f"at least {int(labels.max()) + 1}."
            )

    def _check_multilabel_targets(self, stage: str, targets: torch.Tensor) -> None:
        if targets.ndim != 2 or targets.shape[1] != self.num_classes:
            kind = "integer class labels" if targets.ndim == 1 and not targets.is_floating_point() else "targets"
            raise ValueError(
                f"{stage} batch has {kind} of shape {tuple(targets.shape)}, but task=multilabel needs multi-hot "
                f"targets of shape (N, num_classes) = (N, {self.num_classes}). Fix: set model task=multiclass for "
                f"single-label data, or use a multi-label datamodule (float multi-hot targets); for "
                f"num_classes={targets.shape[1] if targets.ndim == 2 else '?'} labels set num_classes to match."
            )
        if targets.numel() and not bool(((targets == 0) | (targets == 1)).all()):
            odd = targets[(targets != 0) & (targets != 1)].flatten()[:3].tolist()
            raise ValueError(
                f"{stage} batch has multi-label target values {odd}: multi-hot targets are 0 or 1 per label. Fix: "
                "binarise the targets in the datamodule (soft targets come from label_smoothing / mixup_alpha / "
                "cutmix_alpha instead)."
            )

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The loss's targets: integer labels (multiclass) or float multi-hot targets (multilabel)."""
        return labels.float() if self.task == "multilabel" and not labels.is_floating_point() else labels

    # -- loops -----------------------------------------------------------------------------------------
    def compute_loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """The training loss: cross-entropy (multiclass; integer labels or probability targets ``(N, C)`` from
        mixing, :func:`~zoo.classification.mixing.soft_target_cross_entropy`) or binary cross-entropy per label
        (multilabel), with ``label_smoothing`` and ``class_weights``; networks with auxiliary heads (GoogLeNet in
        training) add their losses weighted by ``aux_loss_weight`` (Szegedy et al. 2015, sec. 5)."""
        smoothing = self.hparams.label_smoothing
        weight = self.loss_weight

        def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if self.task == "multilabel":
                return multilabel_bce(logits, target, pos_weight=weight, label_smoothing=smoothing)
            if target.ndim == 2:
                return soft_target_cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
            return F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)

        return googlenet_loss(output, labels, criterion, aux_weight=self.aux_loss_weight)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[1]  # a third element (sample indices) is not needed here
        self._check_batch("train", images, labels)
        targets = self._targets(labels)
        images, targets, _ = self.mixer(images, targets)  # unchanged unless mixup / CutMix is on
        output = self.net(images)
        loss = self.compute_loss(output, targets)
        logits = main_logits(output).detach()
        if self.task == "multilabel":
            self.train_f1.update(self.probabilities(logits), (targets >= 0.5).long())
        else:
            self.train_acc.update(logits, targets.argmax(dim=1) if targets.ndim == 2 else targets)
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
        metric, name = (self.train_f1, "train/f1") if self.task == "multilabel" else (self.train_acc, "train/acc")
        self.log(name, metric.compute())
        metric.reset()

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        self._check_batch(stage, images, labels)
        logits = self(images)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if self.task == "multilabel":
            loss = F.binary_cross_entropy_with_logits(logits.float(), self._targets(labels).float())
            # probabilities, not logits: torchmetrics would take logits that happen to lie in [0, 1] for them
            metrics.update(self.probabilities(logits), labels.long())
        else:
            loss = F.cross_entropy(logits, labels)
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
        if self.task == "multilabel":
            probs, targets = self.probabilities(logits), batch[1].long()
            self.test_auroc_class.update(probs, targets)
            self.test_ap_class.update(probs, targets)
        else:
            self.test_per_class.update(logits, batch[1])
            self.test_calibration.update(logits.softmax(dim=1), batch[1])
        return logits  # per-sample outputs for callbacks (zoo.evaluation's report)

    def on_test_epoch_end(self) -> None:
        if self.task == "multilabel":
            undefined: list[str] = []
            for key, metric in (("auroc_class", self.test_auroc_class), ("ap_class", self.test_ap_class)):
                for name, value in zip(self.class_names, metric.compute(), strict=True):
                    if torch.isnan(value):
                        undefined.append(f"{key}/{name}")
                    else:
                        self.log(f"test/{key}/{name}", value)
                metric.reset()
            if undefined:
                rank_zero_info(
                    f"test: not logged (undefined: the label has no positive, or for AUROC no negative, test "
                    f"sample): {', '.join(undefined)}"
                )
            return
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
        probs = self.probabilities(self(images))
        self._predicted.append(probs.detach().float().cpu())
        if self.task == "multilabel":
            return {"prediction": probs >= self.threshold, "probabilities": probs}
        confidence, prediction = probs.max(dim=1)
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
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            if self.task == "multilabel":
                writer.writerow(["index", "labels", *(f"prob_{name}" for name in self.class_names)])
                for i, row in enumerate(probs.tolist()):
                    chosen = [n for n, p in zip(self.class_names, row, strict=True) if p >= self.threshold]
                    writer.writerow([i, ";".join(chosen), *(f"{p:.6f}" for p in row)])
            else:
                top = probs.topk(min(5, self.num_classes), dim=1) if len(probs) else None
                writer.writerow(["index", "class", "class_name", "confidence", "top5"])
                for i in range(len(probs)):
                    values, classes = top.values[i].tolist(), top.indices[i].tolist()
                    writer.writerow([
                        i, classes[0], self.class_names[classes[0]], f"{values[0]:.6f}",
                        ";".join(f"{self.class_names[c]}:{v:.4f}" for c, v in zip(classes, values, strict=True)),
                    ])  # fmt: skip
        print(f"wrote {len(probs)} predictions to {path}", flush=True)


def _checked_class_weights(class_weights: Any, num_classes: int, task: str) -> list[float] | None:
    """``class_weights`` as floats, or a ``ValueError`` naming the fix (length, sign, finiteness)."""
    if class_weights is None:
        return None
    if isinstance(class_weights, torch.Tensor):
        class_weights = class_weights.tolist()
    weights = [float(w) for w in class_weights]
    if len(weights) != num_classes:
        raise ValueError(
            f"class_weights has {len(weights)} values for num_classes={num_classes}. Fix: give one weight per "
            f"class (task={task}: {'cross-entropy weight' if task == 'multiclass' else 'BCE pos_weight'}), in the "
            "order of class_names, or leave class_weights out."
        )
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(
            f"class_weights={_short(weights)}: weights must be finite, >= 0 and not all 0. Fix: give non-negative "
            "weights (e.g. inverse class frequencies)."
        )
    return weights


def _short(values: list[float] | None) -> str:
    if values is None:
        return "None"
    shown = ", ".join(f"{v:.4g}" for v in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}] ({len(values)} values)"
