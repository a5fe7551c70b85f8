"""Knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
NIPS 2014 Deep Learning Workshop, arXiv:1503.02531).

The student minimises ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``
(sec. 2: the soft targets' gradients scale as ``1 / T^2``, hence the ``T^2``), with ``s`` and ``t`` the
student's and the teacher's logits.

Two sources of the teacher's logits:

- **A teacher network** (``teacher_checkpoint``: a zoo Lightning checkpoint): rebuilt from the
  checkpoint's ``network`` hyperparameters, frozen, always in eval mode, and run on the very
  batch the student sees (augmentation included). It is not a registered submodule: it is neither
  trained nor saved in the student's checkpoint, so a student checkpoint is an ordinary
  classifier's (``ImageClassifier.load_from_checkpoint`` reads it too).
- **Black box** (``teacher_logits``: a file): only the teacher's outputs are needed, e.g. from a
  model served elsewhere. :func:`write_teacher_logits` (``python -m zoo.classification.distill``)
  stores the logits of every image of the datamodule's *official training split*, row ``i`` for
  image ``i`` in ``load_split(train=True)`` order, with the labels for a consistency check. Rows
  are looked up by each sample's position in that split, which the in-memory datamodules return
  as a third batch element with ``return_indices=True`` (this module switches it on in ``setup``).
  Positions in the official split do not depend on ``val_size``, ``split_seed`` or
  ``train_subset``, and the validation images (held out of the same split) have their rows too,
  so the agreement with the teacher is measured on validation as well. The stored logits are of
  un-augmented images: turn the datamodule's ``augment`` off for an exact match.

Logged: ``train/loss_kd``, ``train/loss_ce`` (the two parts, before weighting), ``train/loss``, and
``val/agreement`` (fraction of images where the student's and the teacher's top classes agree) and
``val/loss_kd``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torchmetrics.classification import MulticlassAccuracy

from zoo.classification.finetune import load_pretrained
from zoo.classification.models.googlenet import main_logits
from zoo.classification.module import ImageClassifier
from zoo.core.registry import create_model
from zoo.core.weights import PretrainedWeightsError, read_weights_file


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, kd, ce)``: Hinton et al.'s ``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE``,
    the KL term averaged over the batch (``kd`` includes the ``T^2`` factor, not ``alpha``)."""
    kd = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (temperature**2)
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * kd + (1 - alpha) * ce, kd, ce


def load_teacher(checkpoint_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a zoo classifier checkpoint (any ``ImageClassifier`` subclass, any checkpoint format),
    rebuilt from its hyperparameters (``network``, ``num_classes``, ``in_channels``, ``network_kwargs``), with
    its weights, frozen and in eval mode; and those hyperparameters."""
    checkpoint = read_weights_file(checkpoint_path)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    hparams = ImageClassifier.migrate_hyperparameters(hparams or {})
    if "network" not in hparams:
        raise PretrainedWeightsError(
            f"{checkpoint_path} is not a zoo classifier checkpoint (no 'hyper_parameters' with a "
            f"'network'). "
            f"A teacher is given as the .ckpt file of a zoo training run; for a teacher from elsewhere, "
            f"write its logits to a file and use teacher_logits instead."
        )
    net = create_model(
        hparams["network"], family="classification", num_classes=hparams["num_classes"],
        in_channels=hparams["in_channels"], **(hparams.get("network_kwargs") or {}),
    )
    load_pretrained(net, checkpoint_path, strict_head=True, contents=checkpoint)
    net.eval().requires_grad_(False)
    return net, dict(hparams)


def read_teacher_logits(path: str | Path) -> dict[str, torch.Tensor | None]:
    """``{"logits": (N, C) float, "labels": (N,) long or None}`` from a file written by
    :func:`write_teacher_logits` or holding a bare ``(N, C)`` tensor."""
    obj = read_weights_file(path)
    logits, labels = (obj.get("logits"), obj.get("labels")) if isinstance(obj, dict) else (obj, None)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(
            f"{path} holds no (N, num_classes) logits tensor (got {type(logits).__name__}"
            f"{' of shape ' + str(tuple(logits.shape)) if isinstance(logits, torch.Tensor) else ''}). "
            f"Write the file with `python -m zoo.classification.distill`."
        )
    return {"logits": logits.float(), "labels": labels.long() if isinstance(labels, torch.Tensor) else None}


class DistillationClassifier(ImageClassifier):
    """An :class:`ImageClassifier` (the student, ``network``) trained on a teacher's softened outputs.

    Args (besides :class:`ImageClassifier`'s, all of which it takes: ``**kwargs``):
        teacher_checkpoint: a zoo classifier checkpoint (``.ckpt``) of the teacher network.
        teacher_logits: black-box alternative: a file of the teacher's logits on the official
            training split (module docstring); give one of the two.
        temperature: ``T`` of the softmax on both logits (Hinton et al. use 1..20; 4 is common).
        alpha: weight of the distillation term; ``1 - alpha`` weighs cross-entropy on the labels.

    Neither teacher file is read by ``load_from_checkpoint`` (a student reloads without it); a
    teacher needed later (more training, validation agreement) is read on first use.
    """

    def __init__(
        self,
        teacher_checkpoint: str | None = None,
        teacher_logits: str | None = None,
        temperature: float = 4.0,
        alpha: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if teacher_checkpoint and teacher_logits:
            raise ValueError(
                "Give teacher_checkpoint (a teacher network) or teacher_logits (its outputs), not both."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.temperature = temperature
        self.alpha = alpha
        self.val_agreement = MulticlassAccuracy(self.num_classes, average="micro")
        # Plain attributes, not submodules: not trained, not in state_dict, not moved by Lightning
        # (moved to the student's device on use).
        self.__dict__["_teacher"] = None
        self.__dict__["_teacher_table"] = None
        self._checked_alignment: set[str] = set()
        if not self.restoring:
            if teacher_checkpoint:
                self._load_teacher()
            if teacher_logits:
                self._load_table()

    # -- the teacher --------------------------------------------------------------------------------
    def _load_teacher(self) -> nn.Module:
        teacher, hparams = load_teacher(self.hparams.teacher_checkpoint)
        for attr in ("num_classes", "in_channels"):
            if hparams[attr] != getattr(self, attr):
                raise ValueError(
                    f"The teacher ({self.hparams.teacher_checkpoint}) has {attr}={hparams[attr]}, "
                    f"the student {attr}={getattr(self, attr)}: distillation needs the same classes "
                    f"and inputs."
                )
        self.__dict__["_teacher"] = teacher
        rank_zero_info(f"Teacher: {hparams['network']} from {self.hparams.teacher_checkpoint}")
        return teacher

    def _load_table(self) -> dict[str, torch.Tensor | None]:
        table = read_teacher_logits(self.hparams.teacher_logits)
        if table["logits"].shape[1] != self.num_classes:
            raise ValueError(
                f"{self.hparams.teacher_logits} has logits for {table['logits'].shape[1]} classes, "
                f"the student num_classes={self.num_classes}."
            )
        self.__dict__["_teacher_table"] = table
        return table

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher network (``teacher_checkpoint``), loaded on first use; ``None`` without one."""
        if self._teacher is None and self.hparams.get("teacher_checkpoint"):
            self._load_teacher()
        teacher = self._teacher
        if teacher is not None and self.__dict__.get("_teacher_device") != self.device:
            teacher.to(self.device)
            self.__dict__["_teacher_device"] = self.device
        return teacher

    @property
    def has_teacher(self) -> bool:
        return bool(self.hparams.get("teacher_checkpoint") or self.hparams.get("teacher_logits"))

    def teacher_outputs(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None, stage: str
    ) -> torch.Tensor:
        """The teacher's logits for a batch: the teacher network on ``images``, or the stored rows
        ``indices`` (positions in the official training split) of the logits file."""
        if self.hparams.get("teacher_checkpoint"):
            with torch.no_grad():
                return main_logits(self.teacher(images)).float()
        table = self._teacher_table or self._load_table()
        if indices is None:
            raise ValueError(
                f"Black-box distillation (teacher_logits) needs each {stage} sample's index in the official "
                f"training split, as the batch's third element. Fix: use an in-memory datamodule of the zoo "
                f"with return_indices=true, or a dataloader yielding (images, labels, indices)."
            )
        logits = table["logits"]
        cpu_idx = indices.cpu()
        if stage not in self._checked_alignment:  # first batch of each stage: the file fits the data
            self._checked_alignment.add(stage)
            if int(cpu_idx.max()) >= len(logits) or int(cpu_idx.min()) < 0:
                raise ValueError(
                    f"{self.hparams.teacher_logits} has {len(logits):,} rows, but a {stage} batch asks for "
                    f"row {int(cpu_idx.max()):,}: the file was written for another data set. Write it "
                    f"again for this datamodule with `python -m zoo.classification.distill`."
                )
            stored = table["labels"]
            if stored is not None and not torch.equal(stored[cpu_idx], labels.cpu()):
                wrong = int((stored[cpu_idx] != labels.cpu()).sum())
                raise ValueError(
                    f"{self.hparams.teacher_logits} does not line up with the data: the labels stored with "
                    f"the logits differ from {wrong} of {len(labels)} labels of the first {stage} batch. "
                    f"Write the file again for this datamodule with `python -m zoo.classification.distill`."
                )
        rows = logits[cpu_idx]
        missing = torch.isnan(rows).any(dim=1)
        if bool(missing.any()):
            raise ValueError(
                f"{self.hparams.teacher_logits} has no logits for sample {int(cpu_idx[missing][0])} of the "
                f"official training split (written with --only-used for another train_subset / val_size / "
                f"split_seed?). Write the file again for this datamodule."
            )
        return rows.to(self.device)

    # -- setup and loops -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and not self.has_teacher:
            raise ValueError(
                "DistillationClassifier needs a teacher to train: set model teacher_checkpoint (a zoo .ckpt) "
                "or teacher_logits (a file written by `python -m zoo.classification.distill`)."
            )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if self.hparams.get("teacher_logits") and hasattr(datamodule, "return_indices"):
            if not datamodule.return_indices:
                rank_zero_info("Black-box distillation: the datamodule now returns sample indices.")
            datamodule.return_indices = True

    @staticmethod
    def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return batch[0], batch[1], (batch[2] if len(batch) > 2 else None)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels, indices = self._unpack(batch)
        self._check_batch("train", images, labels)
        output = self.net(images)
        logits = main_logits(output)
        teacher_logits = self.teacher_outputs(images, labels, indices, "train")
        _, kd, _ = distillation_loss(logits, teacher_logits, labels, self.temperature, self.alpha)
        ce = self.compute_loss(output, labels)  # label smoothing and auxiliary heads as ImageClassifier
        loss = self.alpha * kd + (1 - self.alpha) * ce
        self.train_acc.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_kd", kd)
        self.log("train/loss_ce", ce)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits = self._evaluate(batch, "val")
        teacher_logits = self._teacher_for_evaluation(batch)
        if teacher_logits is None:
            return
        _, kd, _ = distillation_loss(logits, teacher_logits, batch[1], self.temperature, self.alpha)
        self.val_agreement.update(logits, teacher_logits.argmax(dim=1))
        self.log("val/loss_kd", kd, sync_dist=True, batch_size=len(logits))
        self.log("val/agreement", self.val_agreement, prog_bar=True)

    def _teacher_for_evaluation(self, batch: Any) -> torch.Tensor | None:
        images, labels, indices = self._unpack(batch)
        if self.hparams.get("teacher_logits") and indices is None:
            return None  # validation without indices: no agreement, the rest as usual
        try:
            return self.teacher_outputs(images, labels, indices, "val")
        except FileNotFoundError as err:  # a reloaded student whose teacher file is gone
            if "val_teacher_missing" not in self._checked_alignment:
                self._checked_alignment.add("val_teacher_missing")
                rank_zero_warn(f"No val/agreement: {err}")
            return None


# ---------------------------------------------------------------------------------------------
# Writing a teacher's logits (black-box distillation)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def write_teacher_logits(
    teacher: nn.Module | str | Path,
    datamodule: Any,
    path: str | Path,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
    only_used: bool = False,
) -> Path:
    """Run ``teacher`` (a network, or a zoo checkpoint path) in eval mode on every image of the
    datamodule's official training split (``load_split(train=True)``, normalised the datamodule's
    way, not augmented) and save ``{"logits": (N, C), "labels": (N,), ...}`` to ``path``.

    ``only_used``: compute only the rows of the images the datamodule uses for training and
    validation (with its ``train_subset`` / ``val_size`` / ``split_seed``); the other rows are NaN,
    and a student that asks for one gets an error naming the sample.
    """
    source = str(teacher) if isinstance(teacher, (str, Path)) else type(teacher).__name__
    if isinstance(teacher, (str, Path)):
        teacher, _ = load_teacher(teacher)
    teacher = teacher.to(device).eval()
    images, labels = datamodule.load_split(train=True)
    rows = torch.arange(len(images))
    if only_used:
        datamodule.setup("fit")
        rows = torch.cat([datamodule.train_set.source_indices, datamodule.val_set.source_indices]).unique()
    outputs = []
    for start in range(0, len(rows), batch_size):
        batch = datamodule.normalize(images[rows[start : start + batch_size]]).to(device)
        outputs.append(main_logits(teacher(batch)).float().cpu())
    computed = torch.cat(outputs)
    logits = torch.full((len(images), computed.shape[1]), float("nan"))
    logits[rows] = computed
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"logits": logits, "labels": labels.long(), "datamodule": type(datamodule).__name__,
         "split": "official train split, load_split(train=True) order", "teacher": source},
        path,
    )
    return path
