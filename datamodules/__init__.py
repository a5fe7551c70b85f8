"""LightningDataModules shared by every family of the zoo."""

from datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from datamodules.coco import COCODetectionDataModule
from datamodules.digit_canvas import DigitCanvasDataModule
from datamodules.digits import DigitsDataModule
from datamodules.images import ImageCSVDataModule, ImageFolderDataModule
from datamodules.mnist import FashionMNISTDataModule, MNISTDataModule
from datamodules.segmentation import DSB2018DataModule, ISBI2012DataModule, SegmentationFolderDataModule

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "COCODetectionDataModule",
    "DSB2018DataModule",
    "DigitCanvasDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ISBI2012DataModule",
    "ImageCSVDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SegmentationFolderDataModule",
]
