"""Image classification: networks (``zoo.classification.models``) and LightningModules."""

from zoo.classification.module import ImageClassifier

__all__ = ["ImageClassifier"]
