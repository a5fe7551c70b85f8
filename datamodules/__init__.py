"""LightningDataModules shared by every family of the zoo."""

from datamodules.digits import DigitsDataModule
from datamodules.mnist import FashionMNISTDataModule, MNISTDataModule
from datamodules.segmentation import DSB2018DataModule, ISBI2012DataModule, SegmentationFolderDataModule

__all__ = [
    "DSB2018DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ISBI2012DataModule",
    "MNISTDataModule",
    "SegmentationFolderDataModule",
]
