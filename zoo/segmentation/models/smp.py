"""segmentation-models-pytorch architectures by name, with any smp encoder, offline.

Every architecture of smp is registered as ``smp_<arch>`` (``smp_unet``, ``smp_unetplusplus``,
``smp_fpn``, ``smp_deeplabv3plus``, ``smp_pspnet``, ...), and ``smp`` takes the architecture as an
argument. ``encoder_weights`` is a path to a local weights file (a state dict of the encoder, or of
a whole smp model / checkpoint whose encoder keys start with ``encoder.``; read by
:func:`zoo.core.weights.load_weights`, ``.safetensors`` included), never a name: smp would download
``"imagenet"`` weights, which this project never does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

from zoo.core.registry import register_model
from zoo.core.weights import LoadReport, PretrainedWeightsError, load_weights, read_state_dict

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


def load_encoder_weights(encoder: nn.Module, weights: str | os.PathLike) -> LoadReport:
    """Load a local weights file into an encoder (strict: every key must fit), through
    :func:`zoo.core.weights.load_weights`.

    Accepts the encoder's own state dict (a torchvision / timm classifier file: its ``fc.*`` /
    ``classifier.*`` / ``head.*`` keys are left out), a dict holding one under ``state_dict`` / ``model``,
    or a whole smp model / zoo checkpoint (keys ``[net.|model.]encoder.*`` are taken); ``.pth`` / ``.pt`` /
    ``.ckpt`` or ``.safetensors``. A name such as ``imagenet`` is refused: nothing is downloaded.

    Raises:
        FileNotFoundError: no such file (a weights *name* is told that nothing is downloaded).
        PretrainedWeightsError: a tensor of another shape, or keys the encoder lacks or the file lacks: the
            first key is named, with the shapes, the file and the fix.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        hint = (
            f" {str(weights)!r} looks like a weights *name*: smp would download it, and this project never"
            " downloads. Fix: download the file once elsewhere and pass its path, or set"
            " encoder_weights: null."
            if not any(sep in str(weights) for sep in "/\\.")
            else " Fix: pass the path of an existing file, or set encoder_weights: null."
        )
        raise FileNotFoundError(f"encoder_weights file {str(weights)!r} not found.{hint}")
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
    model = smp.create_model(
        SMP_ARCHITECTURES[key],
        encoder_name=encoder_name,
        encoder_weights=None,
        in_channels=in_channels,
        classes=num_classes,
        **kwargs,
    )
    if encoder_weights:
        load_encoder_weights(model.encoder, encoder_weights)
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
