"""Transfer learning: local weight files, the classifier head, network stages, freeze/unfreeze.

- :func:`load_pretrained` loads a local weights file into a classifier through
  :func:`zoo.core.weights.load_weights` (every format it reads): everything but the classifier head must fit; a
  head of another shape (other ``num_classes``) stays freshly initialised. Nothing is ever downloaded.
- :func:`find_head` / :func:`replace_head`: the classifier head of any registered network.
- :func:`stages`: a network's ordered stages (what freezing counts in), :func:`freeze_first_stages`.
- :class:`FreezeUnfreeze`: a ``BaseFinetuning`` callback (Lightning's fine-tuning hooks) that freezes
  the first stages before training and unfreezes them at a given epoch into a new parameter group
  with a lower learning rate. :class:`~zoo.classification.ImageClassifier` adds it itself when
  ``freeze_stages`` is set.

What comes from the libraries: Lightning's ``BaseFinetuning`` (freezing, BatchNorm handling,
parameter-group bookkeeping across restarts). Head detection and the stage rules are family-neutral and live in
:mod:`zoo.core.stages` (the segmentation family's FCN taps the same stages); they are re-exported here
(``from zoo.classification.finetune import stages`` keeps working).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.callbacks import BaseFinetuning
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.nn.modules.batchnorm import _BatchNorm

from zoo.core.stages import (
    HEAD_ATTRIBUTES,
    POOLING_TYPES,
    auxiliary_heads,
    describe_stages,
    find_head,
    head_modules,
    head_state_keys,
    split_into_stages,
    stages,
)
from zoo.core.weights import LoadReport, load_weights

if TYPE_CHECKING:
    from zoo.core.weight_sources import ResolvedWeights

__all__ = [
    "HEAD_ATTRIBUTES",
    "POOLING_TYPES",
    "FreezeUnfreeze",
    "LoadReport",
    "auxiliary_heads",
    "describe_stages",
    "find_head",
    "freeze_first_stages",
    "head_modules",
    "head_state_keys",
    "load_pretrained",
    "replace_head",
    "resolve_freeze_depth",
    "set_batchnorm_eval",
    "split_into_stages",
    "stages",
]


# ---------------------------------------------------------------------------------------------
# The classifier head
# ---------------------------------------------------------------------------------------------


def _new_classifier_layer(old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(
            old.in_channels,
            num_classes,
            old.kernel_size,
            old.stride,
            old.padding,
            bias=old.bias is not None,
        )
    raise TypeError(f"Cannot replace a head of type {type(old).__name__}")


def replace_head(net: nn.Module, num_classes: int) -> list[str]:
    """Give ``net`` fresh classifier layers (main and auxiliary heads) for ``num_classes`` classes,
    in place; heads that already have ``num_classes`` outputs are kept. Returns the names of the
    replaced layers. timm networks use their own ``reset_classifier``. A new layer keeps its
    predecessor's input size, kernel and bias, with PyTorch's default initialisation."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if type(net).__module__.startswith("timm.") and hasattr(net, "reset_classifier"):
        name, head = find_head(net)
        if getattr(head, "out_features", None) == num_classes:
            return []
        net.reset_classifier(num_classes)
        return [name]
    replaced = []
    for name, head in head_modules(net):
        outputs = head.out_features if isinstance(head, nn.Linear) else head.out_channels
        if outputs == num_classes:
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child_name, _new_classifier_layer(head, num_classes).to(head.weight.device))
        replaced.append(name)
    if replaced and hasattr(net, "num_classes"):
        net.num_classes = num_classes
    return replaced


# ---------------------------------------------------------------------------------------------
# Loading weights
# ---------------------------------------------------------------------------------------------


def load_pretrained(
    net: nn.Module,
    path: str | Path | ResolvedWeights,
    strict_head: bool = False,
    *,
    strict: bool = True,
    ignore: Sequence[str] = (),
    contents: Any = None,
) -> LoadReport:
    """Load the weights file ``path`` into the classifier ``net`` (in place) and report what was loaded:
    :func:`zoo.core.weights.load_weights` with the classifier head (main and auxiliary, :func:`head_state_keys`)
    as the keys that may differ.

    Args:
        net: the network, built with the architecture that saved the file (any ``num_classes``).
        path: a local file: a plain state dict (torchvision / timm format), a dict with the state dict under
            ``"state_dict"`` or ``"model"``, or a zoo Lightning checkpoint (its ``net.`` prefix is removed); a URL
            or full library name, or what :func:`zoo.core.weight_sources.resolve_weights` returned.
        strict_head: also require the head to fit. By default a head of another shape (a different
            ``num_classes``) is skipped and keeps its fresh initialisation.
        strict, ignore, contents: as in :func:`~zoo.core.weights.load_weights`.
    """
    head_keys = head_state_keys(net)
    fix = "strict_head=True requires the head to fit: build the network with the file's num_classes."
    return load_weights(
        net,
        path,
        tolerant=() if strict_head else head_keys,
        hints={key: ("the classifier head ", fix) for key in head_keys},
        strict=strict,
        ignore=ignore,
        contents=contents,
    )


# ---------------------------------------------------------------------------------------------
# Freezing stages (the stages themselves: zoo.core.stages)
# ---------------------------------------------------------------------------------------------


def resolve_freeze_depth(net: nn.Module, freeze_stages: int) -> int:
    """The number of stages ``freeze_stages`` means for ``net`` (``-1``: all of them); a depth
    beyond the network's stages is an error that names its stages."""
    count = len(stages(net))
    if freeze_stages == -1:
        return count
    if freeze_stages < 0 or freeze_stages > count:
        listing = ", ".join(f"{i + 1}: {name}" for i, name in enumerate(describe_stages(net)))
        raise ValueError(
            f"freeze_stages={freeze_stages}, but {type(net).__name__} has {count} stages ({listing}). "
            f"Fix: choose 0..{count}, or -1 to freeze all {count} (everything but the classifier head)."
        )
    return freeze_stages


def freeze_first_stages(net: nn.Module, freeze_stages: int, train_bn: bool = False) -> list[nn.Module]:
    """Freeze the first ``freeze_stages`` stages of ``net`` (``-1``: all) for plain PyTorch use;
    their BatchNorm layers stop updating running statistics (``train_bn=False``). Returns the
    frozen stages. Put their BatchNorm layers in eval mode after each ``net.train()`` with
    :func:`set_batchnorm_eval`, and give the optimizer only ``requires_grad`` parameters."""
    frozen = stages(net)[: resolve_freeze_depth(net, freeze_stages)]
    BaseFinetuning.freeze(frozen, train_bn=train_bn)
    return frozen


def set_batchnorm_eval(modules: Iterable[nn.Module]) -> None:
    """BatchNorm layers of ``modules`` to eval mode: they normalise with their running statistics
    and leave them unchanged, as a frozen (pretrained) network should."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                m.eval()


# ---------------------------------------------------------------------------------------------
# The freeze / unfreeze schedule
# ---------------------------------------------------------------------------------------------


class FreezeUnfreeze(BaseFinetuning):
    """Freeze the first ``freeze_stages`` stages (see :func:`stages`; ``-1``: all, leaving only the
    head and any non-stage layers to train) before training; at epoch ``unfreeze_at_epoch`` (0-based;
    ``None``: never) unfreeze them into a new optimizer parameter group whose learning rate is the
    current one times ``unfreeze_lr_factor``.

    Frozen BatchNorm layers are in eval mode during training (normalise with, and keep, their
    running statistics); they train again after the unfreeze. The optimizer must be built from the
    ``requires_grad`` parameters only (``ImageClassifier.configure_optimizers`` does that).

    An LR scheduler keeps scheduling the new group, scaled by ``unfreeze_lr_factor``: its
    per-group entries (``base_lrs``, OneCycleLR's ``initial_lr``/``max_lr``/``min_lr``, ...) are
    extended from the first group's. The network is ``pl_module.net`` (the zoo's modules), else the
    LightningModule itself.
    """

    def __init__(
        self, freeze_stages: int, unfreeze_at_epoch: int | None = None, unfreeze_lr_factor: float = 0.1
    ) -> None:
        super().__init__()
        if freeze_stages < -1:
            raise ValueError(f"freeze_stages must be -1 (all stages) or >= 0, got {freeze_stages}")
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
            raise ValueError(f"unfreeze_at_epoch must be >= 0 or None, got {unfreeze_at_epoch}")
        if unfreeze_lr_factor <= 0:
            raise ValueError(f"unfreeze_lr_factor must be > 0, got {unfreeze_lr_factor}")
        self.freeze_stages = freeze_stages
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.unfreeze_lr_factor = unfreeze_lr_factor
        self.frozen: list[nn.Module] = []
        self.unfrozen = False

    @staticmethod
    def _net(pl_module: pl.LightningModule) -> nn.Module:
        net = getattr(pl_module, "net", None)
        return net if isinstance(net, nn.Module) else pl_module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Fitting only: validating or testing (e.g. after fit) must not freeze the network again.
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        net = self._net(pl_module)
        self.frozen = stages(net)[: resolve_freeze_depth(net, self.freeze_stages)]
        self.unfrozen = False
        self.freeze(self.frozen, train_bn=False)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # calls finetune_function
        if not self.unfrozen:
            set_batchnorm_eval(self.frozen)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if self.unfrozen or self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return
        self.make_trainable(self.frozen)
        for module in self.frozen:
            module.train()
        if epoch > self.unfreeze_at_epoch:
            # Resumed from a checkpoint saved after the unfreeze: BaseFinetuning.on_fit_start has
            # restored the stages' parameter group, setup() had frozen them again.
            self.unfrozen = True
            return
        # Not BaseFinetuning.unfreeze_and_add_param_group: its check for parameters already in the
        # optimizer compares values (torch.equal), so it drops e.g. a fresh BatchNorm's all-ones
        # weight when the optimizer holds another all-ones tensor of that shape. Identity is meant.
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self.filter_params(self.frozen, train_bn=True) if id(p) not in in_optimizer]
        self.unfrozen = True
        if not params:
            return
        first = optimizer.param_groups[0]
        group: dict[str, Any] = {"params": params, "lr": first["lr"] * self.unfreeze_lr_factor}
        optimizer.add_param_group(group)
        new = optimizer.param_groups[-1]
        for key, value in first.items():  # scheduler state kept per group (initial_lr, max_lr, ...)
            if key not in new:
                new[key] = self._scaled(key, value)
        trainer = pl_module.trainer
        for config in trainer.lr_scheduler_configs:
            self._extend_scheduler(config.scheduler, optimizer, len(optimizer.param_groups) - 1)
        rank_zero_info(
            f"Epoch {epoch}: unfroze {len(self.frozen)} stages "
            f"({sum(p.numel() for p in params):,} parameters) at lr {group['lr']:.3g}"
        )

    def _scaled(self, name: str, value: Any) -> Any:
        if "lr" in name.lower() and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value * self.unfreeze_lr_factor
        return value

    def _extend_scheduler(self, scheduler: Any, optimizer: torch.optim.Optimizer, old_groups: int) -> None:
        for inner in getattr(scheduler, "_schedulers", []) or []:  # SequentialLR, ChainedScheduler
            self._extend_scheduler(inner, optimizer, old_groups)
        if getattr(scheduler, "optimizer", None) is not optimizer:
            return
        for name, value in list(vars(scheduler).items()):
            if (
                isinstance(value, list)
                and len(value) == old_groups
                and value
                and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
            ):
                value.append(self._scaled(name, value[0]))
