"""Classification networks: one file per family; importing this package registers them all."""

from zoo.classification.models import (  # noqa: F401
    alexnet,
    convnet,
    densenet,
    googlenet,
    lenet,
    mobilenet,
    nin,
    resnet,
    senet,
    squeezenet,
    vgg,
)
