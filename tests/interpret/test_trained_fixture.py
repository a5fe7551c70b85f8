"""The session's trained classifier is good enough for the "trained network" sanity checks."""

import torch


def test_trained_classifier_reaches_93_percent_on_mnist_test_digits(trained, test_digits):
    images, labels = test_digits
    with torch.no_grad():
        accuracy = (trained(images).argmax(1) == labels).float().mean()
    assert accuracy > 0.93
