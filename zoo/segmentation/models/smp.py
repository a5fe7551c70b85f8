"""segmentation-models-pytorch architectures by name, with any smp encoder, offline.

Every architecture of smp is registered as ``smp_<arch>`` (``smp_unet``, ``smp_unetplusplus``,
``smp_fpn``, ``smp_deeplabv3plus``, ``smp_pspnet``, ...), and ``smp`` takes the architecture as an
argument. ``encoder_weights`` is a path to a local weights file (a state dict of the encoder, or of
a whole smp model / checkpoint whose encoder keys start with ``encoder.``), never a name: smp would
download ``"imagenet"`` weights, which this project never does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

from zoo.registry import register_model

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


def load_encoder_weights(encoder: nn.Module, weights: str | os.PathLike) -> None:
    """Load a local weights file into an encoder (strict: every key must fit).

    Accepts the encoder's own state dict, a dict holding one under ``state_dict`` / ``model``, or a
    whole smp model / zoo checkpoint (keys ``[net.]encoder.*`` are taken).
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
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    for prefix in ("net.encoder.", "model.encoder.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    # a torchvision / timm classifier's head is not part of an encoder
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier.", "head."))}
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path} does not fit the encoder: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), {len(mismatched)} of another shape "
            f"(e.g. {mismatched[:3]}). Fix: pass weights of the same encoder_name (and in_channels)."
        )
    encoder.load_state_dict(state)


def build_smp(
    arch: str,
    num_classes: int = 2,
    in_channels: int = 3,
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """An smp model of architecture ``arch`` (a key of :data:`SMP_ARCHITECTURES` or an smp class name)."""
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


@register_model("segmentation", "smp", source="smp")
def smp_model(
    arch: str = "Unet",
    num_classes: int = 2,
    in_channels: int = 3,
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Any smp architecture by name (``arch: Unet``, ``FPN``, ``DeepLabV3Plus``, ...)."""
    return build_smp(arch, num_classes, in_channels, encoder_name, encoder_weights, **kwargs)


def _register(key: str, cls_name: str) -> None:
    def builder(
        num_classes: int = 2,
        in_channels: int = 3,
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        return build_smp(key, num_classes, in_channels, encoder_name, encoder_weights, **kwargs)

    builder.__name__ = f"smp_{key}"
    builder.__doc__ = f"smp.{cls_name} with any smp encoder; encoder_weights only from a local file."
    register_model("segmentation", f"smp_{key}", source="smp")(builder)


for _key, _cls in SMP_ARCHITECTURES.items():
    _register(_key, _cls)
