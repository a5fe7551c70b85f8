"""vision-zoo: a PyTorch Lightning model zoo for computer vision."""

from zoo.core.registry import create_model, get_model_entry, list_models, register_model

__version__ = "0.1.0"

# Every family's networks register themselves when their package is imported: importing them here makes
# ``zoo.list_models()`` / ``zoo.create_model(...)`` see all of them (the registry itself imports no family).
import zoo.classification.models  # noqa: E402, F401
import zoo.detection.models  # noqa: E402, F401
import zoo.generative.models  # noqa: E402, F401
import zoo.segmentation.models  # noqa: E402, F401

__all__ = ["create_model", "get_model_entry", "list_models", "register_model"]
