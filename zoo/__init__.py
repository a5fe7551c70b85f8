"""vision-zoo: a PyTorch Lightning model zoo for computer vision."""

from zoo.registry import create_model, get_model_entry, list_models, register_model

__all__ = ["create_model", "get_model_entry", "list_models", "register_model"]
__version__ = "0.1.0"
