"""A network's classifier head and its stages, for any torchvision / timm / zoo network: family-neutral.

- :func:`find_head`, :func:`auxiliary_heads`, :func:`head_modules`, :func:`head_state_keys`: the layers whose shape
  follows ``num_classes`` (what a fine-tuning replaces, what a weights file of another class count may lack).
- :func:`stages`: a network's ordered stages, input to output, cut at its downsamplings
  (:func:`split_into_stages`); :func:`describe_stages` names them.

Two families read them: classification freezes in stages (``zoo.classification.finetune``, which re-exports these
names), segmentation taps a classifier's stages as an encoder (the FCN's pool3 / pool4 / pool5,
``zoo.segmentation.models.fcn``). No library offers head detection or stage rules for arbitrary networks, so they
are hand-written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

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


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------

# A layer of another type counts as a pooling when its class says ``ends_stage = True`` (LeNet-5's trainable
# subsampling): the networks declare it, this module knows no network.
POOLING_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
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

    Freezing counts in stages (``zoo.classification.finetune``); the FCN taps them (``zoo.segmentation.models.fcn``).

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
