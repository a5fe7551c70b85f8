"""Detection networks: torchvision's Faster R-CNN and SSD, registered under the ``detection`` family.

Every builder takes ``num_classes`` = the number of *object* classes; the network scores
``num_classes + 1`` classes, index 0 being the background (torchvision's convention), so label ``k``
of a target is the ``k``-th object class (1-based). Nothing is downloaded: initial weights come from local
files (``.pth`` / ``.pt`` / ``.ckpt`` / ``.safetensors``, read by :func:`zoo.core.weights.load_weights`):

- ``backbone_weights``: a local file with the backbone classifier's weights: a torchvision ImageNet
  state dict (``resnet50-0676ba61.pth``, ``mobilenet_v3_large-8738ca79.pth``, ``vgg16-397923af.pth``)
  or a zoo classifier checkpoint of the same architecture (``ImageClassifier`` with network
  ``resnet50`` / ``mobilenet_v3_large`` / ``vgg16``; its classifier head is left out). As in
  torchvision, a pretrained backbone gets frozen batch norm and only its last
  ``trainable_backbone_layers`` stages train; without one every layer trains, with ordinary batch norm.
- ``weights``: a local file with a whole detector's weights (e.g. torchvision's COCO
  ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``); class-dependent layers of another ``num_classes``
  keep their fresh initialisation.

The constructions below are torchvision's builders (``torchvision.models.detection``) with those two
hooks added; ``image_size`` sets the input size (Faster R-CNN: ``min_size = max_size``; SSD: the fixed
square size) so that small images, e.g. 128-pixel canvases, are not upsampled to 800 pixels on a CPU.
Any other keyword goes to ``FasterRCNN`` / ``SSD`` (``box_score_thresh``, ``box_detections_per_img``,
``rpn_batch_size_per_image``, ``score_thresh``, ...).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch.nn as nn
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torchvision.models import mobilenet_v3_large, resnet50, vgg16
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import (
    _mobilenet_extractor,
    _resnet_fpn_extractor,
    _validate_trainable_layers,
)
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNConvFCHead, RPNHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads
from torchvision.models.detection.ssd import SSD, _vgg_extractor
from torchvision.models.detection.ssdlite import SSDLiteHead, _normal_init
from torchvision.models.detection.ssdlite import _mobilenet_extractor as _ssdlite_extractor
from torchvision.ops import misc as misc_nn_ops

from zoo.core.registry import register_model
from zoo.core.weight_sources import is_named, parse_weights, resolve_weights
from zoo.core.weights import LoadReport, PretrainedWeightsError, load_weights

# Keys of a detector whose shapes depend on the number of classes: a whole-detector weights file
# trained on another label set loads everything but these.
CLASS_DEPENDENT_KEYS = (
    "roi_heads.box_predictor.", "head.classification_head.", "roi_heads.mask_predictor.mask_fcn_logits.",
)
# Frozen batch norm (a pretrained backbone's) has no num_batches_tracked counter: left out both ways.
NOT_LOADED = ("*num_batches_tracked",)
Detector = TypeVar("Detector", bound=nn.Module)


def classifier_head_keys(classifier: nn.Module) -> list[str]:
    """State-dict keys of the last ``nn.Linear`` of a torchvision classifier: its head (``fc`` of ResNet,
    ``classifier.3`` of MobileNetV3, ``classifier.6`` of VGG), whose shape follows the file's number of classes."""
    linears = [(name, module) for name, module in classifier.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        return []
    name, head = linears[-1]
    return [f"{name}.{key}" for key in head.state_dict()]


def load_backbone_weights(backbone: nn.Module, path: str | Path, network: str | None = None) -> LoadReport:
    """Load a classifier's weights (torchvision state dict or zoo checkpoint; ``.pth``, ``.ckpt``,
    ``.safetensors``, ...; a URL, or ``torchvision:IMAGENET1K_V1`` for the torchvision classifier ``network``:
    :func:`zoo.core.weight_sources.resolve_weights`) into ``backbone``, the full torchvision classifier before its
    feature extractor is cut out. The classifier head (another number of classes) keeps its initialisation; any
    other mismatch is a :class:`~zoo.core.weights.PretrainedWeightsError` naming the key and the file."""
    resolved = resolve_weights(path, network=network, library="torchvision")
    report = load_weights(backbone, resolved, tolerant=classifier_head_keys(backbone), ignore=NOT_LOADED)
    rank_zero_info(f"detection backbone {type(backbone).__name__}: {report}")
    return report


def load_detector_weights(
    model: nn.Module, path: str | Path, network: str | None = None, fresh: tuple[str, ...] = ()
) -> LoadReport:
    """Load a whole detector's weights (a file, a URL, or ``torchvision:COCO_V1`` for the torchvision detector
    ``network``); class-dependent layers (:data:`CLASS_DEPENDENT_KEYS`) of another shape, and layers under the
    ``fresh`` prefixes that the file may lack (a Faster R-CNN file in a Mask R-CNN: its mask head), keep their
    fresh initialisation and are reported (``report.skipped_head``)."""
    class_layers = [key for key in model.state_dict() if key.startswith((*CLASS_DEPENDENT_KEYS, *fresh))]
    resolved = resolve_weights(path, network=network, library="torchvision")
    report = load_weights(model, resolved, tolerant=class_layers, ignore=NOT_LOADED)
    rank_zero_info(f"detector {type(model).__name__}: {report}")
    return report


def _check_classes(num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(
            f"num_classes counts the object classes (background excluded) and must be >= 1, got {num_classes}"
        )


@dataclass(frozen=True)
class _Common:
    """The arguments every detection builder takes first, in this order, with these types and defaults (see the
    module docstring); :func:`_detection_builder` puts them at the head of each builder's signature."""

    num_classes: int = 90
    trainable_backbone_layers: int | None = None
    backbone_weights: str | None = None
    weights: str | None = None
    image_size: int | None = None


def _detection_builder(construct: Callable[..., Detector]) -> Callable[..., Detector]:
    """Register ``construct(common: _Common, <its own arguments>, **kwargs)`` as the detection builder of its name,
    whose arguments are the fields of :class:`_Common` and then ``construct``'s own ones: ``inspect.signature`` of
    the builder lists them all, typed, with their defaults, and they can be passed by position or by name."""
    common = [
        inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default, annotation=f.type)
        for f in fields(_Common)
    ]
    signature = inspect.signature(construct)
    signature = signature.replace(parameters=[*common, *list(signature.parameters.values())[1:]])

    @functools.wraps(construct)
    def builder(*args: Any, **kwargs: Any) -> Detector:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = bound.args
        return construct(_Common(*given[: len(common)]), *given[len(common) :], **bound.kwargs)

    builder.__signature__ = signature  # type: ignore[attr-defined]
    return register_model("detection", source="torchvision")(builder)


def _backbone_body(
    arch: Callable[..., nn.Module], common: _Common, layers: tuple[int, int], frozen_bn: bool = False,
    **arch_kwargs: Any,
) -> tuple[nn.Module, int]:
    """The torchvision classifier ``arch`` with ``common.backbone_weights`` loaded, and how many of its stages train.

    torchvision's rules: the network counts as pretrained when a weights file is given (``weights`` or
    ``backbone_weights``); then only the last ``trainable_backbone_layers`` stages train (``layers``: the most
    and the default), else all of them. With ``frozen_bn`` a pretrained backbone gets frozen batch norm and an
    untrained one ordinary batch norm.
    """
    _check_classes(common.num_classes)
    trained = common.backbone_weights is not None or common.weights is not None
    trainable = _validate_trainable_layers(trained, common.trainable_backbone_layers, *layers)
    if frozen_bn:
        arch_kwargs["norm_layer"] = misc_nn_ops.FrozenBatchNorm2d if trained else nn.BatchNorm2d
    body = arch(weights=None, **arch_kwargs)
    if common.backbone_weights:
        load_backbone_weights(body, common.backbone_weights, network=arch.__name__)
    return body, trainable


def _finish(model: Detector, common: _Common, network: str) -> Detector:
    if common.weights:
        load_detector_weights(model, common.weights, network=network)
    return model


def _rcnn_size(common: _Common, kwargs: dict[str, Any]) -> dict[str, Any]:
    if common.image_size is not None:
        kwargs = {**kwargs, "min_size": common.image_size, "max_size": common.image_size}
    return kwargs


@_detection_builder
def fasterrcnn_resnet50_fpn(common: _Common, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN (Ren et al. 2015) with a ResNet-50-FPN backbone (Lin et al. 2017, FPN), as
    ``torchvision.models.detection.fasterrcnn_resnet50_fpn``."""
    body, layers = _backbone_body(resnet50, common, (5, 3), frozen_bn=True)
    model = FasterRCNN(_resnet_fpn_extractor(body, layers), common.num_classes + 1, **_rcnn_size(common, kwargs))
    return _finish(model, common, "fasterrcnn_resnet50_fpn")


@_detection_builder
def fasterrcnn_resnet50_fpn_v2(common: _Common, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN v2 (Li et al. 2021, "Benchmarking detection transfer learning with ViTs"): a
    two-conv RPN head and a 4-conv + 1-FC box head with batch norm, ResNet-50-FPN; as torchvision's
    ``fasterrcnn_resnet50_fpn_v2`` (batch norm trains there even with pretrained weights)."""
    body, layers = _backbone_body(resnet50, common, (5, 3))
    backbone = _resnet_fpn_extractor(body, layers, norm_layer=nn.BatchNorm2d)
    anchor_generator = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    rpn_head = RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0], conv_depth=2)
    box_head = FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d)
    model = FasterRCNN(
        backbone,
        common.num_classes + 1,
        rpn_anchor_generator=anchor_generator,
        rpn_head=rpn_head,
        box_head=box_head,
        **_rcnn_size(common, kwargs),
    )
    return _finish(model, common, "fasterrcnn_resnet50_fpn_v2")


# What torchvision's 320-px variant changes: a small input and fewer proposals at test time.
LOW_RESOLUTION = {"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150}


@_detection_builder
def fasterrcnn_mobilenet_v3_large_fpn(
    common: _Common, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512), **kwargs: Any
) -> FasterRCNN:
    """Faster R-CNN (Ren et al. 2015) on MobileNetV3-Large-FPN (Howard et al. 2019), high resolution
    (800-1333 px), as torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``. ``anchor_sizes``: anchor
    sides in pixels (each on all three feature maps), e.g. ``[16, 32, 64, 128]`` for small objects."""
    body, layers = _backbone_body(mobilenet_v3_large, common, (6, 3), frozen_bn=True)
    backbone = _mobilenet_extractor(body, True, layers)
    # torchvision puts every anchor size on each of the 3 feature maps (the last two stages + pool)
    anchors = AnchorGenerator((tuple(int(s) for s in anchor_sizes),) * 3, ((0.5, 1.0, 2.0),) * 3)
    kwargs = _rcnn_size(common, {"rpn_score_thresh": 0.05, **kwargs})
    model = FasterRCNN(backbone, common.num_classes + 1, rpn_anchor_generator=anchors, **kwargs)
    return _finish(model, common, "fasterrcnn_mobilenet_v3_large_fpn")


@_detection_builder
def fasterrcnn_mobilenet_v3_large_320_fpn(
    common: _Common, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512), **kwargs: Any
) -> FasterRCNN:
    """Faster R-CNN (Ren et al. 2015) on MobileNetV3-Large-FPN at low resolution (320 px, fewer
    proposals: :data:`LOW_RESOLUTION`), as torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn``; see the
    800-px variant :func:`fasterrcnn_mobilenet_v3_large_fpn`, which takes the same arguments."""
    if common.weights and is_named(common.weights):  # a short name means this variant's enum, not the 800-px one's
        source = parse_weights(common.weights, network="fasterrcnn_mobilenet_v3_large_320_fpn", library="torchvision")
        common = replace(common, weights=source.name or common.weights)
    return fasterrcnn_mobilenet_v3_large_fpn(
        **asdict(common), anchor_sizes=anchor_sizes, **{**LOW_RESOLUTION, **kwargs}
    )


def _fix_ssd_size(model: SSD, image_size: int | None) -> SSD:
    # SSD resizes every image to one fixed square (Liu et al. 2016, sec. 3): change that square.
    # The default boxes are fractions of the image, so they follow the new size.
    if image_size is not None:
        model.transform.min_size = (image_size,)
        model.transform.max_size = image_size
        model.transform.fixed_size = (image_size, image_size)
    return model


@_detection_builder
def ssd300_vgg16(common: _Common, **kwargs: Any) -> SSD:
    """SSD300 (Liu et al. 2016) on VGG-16 with the paper's default boxes, as torchvision's
    ``ssd300_vgg16``; ``image_size`` replaces the fixed 300x300 input."""
    _check_classes(common.num_classes)
    if common.image_size is not None and common.image_size < 300:
        raise ValueError(
            f"ssd300_vgg16 needs image_size >= 300 (its extra layers shrink the map to 1x1 at 300), got "
            f"{common.image_size}. Fix: use ssdlite320_mobilenet_v3_large for small images, or image_size >= 300."
        )
    body, layers = _backbone_body(vgg16, common, (5, 4))
    anchors = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    defaults = {"image_mean": [0.48235, 0.45882, 0.40784], "image_std": [1.0 / 255.0] * 3}
    model = SSD(
        _vgg_extractor(body, False, layers), anchors, (300, 300), common.num_classes + 1, **{**defaults, **kwargs}
    )
    return _finish(_fix_ssd_size(model, common.image_size), common, "ssd300_vgg16")


@_detection_builder
def ssdlite320_mobilenet_v3_large(common: _Common, width_mult: float = 1.0, **kwargs: Any) -> SSD:
    """SSDlite (Sandler et al. 2018, MobileNetV2 sec. 6.2; SSD: Liu et al. 2016) on MobileNetV3-Large
    (Howard et al. 2019), as torchvision's ``ssdlite320_mobilenet_v3_large``. Without backbone weights
    the backbone has the paper's reduced tail (MobileNetV3 table 6) and normal initialisation."""
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    body, layers = _backbone_body(
        mobilenet_v3_large,
        replace(common, weights=None),  # torchvision's SSDlite counts only backbone weights as pretrained
        (6, 6),
        norm_layer=norm,
        width_mult=width_mult,
        reduced_tail=common.backbone_weights is None,  # ImageNet weights are for the full tail
    )
    if not common.backbone_weights:
        _normal_init(body)
    backbone = _ssdlite_extractor(body, layers, norm)
    size = (320, 320)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(backbone, size)
    defaults = {
        "score_thresh": 0.001,
        "nms_thresh": 0.55,
        "detections_per_img": 300,
        "topk_candidates": 300,
        "image_mean": [0.5, 0.5, 0.5],  # [0, 1] -> [-1, 1], what the backbone expects
        "image_std": [0.5, 0.5, 0.5],
    }
    head = SSDLiteHead(out_channels, anchors.num_anchors_per_location(), common.num_classes + 1, norm)
    model = SSD(backbone, anchors, size, common.num_classes + 1, head=head, **{**defaults, **kwargs})
    return _finish(_fix_ssd_size(model, common.image_size), common, "ssdlite320_mobilenet_v3_large")


# -- Mask R-CNN (He, Gkioxari, Dollar, Girshick 2017): Faster R-CNN + a per-RoI mask head (sec. 3) --------------------


@_detection_builder
def maskrcnn_resnet50_fpn(common: _Common, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN (He et al. 2017) with a ResNet-50-FPN backbone, as torchvision's ``maskrcnn_resnet50_fpn``:
    Faster R-CNN plus a four-conv FCN mask head on 14x14 RoIAlign features predicting one 28x28 mask per class
    (sec. 3, fig. 4 right)."""
    body, layers = _backbone_body(resnet50, common, (5, 3), frozen_bn=True)
    model = MaskRCNN(_resnet_fpn_extractor(body, layers), common.num_classes + 1, **_rcnn_size(common, kwargs))
    return _finish(model, common, "maskrcnn_resnet50_fpn")


@_detection_builder
def maskrcnn_resnet50_fpn_v2(common: _Common, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN v2 (Li et al. 2021, "Benchmarking detection transfer learning with ViTs"): the v2 Faster R-CNN
    (two-conv RPN head, 4-conv + 1-FC box head with batch norm) and a batch-normed mask head; as torchvision's
    ``maskrcnn_resnet50_fpn_v2``."""
    body, layers = _backbone_body(resnet50, common, (5, 3))
    backbone = _resnet_fpn_extractor(body, layers, norm_layer=nn.BatchNorm2d)
    anchor_generator = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    rpn_head = RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0], conv_depth=2)
    box_head = FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d)
    mask_head = MaskRCNNHeads(backbone.out_channels, [256] * 4, 1, norm_layer=nn.BatchNorm2d)
    model = MaskRCNN(
        backbone, common.num_classes + 1, rpn_anchor_generator=anchor_generator, rpn_head=rpn_head,
        box_head=box_head, mask_head=mask_head, **_rcnn_size(common, kwargs),
    )  # fmt: skip
    return _finish(model, common, "maskrcnn_resnet50_fpn_v2")


@_detection_builder
def maskrcnn_mobilenet_v3_large_fpn(
    common: _Common, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512), **kwargs: Any
) -> MaskRCNN:
    """Mask R-CNN (He et al. 2017) on the MobileNetV3-Large-FPN backbone of torchvision's
    ``fasterrcnn_mobilenet_v3_large_fpn`` (Howard et al. 2019): the variant a CPU can train. torchvision has no
    such builder, so there are no whole-model weights for it; ``backbone_weights`` takes MobileNetV3-Large's
    ImageNet weights (``torchvision:IMAGENET1K_V1``) and ``weights`` a Faster R-CNN MobileNetV3 file (its box
    layers load, the mask head stays fresh, reported), e.g. ``torchvision:FasterRCNN_MobileNet_V3_Large_FPN_Weights.
    COCO_V1``. ``anchor_sizes``: anchor sides in pixels (small nuclei want ``[8, 16, 32, 64, 128]``)."""
    body, layers = _backbone_body(mobilenet_v3_large, common, (6, 3), frozen_bn=True)
    backbone = _mobilenet_extractor(body, True, layers)
    anchors = AnchorGenerator((tuple(int(s) for s in anchor_sizes),) * 3, ((0.5, 1.0, 2.0),) * 3)
    kwargs = _rcnn_size(common, {"rpn_score_thresh": 0.05, **kwargs})
    model = MaskRCNN(backbone, common.num_classes + 1, rpn_anchor_generator=anchors, **kwargs)
    if common.weights:  # torchvision has no such Mask R-CNN: its names are the Faster R-CNN's
        load_detector_weights(model, common.weights, "fasterrcnn_mobilenet_v3_large_fpn", fresh=("roi_heads.mask_",))
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


__all__ = [
    "CLASS_DEPENDENT_KEYS",
    "PretrainedWeightsError",
    "classifier_head_keys",
    "count_parameters",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "load_backbone_weights",
    "load_detector_weights",
    "maskrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
]
