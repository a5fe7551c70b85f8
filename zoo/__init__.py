"""vision-zoo: a PyTorch Lightning model zoo for computer vision."""

# Every family's networks register themselves when their package is imported: importing them here makes
# ``zoo.list_models()`` / ``zoo.create_model(...)`` see all of them (the registry itself imports no family).
import zoo.classification.models  # noqa: E402, F401
import zoo.detection.models  # noqa: E402, F401
import zoo.generative.models  # noqa: E402, F401
import zoo.segmentation.models  # noqa: E402, F401
from zoo.core import __version__
from zoo.core.registry import create_model, get_model_entry, list_models, register_model

__all__ = ["__version__", "create_model", "get_model_entry", "list_models", "register_model"]
