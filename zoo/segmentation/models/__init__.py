"""Segmentation networks: plain ``nn.Module``s registered under family ``"segmentation"``.

``unet`` / ``unet_same`` (the paper's U-Net, hand-written), ``pspnet`` (PSPNet head over a dilated
smp encoder) and every smp architecture as ``smp_<arch>``.
"""

from zoo.segmentation.models.pspnet import PSPNet, PyramidPoolingModule
from zoo.segmentation.models.smp import SMP_ARCHITECTURES, build_smp, encoder_state_dict, load_encoder_weights
from zoo.segmentation.models.unet import (
    InvalidInputSizeError,
    UNet,
    center_crop,
    nearest_valid_sizes,
    unet_input_size,
    unet_output_size,
    unet_same,
)

__all__ = [
    "SMP_ARCHITECTURES",
    "InvalidInputSizeError",
    "PSPNet",
    "PyramidPoolingModule",
    "UNet",
    "build_smp",
    "center_crop",
    "encoder_state_dict",
    "load_encoder_weights",
    "nearest_valid_sizes",
    "unet_input_size",
    "unet_output_size",
    "unet_same",
]
