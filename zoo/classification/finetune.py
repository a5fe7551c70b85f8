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
parameter-group bookkeeping across restarts). Hand-written here: head detection and the stage rules,
which no library offers for arbitrary torchvision / timm / zoo networks.
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

from zoo.core.weights import LoadReport, load_weights

if TYPE_CHECKING:
    from zoo.core.weight_sources import ResolvedWeights

# Attribute names under which torchvision / timm / the zoo keep the classifier, in lookup order.
HEAD_ATTRIBUTES = ("fc", "classifier", "head")


# ---------------------------------------------------------------------------------------------
# The classifier head
# ---------------------------------------------------------------------------------------------


def _last_classifier_layer(module: nn.Module, prefix: str) -> tuple[str, nn.Module] | None:
    named = list(module.named_modules(prefix=prefix))
    for kind in (nn.Linear, nn.Conv2d):  # a Linear if any, else a final (1x1) convolution
        found = [(n, m) for n, m in named if isinstance(m, kind)]
        if found:
            return found[-1]
    return None


def find_head(net: nn.Module) -> tuple[str, nn.Module]:
    """``(qualified name, module)`` of the layer that outputs the class scores.

    The rule: inside the first of the attributes ``fc``, ``classifier``, ``head`` that the network
    has (torchvision's and timm's names), else in the whole network, the last ``nn.Linear``; a
    network without one classifies with a final convolution (SqueezeNet's ``classifier.1``, NiN's
    last 1x1 convolution), and the last ``nn.Conv2d`` is the head.
    """
    for attribute in HEAD_ATTRIBUTES:
        sub = getattr(net, attribute, None)
        if isinstance(sub, nn.Module):
            found = _last_classifier_layer(sub, attribute)
            if found is not None:
                return found
    found = _last_classifier_layer(net, "")
    if found is None:
        raise ValueError(f"{type(net).__name__} has no nn.Linear or nn.Conv2d layer: no classifier head.")
    return found


def auxiliary_heads(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The classifiers of auxiliary heads (GoogLeNet's ``aux1.fc2`` / ``aux2.fc2``, Inception v3's
    ``AuxLogits.fc``): the last classifier layer of each direct child whose name starts with ``aux``."""
    heads = []
    for name, child in net.named_children():
        if name.lower().startswith("aux") and child is not None:
            found = _last_classifier_layer(child, name)
            if found is not None:
                heads.append(found)
    return heads


def head_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The main head and any auxiliary heads: every layer whose shape follows ``num_classes``."""
    return [find_head(net), *auxiliary_heads(net)]


def head_state_keys(net: nn.Module) -> set[str]:
    """State-dict keys of the head modules (``fc.weight``, ``fc.bias``, ...)."""
    return {f"{name}.{key}" for name, module in head_modules(net) for key in module.state_dict()}


def _new_classifier_layer(old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(
            old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
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
        net, path, tolerant=() if strict_head else head_keys,
        hints={key: ("the classifier head ", fix) for key in head_keys},
        strict=strict, ignore=ignore, contents=contents,
    )


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------

# A layer of another type counts as a pooling when its class says ``ends_stage = True`` (LeNet-5's trainable
# subsampling): the networks declare it, this module knows no network.
POOLING_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
    nn.Identity,  # where the zoo's small-input rule removed a pooling: stage counts stay the same
)

def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_pooling(module: nn.Module) -> bool:
    return isinstance(module, POOLING_TYPES) or getattr(type(module), "ends_stage", False) is True


def _ends_stage(module: nn.Module) -> bool:
    """A pooling layer, or a block whose last layer is one (DenseNet's transitions)."""
    if _is_pooling(module):
        return True
    leaves = [m for m in module.modules() if not list(m.children())]
    last = leaves[-1] if leaves else module
    return last is not module and _is_pooling(last) and not isinstance(last, nn.Identity)


def _starts_stage(module: nn.Module) -> bool:
    """A block that downsamples with a strided convolution (MobileNet's stride-2 blocks)."""
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in module.modules())


def split_into_stages(layers: Sequence[nn.Module]) -> list[list[nn.Module]]:
    """Cut a sequence of layers into stages at its downsamplings: a stage ends after a pooling
    layer (or a block ending in one) and the parameter-free layers right after it (activations,
    dropout), and a new stage starts at a block with a strided convolution."""
    groups: list[list[nn.Module]] = [[]]
    cut_pending = False
    for layer in layers:
        if groups[-1] and (_starts_stage(layer) or (cut_pending and _has_parameters(layer))):
            groups.append([])
            cut_pending = False
        groups[-1].append(layer)
        if _ends_stage(layer):
            cut_pending = True
    return groups


def _without(modules: Sequence[nn.Module], excluded: Sequence[nn.Module]) -> list[nn.Module]:
    """``modules`` with the ``excluded`` modules removed, opening up any container that holds one."""
    out: list[nn.Module] = []
    for module in modules:
        if any(module is e for e in excluded):
            continue
        if any(m is e for m in module.modules() for e in excluded):
            out.extend(_without(list(module.children()), excluded))
        else:
            out.append(module)
    return out


def _as_stage(modules: list[nn.Module]) -> nn.Module:
    # A single module is its own stage (``stages(resnet)[1] is resnet.layer1``); several go in a
    # ModuleList, which is not registered on the network and changes nothing in it.
    return modules[0] if len(modules) == 1 else nn.ModuleList(modules)


def stages(net: nn.Module) -> list[nn.Module]:
    """The ordered stages of a network, input to output; the classifier head is never in one.

    Freezing counts in stages (:class:`FreezeUnfreeze`, ``ImageClassifier(freeze_stages=...)``).

    Rules, first match wins:

    1. A network with a ``stages()`` method: what it returns.
    2. ResNet-like (``layer1``, ``layer2``, ... children: torchvision's ResNets / ResNeXts, timm's
       SE-ResNets, the zoo's CIFAR ResNets): the stem (every child before ``layer1``: ``conv1``,
       ``bn1``, ``relu``, ``maxpool``), then ``layer1``, ``layer2``, ...
    3. A network with a ``stage_names`` attribute (names of its children, one tuple per stage): those
       groups (the zoo's GoogLeNet: the stem ``conv1`` ... ``maxpool2``, inception 3, 4 and 5 with the
       max-pool that follows each; the auxiliary heads are heads, not stages).
    4. A ``features`` ``nn.Sequential`` (VGG, AlexNet, DenseNet, MobileNet, SqueezeNet, NiN, the
       zoo's convnet and LeNet-5): cut into stages by :func:`split_into_stages`, i.e. at its
       poolings (VGG: its five blocks; DenseNet: the stem, then each dense block with its
       transition) and at its strided blocks (MobileNet: one stage per resolution).
    5. Any other network: its direct children (without the head) cut the same way.

    Layers inside a stage that hold the head (NiN's last mlpconv) are opened up and the head left
    out. Stages without parameters are dropped. Parameters in neither a stage nor the head (the
    hidden fully connected layers of VGG / AlexNet / MobileNetV3's classifier) are never frozen.
    """
    custom = getattr(net, "stages", None)
    if callable(custom) and not isinstance(custom, nn.Module):
        return list(custom())
    heads = [m for _, m in head_modules(net)]
    children = dict(net.named_children())
    if "layer1" in children:
        names = list(children)
        groups = [[children[n] for n in names[: names.index("layer1")]]]
        i = 1
        while f"layer{i}" in children:
            groups.append([children[f"layer{i}"]])
            i += 1
    elif isinstance(getattr(net, "stage_names", None), (tuple, list)):
        groups = [[children[n] for n in names] for names in net.stage_names]
    elif isinstance(getattr(net, "features", None), nn.Sequential):
        groups = split_into_stages(list(net.features))
    else:
        layers = [m for m in children.values() if m is not None]
        groups = split_into_stages(_without(layers, heads))
    groups = [_without(group, heads) for group in groups]
    return [_as_stage(g) for g in groups if g and any(_has_parameters(m) for m in g)]


def describe_stages(net: nn.Module) -> list[str]:
    """Readable names of :func:`stages` (``["conv1+bn1+relu+maxpool", "layer1", ...]``)."""
    names = {id(m): n for n, m in net.named_modules()}
    out = []
    for stage in stages(net):
        members = list(stage) if isinstance(stage, nn.ModuleList) and id(stage) not in names else [stage]
        out.append(_join_names([names.get(id(m), type(m).__name__) for m in members]))
    return out


def _join_names(names: list[str]) -> str:
    """``features.0 ... features.3`` -> ``features[0:4]``; other lists joined with ``+``."""
    parents = {n.rpartition(".")[0] for n in names}
    indices = [n.rpartition(".")[2] for n in names]
    if len(names) > 2 and len(parents) == 1 and all(i.isdigit() for i in indices):
        first, last = int(indices[0]), int(indices[-1])
        if [int(i) for i in indices] == list(range(first, last + 1)):
            return f"{parents.pop()}[{first}:{last + 1}]"
    return "+".join(names)


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

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer
    ) -> None:
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
