"""Layers of a network: lookup by name, activations, filters, layer table, receptive fields,
top-activating patches, and the input checks every interpretation method shares.

Hand-written (captum has no layer lookup, truncated forward or receptive-field arithmetic).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.classification.summary import Summary, summarize
from zoo.core.errors import ZooUserError


class UnknownLayerError(ZooUserError, KeyError):
    """A layer name the network does not have; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0])


def network(model: nn.Module) -> nn.Module:
    """The plain network inside ``model``: an :class:`~zoo.classification.ImageClassifier`'s ``net``
    (so layer names are those of ``zoo.classification.summary``: ``features.0``), else ``model``."""
    from zoo.classification.module import ImageClassifier

    return model.net if isinstance(model, ImageClassifier) else model


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule of the network, in definition order."""
    return [name for name, _ in network(model).named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an :class:`UnknownLayerError` listing the available names otherwise."""
    modules = dict(network(model).named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownLayerError(
        f"Unknown layer {name!r} in {type(network(model)).__name__}.{hint} Available layers: {', '.join(names)}"
    )


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """Name and module of the network's first ``nn.Conv2d``."""
    for name, module in network(model).named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(network(model)).__name__} has no nn.Conv2d layer")


# -- input checks ------------------------------------------------------------------------------------
def expected_channels(model: nn.Module) -> int | None:
    """Input channels of the first convolution (None for a network without one)."""
    try:
        return first_conv(model)[1].in_channels
    except ValueError:
        return None


def check_images(model: nn.Module, images: torch.Tensor, try_forward: bool = False) -> torch.Tensor:
    """``images`` as a float ``(N, C, H, W)`` batch that fits ``model``, else a ValueError saying why.

    ``try_forward`` runs the network once on the first image: an image size that the network
    cannot take (too small for its pooling, a fixed-size classifier) fails there with the fix.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (C, H, W); got shape {tuple(images.shape)}")
    channels = expected_channels(model)
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"images have {images.shape[1]} channel(s) but {type(network(model)).__name__} expects {channels} "
            f"(its first convolution's in_channels). Fix: convert the images "
            f"({'to grayscale' if channels == 1 else 'to RGB' if channels == 3 else f'to {channels} channels'})."
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (normalized as in training); got {images.dtype}")
    if try_forward:
        try:
            with torch.no_grad(), eval_mode(model):
                model(images[:1])
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} do not fit {type(network(model)).__name__}: "
                f"{str(err).splitlines()[0]} Fix: resize the images to the training size "
                "(or use the convolutional part only: zoo.interpret.activations)."
            ) from err
    return images


def num_classes(model: nn.Module) -> int | None:
    """Number of classes: ``model.num_classes`` if it has one, else the last Linear's out_features."""
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    linears = [m for m in network(model).modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def check_target(model: nn.Module, target: int | Sequence[int] | torch.Tensor, n: int) -> torch.Tensor:
    """Target classes as a ``(n,)`` long tensor; a ValueError when one is out of range."""
    target = torch.as_tensor(target, dtype=torch.long).flatten()
    if target.numel() == 1:
        target = target.expand(n).clone()
    if target.numel() != n:
        raise ValueError(f"{target.numel()} targets given for {n} images")
    classes = num_classes(model)
    if classes is not None and (int(target.min()) < 0 or int(target.max()) >= classes):
        bad = target[(target < 0) | (target >= classes)][0].item()
        raise ValueError(f"target class {bad} is out of range: the model has {classes} classes (0..{classes - 1})")
    return target


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode for the block (batch-norm statistics, no dropout), the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def no_inplace(model: nn.Module) -> Iterator[nn.Module]:
    """Turn ``inplace`` off on every module for the block (torchvision's ``ReLU(inplace=True)``).

    An in-place ReLU overwrites its input, which breaks forward hooks that keep a layer's output
    and captum's guided-backprop / Grad-CAM hooks; the flags are restored afterwards, so the model
    is not copied.
    """
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    try:
        yield model
    finally:
        for m in changed:
            m.inplace = True


# -- activations ------------------------------------------------------------------------------------
class _StopForward(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by a hook once every requested layer has run: the rest of the network is skipped."""


def activations(
    model: nn.Module, images: torch.Tensor, layers: str | Sequence[str], stop: bool = True, grad: bool = False
) -> dict[str, torch.Tensor]:
    """The outputs of the named layers for ``images`` (one forward pass with hooks).

    With ``stop`` the forward pass ends after the last requested layer has run, so an image larger
    than the training size goes through the convolutional part even when the classifier head
    would reject it (a fixed-size Linear layer, a size check in ``forward``). With ``grad`` the
    outputs stay in the autograd graph (for visualization by optimisation).
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    modules = {name: get_layer(model, name) for name in names}
    net = network(model)
    out: dict[str, torch.Tensor] = {}

    def hook(name: str):  # noqa: ANN202
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out[name] = output if grad else output.detach()
            if stop and len(out) == len(names):
                raise _StopForward

        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        with torch.set_grad_enabled(grad or torch.is_grad_enabled()), no_inplace(net):
            try:
                net(images)
            except _StopForward:
                pass
            except (RuntimeError, ValueError) as err:
                if len(out) < len(names):
                    raise ValueError(
                        f"The forward pass failed before reaching layer(s) "
                        f"{', '.join(n for n in names if n not in out)} for input {tuple(images.shape)}: "
                        f"{str(err).splitlines()[0]}"
                    ) from err
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"layer(s) {', '.join(missing)} were not run by the forward pass (unused branch?)")
    return out


def first_layer_filters(model: nn.Module) -> torch.Tensor:
    """The first convolution's weights ``(out_channels, in_channels, kh, kw)``, detached: what
    the first layer looks for, shown as images (Krizhevsky et al. 2012, fig. 3)."""
    return first_conv(model)[1].weight.detach().clone()


def layer_table(model: nn.Module, input_size: Sequence[int] = (1, 1, 28, 28), depth: int | None = None) -> Summary:
    """The "analyze network" table (name, type, activation shape, learnables) of the network, from
    :func:`zoo.classification.summary.summarize` (torchinfo)."""
    net = network(model)
    with eval_mode(net):
        return summarize(net, input_size, depth=depth)


def executed_layers(model: nn.Module, input_size: Sequence[int]) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Leaf modules in the order the forward pass runs them, with their output shapes."""
    net = network(model)
    order: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    handles = []
    for name, module in net.named_modules():
        if name and not list(module.children()):
            def fn(m: nn.Module, i: tuple, o: torch.Tensor, name: str = name) -> None:
                if isinstance(o, torch.Tensor):
                    order.append((name, m, tuple(o.shape)))
            handles.append(module.register_forward_hook(fn))
    try:
        with torch.no_grad(), eval_mode(net), no_inplace(net):
            net(torch.zeros(*input_size))
    finally:
        for h in handles:
            h.remove()
    return order


# -- receptive field --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's units, per axis (rows, columns).

    The unit at output position ``i`` sees input pixels ``start + i * jump - (size - 1) / 2 ...
    start + i * jump + (size - 1) / 2`` (``start``: centre of unit 0, in input pixels).
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]

    def box(self, i: int, j: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Input box ``(top, bottom, left, right)`` (bottom/right exclusive) of unit ``(i, j)``, unclipped."""
        top = round(self.start[0] + i * self.jump[0] - (self.size[0] - 1) / 2)
        left = round(self.start[1] + j * self.jump[1] - (self.size[1] - 1) / 2)
        return top, top + self.size[0], left, left + self.size[1]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def receptive_field(model: nn.Module, layer: str, input_size: Sequence[int] = (1, 1, 28, 28)) -> ReceptiveField:
    """Receptive field of ``layer``'s units, from the kernel size, stride, padding and dilation of
    every convolution and pooling layer run before it (Araujo, Norris & Sim, "Computing receptive
    fields of convolutional neural networks", Distill 2019, eq. 1-2 and the "start" recursion):
    ``size += (k - 1) * d * jump``, ``start += ((k - 1) / 2 * d - p) * jump``, ``jump *= s``.

    Exact for feed-forward chains (LeNet, the zoo's convnet, AlexNet, VGG). The layers are taken in
    execution order, so for branching networks (ResNet shortcuts) the result counts every branch in
    sequence and over-estimates: check it there with an input gradient.
    """
    get_layer(model, layer)  # the unknown-name error first
    size, jump, start = [1, 1], [1, 1], [0.0, 0.0]
    order = executed_layers(model, input_size)
    names = [n for n, _, _ in order]
    inside = [n for n in names if n == layer or n.startswith(layer + ".")]
    if not inside:
        raise ValueError(f"layer {layer!r} is not run by the forward pass")
    last = max(names.index(n) for n in inside)
    for _name, module, _shape in order[: last + 1]:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)
            d = _pair(getattr(module, "dilation", 1))
            for a in range(2):
                start[a] += ((k[a] - 1) / 2 * d[a] - p[a]) * jump[a]
                size[a] += (k[a] - 1) * d[a] * jump[a]
                jump[a] *= s[a]
    return ReceptiveField((size[0], size[1]), (jump[0], jump[1]), (start[0], start[1]))


# -- top-activating patches (Zeiler & Fergus 2014) --------------------------------------------------------
@dataclass
class TopPatches:
    """The ``k`` dataset images that activate one channel most, and where."""

    layer: str
    channel: int
    indices: torch.Tensor  # (k,) index into the images given
    values: torch.Tensor  # (k,) the channel's maximal activation in that image
    positions: torch.Tensor  # (k, 2) unit (row, column) of the maximum in the activation map
    boxes: torch.Tensor  # (k, 4) receptive-field box (top, bottom, left, right) in input pixels, unclipped
    patches: torch.Tensor  # (k, C, rf_h, rf_w) receptive-field crops, padded with the image minimum
    receptive_field: ReceptiveField


def top_activating_patches(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    channel: int,
    k: int = 9,
    batch_size: int = 256,
) -> TopPatches:
    """For one channel of ``layer``, the ``k`` images of ``images`` whose strongest unit in that
    channel is strongest, and that unit's receptive-field patch (Zeiler & Fergus, "Visualizing and
    understanding convolutional networks", ECCV 2014, sec. 4 and fig. 2: the top-9 activations of a
    feature map across the data set, with the image patches that cause them).
    """
    images = check_images(model, images)
    n = len(images)
    rf = receptive_field(model, layer, (1, *images.shape[1:]))
    best_vals, best_pos = [], []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, n, batch_size):
            act = activations(model, images[start : start + batch_size], layer)[layer]
            if act.ndim != 4:
                raise ValueError(f"layer {layer!r} gives {tuple(act.shape)}, not a (N, C, H, W) activation map")
            if not 0 <= channel < act.shape[1]:
                raise ValueError(f"channel {channel} is out of range: layer {layer!r} has {act.shape[1]} channels")
            flat = act[:, channel].flatten(1)
            val, arg = flat.max(dim=1)
            best_vals.append(val)
            best_pos.append(torch.stack([arg // act.shape[3], arg % act.shape[3]], dim=1))
    values, positions = torch.cat(best_vals), torch.cat(best_pos)
    top = values.argsort(descending=True)[: min(k, n)]
    fill = float(images.min())
    patches, boxes = [], []
    for idx in top.tolist():
        t, b, left, r = rf.box(int(positions[idx, 0]), int(positions[idx, 1]), *images.shape[-2:])
        boxes.append((t, b, left, r))
        h, w = images.shape[-2:]
        padded = F.pad(images[idx], (max(0, -left), max(0, r - w), max(0, -t), max(0, b - h)), value=fill)
        patches.append(padded[:, t + max(0, -t) : b + max(0, -t), left + max(0, -left) : r + max(0, -left)])
    return TopPatches(layer, channel, top, values[top], positions[top], torch.tensor(boxes),
                      torch.stack(patches), rf)
