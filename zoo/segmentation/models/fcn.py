"""Fully convolutional networks: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015. Hand-written FCN-32s, FCN-16s and FCN-8s over any classifier of the registry, and
torchvision's ``fcn_resnet50``.

**The backbone** is a classification network built through the registry (``backbone``: a registry name,
``backbone_kwargs``: its builder's arguments, ``backbone_weights``: its weights, through
:func:`zoo.core.weight_sources.resolve_weights` and :func:`zoo.core.weights.load_weights`); its stages
(:func:`zoo.core.stages.stages`), run in order, are the encoder. Its classifier head is dropped. The taps are the
last stage at output stride 32 ("pool5"), 16 ("pool4") and 8 ("pool3"), found by running the stages once on a
small probe input; a backbone without them (a CIFAR ResNet, whose stride stops at 4) is refused with the strides it
has.

**Sec. 3.1, convolutionalization**: a VGG's (or AlexNet's) hidden fully connected layers become convolutions, fc6
a ``7x7`` (AlexNet ``6x6``: the classifier's pooled size) valid convolution with 4096 outputs and fc7 a ``1x1`` one,
each followed by ReLU and dropout 0.5. ``fc_width`` (4096, the paper's) sets their width so that a CPU can train the
network; at the classifier's own width their weights are the classifier's, reshaped (the paper's transfer of the
ImageNet classifier). Table 1: FCN-VGG16 has 134M parameters (with 21 classes and the fixed final upsampling, as
here: 134.3M). Other backbones (ResNets, ...) have no hidden fully connected layers: the score layer reads their last
stage directly.

**Sec. 4.1-4.2, fig. 3, the skip architecture**: a ``1x1`` score layer (``score_fr``) turns the last features into
class scores at stride 32. FCN-32s upsamples them 32x. FCN-16s upsamples them 2x (``upscore2``, a transposed
convolution initialised to bilinear interpolation and learned), adds a ``1x1`` score layer on pool4
(``score_pool4``, zero-initialised as in the paper, so training starts from the coarser net's output) and upsamples
the sum 16x. FCN-8s adds pool3 the same way (``upscore_pool4``, ``score_pool3``) and upsamples 8x. The final
upsampling is a transposed convolution of kernel ``2f`` and stride ``f`` fixed to bilinear interpolation, as sec.
4.3 ("Dense Prediction": final layer deconvolutional filters fixed, intermediate ones initialised to bilinear and
learned); ``learn_final_upsampling=True`` makes it a learned ``num_classes x num_classes`` transposed convolution
from the same start.

**Any input size, output = input size.** Two geometries:

- *The paper's* (backbones whose stages hold only convolutions, max-poolings, ReLU, batch norm and dropout: VGG,
  AlexNet): the first convolution pads by 100 pixels (the reference Caffe nets' ``pad: 100`` on conv1_1) and the
  max-poolings round up (``ceil_mode``, as Caffe's pooling), so that the valid fc6 has an input for every image
  size and the upsampled map covers the image; the score maps are then cropped as Caffe's ``Crop`` layer does, at
  offsets computed from each layer's coordinate map (input coordinate ``= stride * y + (kernel - 1) * dilation / 2
  - padding``): for VGG-16 the reference nets' 5 (pool4), 9 (pool3) and 19 / 27 / 31 (FCN-32s / 16s / 8s).
- *Padded backbones* (ResNets and the rest): the image is zero-padded at the bottom and right to a multiple of 32,
  the upsamplings are padded (``padding = f / 2``: exactly ``f`` times the size, the half-pixel alignment of
  bilinear interpolation, as torchvision's FCN), and the output is cropped back to the image.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.core.registry import ModelEntry, get_model_entry, register_model
from zoo.core.stages import head_state_keys, stages
from zoo.core.weight_sources import resolve_weights
from zoo.core.weights import LoadReport, load_weights

log = logging.getLogger(__name__)

BACKBONE_FAMILY = "classification"
VARIANTS = (32, 16, 8)
TAP_STRIDES = (32, 16, 8)  # pool5, pool4, pool3
PAPER_PADDING = 100  # conv1_1's padding in the reference nets (voc-fcn*/train.prototxt)
PROBE_SIZE = 64
# Layers whose coordinate maps the paper's geometry computes (and that the Caffe reference nets are made of).
PLAIN_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Identity)


def bilinear_kernel(size: int) -> torch.Tensor:
    """The ``size x size`` bilinear interpolation kernel of a transposed convolution with stride ``(size + 1) // 2``
    (the reference implementation's ``upsample_filt``, surgery.py)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    row = 1 - (og - center).abs() / factor
    return (row[:, None] * row[None, :]).float()


def bilinear_transposed_conv(channels: int, factor: int, padding: int = 0) -> nn.ConvTranspose2d:
    """A learnable ``channels -> channels`` transposed convolution of kernel ``2 * factor`` and stride ``factor``
    initialised to bilinear upsampling of each channel (the reference nets' deconvolutions, no bias)."""
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=padding, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        kernel = bilinear_kernel(2 * factor)
        for c in range(channels):
            layer.weight[c, c] = kernel
    return layer


class BilinearUpsampling(nn.Module):
    """Fixed bilinear upsampling by ``factor``: the transposed convolution of :func:`bilinear_transposed_conv` with
    its weight frozen, applied per channel (a buffer, no parameters; the same output)."""

    def __init__(self, channels: int, factor: int, padding: int = 0) -> None:
        super().__init__()
        self.factor, self.padding, self.channels = factor, padding, channels
        kernel = bilinear_kernel(2 * factor).expand(channels, 1, 2 * factor, 2 * factor).contiguous()
        self.register_buffer("weight", kernel, persistent=False)  # a function of the arguments, not learned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, stride=self.factor, padding=self.padding, groups=self.channels)


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _crop(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    return x[..., offset : offset + height, offset : offset + width]


class _Map:
    """The affine coordinate map ``input = scale * y + shift`` from a layer's output to the image (Caffe's
    coord_map, what its ``Crop`` layer offsets come from); exact arithmetic with fractions."""

    def __init__(self, scale: Fraction = Fraction(1), shift: Fraction = Fraction(0)) -> None:
        self.scale, self.shift = scale, shift

    def through(self, stride: int, kernel: int, padding: int, dilation: int = 1) -> _Map:
        """The map after a convolution / pooling of these parameters."""
        return _Map(self.scale * stride, self.scale * Fraction((kernel - 1) * dilation, 2) - self.scale * padding
                    + self.shift)  # fmt: skip

    def up(self, stride: int, kernel: int, padding: int) -> _Map:
        """The map after a transposed convolution of these parameters."""
        return _Map(self.scale / stride, self.shift + self.scale * (padding - Fraction(kernel - 1, 2)) / stride)


def _pair(value: int | Sequence[int]) -> int:
    values = (value, value) if isinstance(value, int) else tuple(value)
    if values[0] != values[1]:
        raise ValueError(f"the paper's FCN geometry needs square kernels, strides and paddings; got {values}")
    return int(values[0])


def _layer_map(coords: _Map, layer: nn.Module) -> _Map:
    if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
        padding = layer.padding
        if isinstance(padding, str):  # "same" has no fixed coordinate map; "valid" is 0
            if padding != "valid":
                raise ValueError(f"the paper's FCN geometry needs numeric paddings, got {padding!r} in {layer}")
            padding = 0
        return coords.through(_pair(layer.stride), _pair(layer.kernel_size), _pair(padding), _pair(layer.dilation))
    return coords


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not list(m.children())]


def _offset(skip: _Map, up: _Map, where: str) -> int:
    """The crop offset of the ``skip`` map that aligns it with ``up`` (Caffe's Crop layer)."""
    offset = (up.shift - skip.shift) / skip.scale
    if skip.scale != up.scale or offset.denominator != 1 or offset < 0:
        raise ValueError(f"the {where} of this backbone cannot be aligned by cropping (offset {offset}).")
    return int(offset)


class FCN(nn.Module):
    """FCN-32s / 16s / 8s over the stages of a classifier (see the module docstring; Long et al. 2015, fig. 3).

    Args:
        encoder: the backbone's stages, in order; their outputs at ``taps`` are pool5, pool4, pool3.
        taps: indices into ``encoder`` of the pool5, pool4 and pool3 outputs (as many as the variant needs).
        tap_channels: their channels.
        num_classes: score channels.
        variant: 32, 16 or 8 (FCN-32s, -16s, -8s).
        head: the convolutionalized fc6 / fc7 (``None``: score the last stage directly).
        head_channels: channels out of ``head`` (the last stage's without one).
        paper_geometry: the paper's padding and crops (``True``; the encoder's first convolution must already pad
            by 100 and its poolings round up) or the padded-backbone one (see the module docstring).
        head_kernel: fc6's kernel (the paper's geometry only: its coordinate map).
        learn_final_upsampling: a learned final transposed convolution instead of fixed bilinear interpolation.
    """

    def __init__(
        self,
        encoder: Sequence[nn.Module],
        taps: Sequence[int],
        tap_channels: Sequence[int],
        num_classes: int,
        variant: int = 32,
        head: nn.Module | None = None,
        head_channels: int | None = None,
        paper_geometry: bool = True,
        head_kernel: int = 7,
        learn_final_upsampling: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS} (FCN-32s, -16s, -8s), got {variant}")
        skips = VARIANTS.index(variant)  # 0, 1 or 2 skip layers
        if len(taps) < skips + 1:
            raise ValueError(f"FCN-{variant}s needs {skips + 1} taps (pool5, pool4, pool3), got {list(taps)}")
        self.variant = variant
        self.paper_geometry = paper_geometry
        self.taps = [int(t) for t in taps[: skips + 1]]
        self.encoder = nn.ModuleList(list(encoder)[: self.taps[0] + 1])
        self.head = head if head is not None else nn.Identity()
        self.score_fr = nn.Conv2d(head_channels or tap_channels[0], num_classes, 1)
        pad2 = 0 if paper_geometry else 1
        # The skip layers, coarse to fine: score_pool4 / upscore2, then score_pool3 / upscore_pool4.
        self.score_skips = nn.ModuleList(_zero_conv(tap_channels[i], num_classes) for i in range(1, skips + 1))
        self.up_skips = nn.ModuleList(bilinear_transposed_conv(num_classes, 2, pad2) for _ in range(skips))
        final_pad = 0 if paper_geometry else variant // 2
        self.upscore: nn.Module = (
            bilinear_transposed_conv(num_classes, variant, final_pad)
            if learn_final_upsampling
            else BilinearUpsampling(num_classes, variant, final_pad)
        )
        self.skip_offsets: list[int] = [0] * skips
        self.final_offset = 0
        if paper_geometry:
            self.skip_offsets, self.final_offset = self._paper_offsets(head_kernel)

    def _paper_offsets(self, head_kernel: int) -> tuple[list[int], int]:
        """Caffe's crop offsets from the coordinate maps of every layer (for VGG-16: 5, 9 and 19 / 27 / 31)."""
        coords, maps = _Map(), {}
        for index, stage in enumerate(self.encoder):
            for layer in _leaves(stage):
                coords = _layer_map(coords, layer)
            maps[index] = coords
        coords = maps[self.taps[0]].through(1, head_kernel, 0)  # fc6, valid; fc7 and the score layers are 1x1
        offsets = []
        for i, tap in enumerate(self.taps[1:]):
            coords = coords.up(2, 4, 0)
            offsets.append(_offset(maps[tap], coords, f"pool{4 - i} skip"))
        coords = coords.up(self.variant, 2 * self.variant, 0)
        return offsets, _offset(coords, _Map(), "final upsampling")  # the output is cropped to the image

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` of images ``(N, C, H, W)`` of any size."""
        height, width = images.shape[-2:]
        x = images
        if not self.paper_geometry:
            x = F.pad(x, (0, (-width) % 32, 0, (-height) % 32))
        features = {}
        for index, stage in enumerate(self.encoder):
            x = stage(x)
            features[index] = x
        score = self.score_fr(self.head(x))
        for score_skip, up, tap, offset in zip(
            self.score_skips, self.up_skips, self.taps[1:], self.skip_offsets, strict=True
        ):
            score = up(score)
            skip = score_skip(features[tap])
            h = min(score.shape[-2], skip.shape[-2] - offset)
            w = min(score.shape[-1], skip.shape[-1] - offset)
            score = score[..., :h, :w] + _crop(skip, offset, h, w)
        return _crop(self.upscore(score), self.final_offset, height, width)


# ---------------------------------------------------------------------------------------------
# Building an FCN over a registered classifier
# ---------------------------------------------------------------------------------------------


def backbone_entry(name: str) -> ModelEntry:
    """The registry entry of the classifier ``name``.

    The registry holds a family's networks once that family's ``models`` package is imported; it is imported here
    by name (as ``zoo.load_families`` does), so that segmentation depends on the registry, not on the
    classification code (the layer rule of docs/ARCHITECTURE.md).
    """
    importlib.import_module(f"zoo.{BACKBONE_FAMILY}.models")
    return get_model_entry(name, family=BACKBONE_FAMILY)


def build_backbone(
    name: str, in_channels: int = 3, backbone_kwargs: dict[str, Any] | None = None, weights: str | None = None
) -> nn.Module:
    """The classifier ``name`` of the registry, with ``weights`` (a file, URL or library name) loaded; its head
    keeps its initialisation where the file's has another number of classes."""
    entry = backbone_entry(name)
    kwargs = dict(backbone_kwargs or {})
    if "in_channels" in kwargs:
        raise ValueError("backbone_kwargs must not set in_channels: it is an argument of the FCN itself.")
    if "in_channels" in entry.parameters:
        kwargs["in_channels"] = in_channels
    elif in_channels != 3:
        raise ValueError(f"The classifier {name!r} takes no in_channels (RGB only). Fix: in_channels=3.")
    net = entry.builder(**kwargs)
    if weights is not None:
        library = entry.source if entry.source in ("torchvision", "timm") else None
        resolved = resolve_weights(weights, network=name, library=library)  # type: ignore[arg-type]
        report = load_weights(net, resolved, tolerant=head_state_keys(net))
        log.info("FCN backbone %s: %s", name, report)
    return net


def _as_module(stage: nn.Module) -> nn.Module:
    # stages() groups several modules in an unregistered ModuleList: a Sequential runs them in order
    return nn.Sequential(*stage) if isinstance(stage, nn.ModuleList) else stage


def _is_plain(modules: Sequence[nn.Module]) -> bool:
    return all(isinstance(leaf, PLAIN_LAYERS) for m in modules for leaf in _leaves(m))


def _probe(encoder: Sequence[nn.Module], in_channels: int) -> list[tuple[int, int]]:
    """``(output stride, channels)`` of every stage, from one pass over a ``PROBE_SIZE`` square of zeros."""
    device = next((p.device for m in encoder for p in m.parameters()), torch.device("cpu"))
    x = torch.zeros(1, in_channels, PROBE_SIZE, PROBE_SIZE, device=device)
    out = []
    with torch.no_grad():
        for stage in encoder:
            x = stage(x)
            out.append((round(PROBE_SIZE / x.shape[-1]), int(x.shape[1])))
    return out


def _convolutionalized(classifier: nn.Module, in_channels: int, kernel: int, width: int, dropout: float) -> nn.Module:
    """fc6 (``kernel x kernel``, valid) and fc7 (``1x1``) with ReLU and dropout (sec. 3.1); the classifier's own
    hidden fully connected layers, reshaped, when they have these shapes."""
    fc6 = nn.Conv2d(in_channels, width, kernel)
    fc7 = nn.Conv2d(width, width, 1)
    linears = [m for m in getattr(classifier, "classifier", nn.Sequential()).modules() if isinstance(m, nn.Linear)]
    fits = (
        len(linears) >= 3
        and linears[0].weight.shape == (width, in_channels * kernel * kernel)
        and linears[1].weight.shape == (width, width)
    )
    with torch.no_grad():
        for conv, linear in zip((fc6, fc7), linears[:2] if fits else (None, None), strict=True):
            if linear is not None:
                conv.weight.copy_(linear.weight.view_as(conv.weight))
                conv.bias.copy_(linear.bias)
            else:  # torchvision's VGG initialisation of those layers
                nn.init.normal_(conv.weight, 0, 0.01)
                nn.init.zeros_(conv.bias)
    return nn.Sequential(
        fc6, nn.ReLU(inplace=True), nn.Dropout(dropout), fc7, nn.ReLU(inplace=True), nn.Dropout(dropout)
    )


def build_fcn(
    variant: int,
    num_classes: int = 21,
    in_channels: int = 3,
    backbone: str = "vgg16",
    backbone_kwargs: dict[str, Any] | None = None,
    backbone_weights: str | None = None,
    fc_width: int = 4096,
    dropout: float = 0.5,
    learn_final_upsampling: bool = False,
) -> FCN:
    """FCN-``variant``s over the registered classifier ``backbone`` (see the module docstring)."""
    classifier = build_backbone(backbone, in_channels, backbone_kwargs, backbone_weights)
    encoder = [_as_module(s) for s in stages(classifier)]
    found = _probe(encoder, in_channels)
    taps, channels = [], []
    for stride in TAP_STRIDES[: VARIANTS.index(variant) + 1]:
        at = [i for i, (s, _) in enumerate(found) if s == stride]
        if not at:
            raise ValueError(
                f"FCN-{variant}s needs the backbone's features at output stride {stride}; the stages of {backbone} "
                f"have strides {[s for s, _ in found]} (a {PROBE_SIZE}x{PROBE_SIZE} probe). Fix: choose a backbone "
                "that downsamples 32 times (vgg16, resnet18, ...), without small_input."
            )
        taps.append(at[-1])
        channels.append(found[at[-1]][1])
    used = encoder[: taps[0] + 1]
    paper = _is_plain(used)
    head, head_channels, kernel = None, None, 7
    if paper:
        first = next(m for stage in used for m in _leaves(stage) if isinstance(m, nn.Conv2d))
        first.padding = (PAPER_PADDING, PAPER_PADDING)  # conv1_1's "pad: 100" (instead of 1) in the reference nets
        for leaf in (m for stage in used for m in _leaves(stage)):
            if isinstance(leaf, nn.MaxPool2d):
                leaf.ceil_mode = True  # Caffe's pooling rounds up
        pooled = getattr(classifier, "avgpool", None)
        size = pooled.output_size if isinstance(pooled, nn.AdaptiveAvgPool2d) else 7
        kernel = int(size if isinstance(size, int) else size[0])  # type: ignore[index]
        head = _convolutionalized(classifier, channels[0], kernel, fc_width, dropout)
        head_channels = fc_width
    return FCN(used, taps, channels, num_classes, variant, head, head_channels, paper, kernel, learn_final_upsampling)


def _fcn_builder(variant: int) -> Any:
    def builder(
        num_classes: int = 21,
        in_channels: int = 3,
        backbone: str = "vgg16",
        backbone_kwargs: dict[str, Any] | None = None,
        backbone_weights: str | None = None,
        fc_width: int = 4096,
        dropout: float = 0.5,
        learn_final_upsampling: bool = False,
    ) -> FCN:
        return build_fcn(
            variant, num_classes, in_channels, backbone, backbone_kwargs, backbone_weights, fc_width, dropout,
            learn_final_upsampling,
        )  # fmt: skip

    builder.__name__ = builder.__qualname__ = f"fcn{variant}s"
    builder.__doc__ = f"""FCN-{variant}s (Long et al. 2015, sec. 4.2, fig. 3) over the registered classifier
    ``backbone``.

    Args:
        num_classes: classes (21 on PASCAL VOC: 20 and background).
        in_channels: image channels (the backbone's first convolution takes them).
        backbone: a classification network of the registry (``vgg16``: the paper's best, table 1).
        backbone_kwargs: its builder's arguments (not ``in_channels``).
        backbone_weights: its weights (a file, a URL, ``torchvision:IMAGENET1K_V1``, ...); the classifier head is
            dropped, the hidden fully connected layers of VGG become fc6 / fc7 at ``fc_width=4096``.
        fc_width: outputs of fc6 and fc7 (4096 in the paper; the paper's geometry only).
        dropout: after fc6 and fc7 (0.5 in the paper).
        learn_final_upsampling: learn the final {variant}x upsampling (fixed bilinear in the paper, sec. 4.3).
    """
    return register_model("segmentation", f"fcn{variant}s")(builder)


fcn32s = _fcn_builder(32)
fcn16s = _fcn_builder(16)
fcn8s = _fcn_builder(8)


# ---------------------------------------------------------------------------------------------
# torchvision's FCN-ResNet50
# ---------------------------------------------------------------------------------------------


class TorchvisionFCN(nn.Module):
    """torchvision's ``FCN`` returning plain logits (its ``"out"``); in training mode with the auxiliary classifier
    on (``aux_weight > 0``), ``(logits, aux_logits)``, which :class:`~zoo.segmentation.SemanticSegmenter` weighs."""

    def __init__(self, model: nn.Module, aux_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.aux_weight = float(aux_weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        if self.training and "aux" in out:
            return out["out"], out["aux"]
        return out["out"]


@register_model("segmentation", "fcn_resnet50", source="torchvision")
def fcn_resnet50(
    num_classes: int = 21,
    in_channels: int = 3,
    weights: str | None = None,
    backbone_weights: str | None = None,
    aux_weight: float = 0.0,
) -> TorchvisionFCN:
    """torchvision's FCN-ResNet50 (``torchvision.models.segmentation.fcn_resnet50``): a dilated ResNet-50 (output
    stride 8) with torchvision's FCN head (3x3 conv, BN, ReLU, dropout, 1x1) and bilinear upsampling; not the
    paper's VGG network (that is ``fcn8s``).

    Args:
        num_classes: classes (21: torchvision's weights are trained on COCO with the VOC classes).
        in_channels: image channels (``!= 3``: a fresh first convolution, which no weights file fills).
        weights: the whole network's weights (``torchvision:COCO_WITH_VOC_LABELS_V1``, a file, a URL); the final
            layers of the heads stay fresh where the file has another number of classes.
        backbone_weights: the ResNet-50's (``torchvision:ResNet50_Weights.IMAGENET1K_V1``, a file, a URL).
        aux_weight: weight of the auxiliary loss on layer3 (torchvision's reference training: 0.5); 0, the default,
            builds no auxiliary classifier.
    """
    from torchvision.models.segmentation import fcn_resnet50 as tv_fcn_resnet50

    model = tv_fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_weight > 0)
    fresh_conv = ()
    if in_channels != 3:
        model.backbone.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        fresh_conv = ("backbone.conv1.weight", "conv1.weight")
    reports: list[LoadReport] = []
    if backbone_weights is not None:
        resolved = resolve_weights(backbone_weights, network="resnet50", library="torchvision")
        reports.append(load_weights(model.backbone, resolved, ignore=("fc.*", *fresh_conv)))
    if weights is not None:
        resolved = resolve_weights(weights, network="fcn_resnet50", library="torchvision")
        class_layers = [k for k in model.state_dict() if k.startswith(("classifier.4.", "aux_classifier.4."))]
        ignore = (*fresh_conv, *(() if aux_weight > 0 else ("aux_classifier.*",)))
        reports.append(load_weights(model, resolved, tolerant=class_layers, ignore=ignore))
    for report in reports:
        log.info("fcn_resnet50: %s", report)
    return TorchvisionFCN(model, aux_weight)


__all__ = [
    "FCN",
    "BilinearUpsampling",
    "TorchvisionFCN",
    "backbone_entry",
    "bilinear_kernel",
    "bilinear_transposed_conv",
    "build_backbone",
    "build_fcn",
    "fcn8s",
    "fcn16s",
    "fcn32s",
    "fcn_resnet50",
]
