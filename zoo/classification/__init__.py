"""Image classification: networks (``zoo.classification.models``) and LightningModules."""

from zoo.classification.distill import DistillationClassifier
from zoo.classification.module import ImageClassifier

__all__ = ["DistillationClassifier", "ImageClassifier"]
