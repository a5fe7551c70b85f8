"""segmentation-models-pytorch architectures by name, with any smp encoder, offline.

Every architecture of smp is registered as ``smp_<arch>`` (``smp_unet``, ``smp_unetplusplus``,
``smp_fpn``, ``smp_deeplabv3plus``, ``smp_pspnet``, ...), and ``smp`` takes the architecture as an
argument. ``encoder_weights`` is a local weights file (a state dict of the encoder, or of a whole smp model /
checkpoint whose encoder keys start with ``encoder.``; ``.safetensors`` included), a URL, or a name: smp's own
names for the encoder (``imagenet``, ``ssl``, ...: smp's table of hub repositories at pinned revisions), or a
``torchvision:`` / ``timm:`` name of the same architecture; names are downloaded once into the cache and verified
(:mod:`zoo.core.weight_sources`), and ``ZOO_OFFLINE=1`` / ``HF_HUB_OFFLINE=1`` keep everything offline. Library
weights are RGB: for ``in_channels != 3`` the first convolution is adapted as smp adapts it (logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from functools import partial
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

from zoo.core.registry import register_model
from zoo.core.weight_sources import ResolvedWeights, resolve_weights
from zoo.core.weights import LoadReport, PretrainedWeightsError, load_weights, read_state_dict

log = logging.getLogger(__name__)

# registry suffix -> smp class name
SMP_ARCHITECTURES: dict[str, str] = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "pspnet": "PSPNet",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}


# Keys of a torchvision / timm classifier file that are not part of an encoder (its classifier head).
CLASSIFIER_HEAD_PREFIXES = ("fc.", "classifier.", "head.")
# Prefixes under which a whole smp model, a zoo checkpoint or a training script's file keeps the encoder.
ENCODER_PREFIXES = ("net.encoder.", "model.encoder.", "module.encoder.", "encoder.")


def encoder_state_dict(state: dict[str, torch.Tensor], expected: Iterable[str]) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a state dict: the keys under the first of :data:`ENCODER_PREFIXES` present
    (a whole smp model / zoo checkpoint), else all of them (the encoder's own file); a classifier head
    (:data:`CLASSIFIER_HEAD_PREFIXES`) that the encoder does not have is dropped."""
    for prefix in ENCODER_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    expected = set(expected)
    return {k: v for k, v in state.items() if k in expected or not k.startswith(CLASSIFIER_HEAD_PREFIXES)}


def resolve_encoder_weights(encoder_weights: str | os.PathLike, encoder_name: str) -> ResolvedWeights:
    """The verified local file of ``encoder_weights`` for the smp encoder ``encoder_name``: a local file, a URL,
    a library name, or one of smp's own names for that encoder (``imagenet``, ``ssl``, ...; ``smp:imagenet``)."""
    return resolve_weights(encoder_weights, network=encoder_name, library="smp")


def built_for_rgb(resolved: ResolvedWeights | None, in_channels: int) -> bool:
    """Library weights (smp's, torchvision's, timm's names) are trained on RGB images: an encoder for another
    ``in_channels`` is built for 3, loaded, and its first convolution adapted afterwards, as smp does."""
    return resolved is not None and resolved.source.kind in ("smp", "torchvision", "timm") and in_channels != 3


def adapt_first_convolution(encoder: nn.Module, in_channels: int, label: str) -> None:
    """smp's own adaptation of pretrained RGB weights to ``in_channels`` (``encoder.set_in_channels(...,
    pretrained=True)``: one channel gets the sum of the RGB kernels; more channels the RGB kernels repeated and
    scaled by 3 / in_channels); logged, since the first layer no longer holds the weights as trained."""
    encoder.set_in_channels(in_channels, pretrained=True)
    log.info("encoder_weights %s are for RGB images: the first convolution was adapted to in_channels=%d "
             "as smp adapts it (%s)", label, in_channels,
             "the RGB kernels summed" if in_channels == 1 else f"the RGB kernels repeated, scaled by 3/{in_channels}")


def load_encoder_weights(
    encoder: nn.Module, weights: str | os.PathLike | ResolvedWeights, encoder_name: str | None = None
) -> LoadReport:
    """Load weights into an encoder (strict: every key must fit), through :func:`zoo.core.weights.load_weights`.

    Accepts the encoder's own state dict (a torchvision / timm classifier file: its ``fc.*`` /
    ``classifier.*`` / ``head.*`` keys are left out), a dict holding one under ``state_dict`` / ``model``,
    or a whole smp model / zoo checkpoint (keys ``[net.|model.]encoder.*`` are taken); ``.pth`` / ``.pt`` /
    ``.ckpt`` or ``.safetensors``; a URL, a library name, or (with ``encoder_name``) one of smp's names for the
    encoder (:func:`resolve_encoder_weights`), downloaded once into the cache and verified by hash.

    Raises:
        FileNotFoundError: no such file.
        WeightsNotAvailableError: a name that is not cached and cannot be downloaded, or unknown.
        PretrainedWeightsError: a tensor of another shape, or keys the encoder lacks or the file lacks: the
            first key is named, with the shapes, the file and the fix.
    """
    if isinstance(weights, ResolvedWeights):
        resolved = weights
    elif encoder_name is not None:
        resolved = resolve_encoder_weights(weights, encoder_name)
    else:
        resolved = resolve_weights(weights)
    path = resolved.path
    expected = encoder.state_dict()
    state = encoder_state_dict(read_state_dict(path), expected)
    fix = (
        "Fix: pass the weights of an encoder of the same encoder_name and in_channels "
        f"({type(encoder).__name__}), or set encoder_weights: null."
    )
    hints = {key: ("encoder tensor ", fix) for key in expected}
    report = load_weights(encoder, path, hints=hints, strict=False, contents=state)
    if report.missing or report.unexpected:
        first = (
            f"the encoder's {report.missing[0]!r} is not in the file"
            if report.missing
            else f"the file's {report.unexpected[0]!r} is not in the encoder"
        )
        raise PretrainedWeightsError(
            f"{path} does not fit the encoder {type(encoder).__name__}: {first} ({len(report.missing)} "
            f"missing, e.g. {report.missing[:3]}; {len(report.unexpected)} unexpected, e.g. "
            f"{report.unexpected[:3]}). {fix}"
        )
    return report


@register_model("segmentation", "smp", source="smp")
def build_smp(
    arch: str = "Unet",
    num_classes: int = 2,
    in_channels: int = 3,
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """An smp model of architecture ``arch`` (a key of :data:`SMP_ARCHITECTURES` or an smp class name: ``Unet``,
    ``FPN``, ``DeepLabV3Plus``, ...), registered as ``smp``; each architecture is also registered alone (``smp_<key>``,
    this builder with ``arch`` fixed)."""
    key = arch.lower()
    if key not in SMP_ARCHITECTURES:
        names = {v.lower(): k for k, v in SMP_ARCHITECTURES.items()}
        if key not in names:
            raise ValueError(f"unknown smp architecture {arch!r}; known: {', '.join(SMP_ARCHITECTURES.values())}")
        key = names[key]
    resolved = resolve_encoder_weights(encoder_weights, encoder_name) if encoder_weights else None
    rgb = built_for_rgb(resolved, in_channels)
    model = smp.create_model(
        SMP_ARCHITECTURES[key],
        encoder_name=encoder_name,
        encoder_weights=None,
        in_channels=3 if rgb else in_channels,
        classes=num_classes,
        **kwargs,
    )
    if resolved is not None:
        load_encoder_weights(model.encoder, resolved)
        if rgb:
            adapt_first_convolution(model.encoder, in_channels, resolved.source.label)
    # zoo.segmentation.tiling reads this: input sides must be multiples of the encoder's stride.
    model.size_divisor = int(getattr(model.encoder, "output_stride", 32))
    return model


smp_model = build_smp  # the name of the ``smp`` builder before build_smp took its place


def _register(key: str, cls_name: str) -> None:
    """Register ``smp_<key>``: :func:`build_smp` with ``arch`` fixed, so with its signature less ``arch``."""
    builder = partial(build_smp, key)
    builder.__name__ = builder.__qualname__ = f"smp_{key}"
    builder.__module__ = __name__
    builder.__doc__ = f"smp.{cls_name} with any smp encoder; encoder_weights only from a local file."
    register_model("segmentation", f"smp_{key}", source="smp")(builder)


for _key, _cls in SMP_ARCHITECTURES.items():
    _register(_key, _cls)
