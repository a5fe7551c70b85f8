"""Classification networks: one file per family; importing this package registers them all."""

from zoo.classification.models import convnet, lenet  # noqa: F401
