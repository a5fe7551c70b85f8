"""LightningDataModules shared by every family of the zoo."""

from datamodules.digits import DigitsDataModule
from datamodules.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = ["DigitsDataModule", "FashionMNISTDataModule", "MNISTDataModule"]
