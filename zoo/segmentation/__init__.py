"""Semantic segmentation: networks (``zoo.segmentation.models``), the U-Net loss and weight map (the map is
data preprocessing, defined in ``datamodules.weight_maps`` and re-exported here), overlap-tile inference,
metrics, class colours and mask / overlay pictures (``zoo.segmentation.plots``), the
:class:`SemanticSegmenter` LightningModule and the U-Net route of instance segmentation,
:class:`InstanceSegmenter` (a semantic network plus watershed post-processing, ``zoo.segmentation.instances``).

>>> from zoo.segmentation import UNet, PSPNet, WeightedPixelLoss, unet_weight_map, predict_tiled
"""

from zoo.segmentation.instance_module import InstanceSegmenter
from zoo.segmentation.losses import WeightedPixelLoss, WeightMapCache, build_loss, unet_weight_map
from zoo.segmentation.metrics import ISBIPixelError, PixelError, RandError, adapted_rand_error, pixel_error, rand_error
from zoo.segmentation.models import (
    FCN,
    ContextModule,
    DeconvNet,
    DilatedContextNet,
    PSPNet,
    SegNet,
    SlidingWindowClassifier,
    UNet,
    build_smp,
    nearest_valid_sizes,
    unet_input_size,
    unet_output_size,
)
from zoo.segmentation.module import SemanticSegmenter
from zoo.segmentation.tiling import mirror_pad, predict_tiled, predict_whole

__all__ = [
    "FCN",
    "ContextModule",
    "DeconvNet",
    "DilatedContextNet",
    "ISBIPixelError",
    "InstanceSegmenter",
    "PSPNet",
    "PixelError",
    "RandError",
    "SegNet",
    "SemanticSegmenter",
    "SlidingWindowClassifier",
    "UNet",
    "WeightMapCache",
    "WeightedPixelLoss",
    "adapted_rand_error",
    "build_loss",
    "build_smp",
    "mirror_pad",
    "nearest_valid_sizes",
    "pixel_error",
    "predict_tiled",
    "predict_whole",
    "rand_error",
    "unet_input_size",
    "unet_output_size",
    "unet_weight_map",
]
