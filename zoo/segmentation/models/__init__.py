"""Segmentation networks: plain ``nn.Module``s registered under family ``"segmentation"``.

``unet`` / ``unet_same`` (the paper's U-Net, hand-written), ``pspnet`` (PSPNet head over a dilated
smp encoder), ``deconvnet`` / ``segnet`` (max-unpooling with the encoder's indices), ``dilated_context``
(Yu and Koltun's context module on a dilated VGG-16), ``sliding_window`` (a patch classifier run densely),
``fcn32s`` / ``fcn16s`` / ``fcn8s`` (Long et al.'s FCNs over any registered classifier), ``fcn_resnet50``
(torchvision's) and every smp architecture as ``smp_<arch>``. The
decoders' upsampling layers are in ``zoo.segmentation.models.upsampling``.
"""

from zoo.segmentation.models.context import ContextModule, DilatedContextNet, DilatedFrontEnd
from zoo.segmentation.models.deconvnet import DeconvNet, SegNet
from zoo.segmentation.models.fcn import FCN, TorchvisionFCN, fcn8s, fcn16s, fcn32s, fcn_resnet50
from zoo.segmentation.models.pspnet import PSPNet, PyramidPoolingModule
from zoo.segmentation.models.sliding_window import SlidingWindowClassifier
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
from zoo.segmentation.models.upsampling import UPSAMPLING_KINDS, UnknownUpsamplingError, make_upsampling

__all__ = [
    "SMP_ARCHITECTURES",
    "UPSAMPLING_KINDS",
    "ContextModule",
    "DeconvNet",
    "DilatedContextNet",
    "DilatedFrontEnd",
    "FCN",
    "InvalidInputSizeError",
    "PSPNet",
    "PyramidPoolingModule",
    "SegNet",
    "SlidingWindowClassifier",
    "TorchvisionFCN",
    "UNet",
    "UnknownUpsamplingError",
    "build_smp",
    "center_crop",
    "encoder_state_dict",
    "fcn8s",
    "fcn16s",
    "fcn32s",
    "fcn_resnet50",
    "load_encoder_weights",
    "make_upsampling",
    "nearest_valid_sizes",
    "unet_input_size",
    "unet_output_size",
    "unet_same",
]
