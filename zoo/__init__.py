"""vision-zoo: a PyTorch Lightning model zoo for computer vision.

``import zoo`` is light: a family is imported when it is used (``zoo.classification.ImageClassifier``, a config's
``class_path``), so a command pays only for the family it runs. ``zoo.list_models`` / ``zoo.create_model`` /
``zoo.get_model_entry`` import every family's networks first, so that they see all of them (the registry itself,
``zoo.core.registry``, imports no family).
"""

from __future__ import annotations

import importlib
from typing import Any

from zoo.core import __version__

FAMILIES = ("classification", "detection", "generative", "segmentation")
_REGISTRY_FUNCTIONS = ("create_model", "get_model_entry", "list_models", "register_model")

__all__ = ["FAMILIES", "__version__", *_REGISTRY_FUNCTIONS]


def load_families() -> None:
    """Import every family's ``models`` package: each registers its networks when imported."""
    for family in FAMILIES:
        importlib.import_module(f"zoo.{family}.models")


def __getattr__(name: str) -> Any:
    # PEP 562: the registry functions on first use, with every family's networks registered.
    if name in _REGISTRY_FUNCTIONS:
        load_families()
        from zoo.core import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
