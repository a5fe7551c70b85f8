"""Visualization by optimisation, adversarial examples and style transfer do what they optimise."""

from __future__ import annotations

import pytest
import torch

from tests.interpret.conftest import BOUNDS, MNIST_STD
from zoo.interpret import (
    class_model,
    deep_dream,
    fgsm,
    gram_matrix,
    invert_features,
    iterative_attack,
    perturbation_success,
    style_loss,
    style_transfer,
    synthesize_texture,
    universal_perturbation,
)
from zoo.interpret.layers import activations


@pytest.mark.parametrize("init", ["zeros", "noise"])
def test_class_model_visualization_raises_the_target_logit(trained, init):
    result = class_model(trained, target=3, steps=40, init=init, bounds=BOUNDS)
    with torch.no_grad():
        start = trained(torch.zeros(1, 1, 28, 28))[0, 3] if init == "zeros" else result.history[0]
        final = trained(result.image)[0]
    assert final[3] > start + 5.0
    assert final.argmax() == 3


def test_deep_dream_amplifies_the_layer_activations(trained, test_digits):
    image = test_digits[0][:1]
    result = deep_dream(trained, image, "features.6", steps=5, octaves=2, lr=0.05)
    assert result.image.shape == image.shape
    before = activations(trained, image, "features.6")["features.6"].pow(2).mean()
    after = activations(trained, result.image, "features.6")["features.6"].pow(2).mean()
    assert after > 1.5 * before


def test_feature_inversion_lowers_the_feature_distance(trained, test_digits):
    result = invert_features(trained, test_digits[0][:1], "features.6", steps=60, lr=0.05)
    assert result.history[-1] < 0.5 * result.history[0]


def test_fgsm_with_epsilon_zero_flips_no_prediction(trained, test_digits):
    images, labels = test_digits
    result = fgsm(trained, images[:200], labels[:200], epsilon=0.0)
    assert not result.success.any()
    assert float(result.linf.max()) == 0.0


def test_fgsm_with_a_large_epsilon_flips_most_predictions(trained, test_digits):
    images, labels = test_digits
    result = fgsm(trained, images[:200], labels[:200], epsilon=0.3 / MNIST_STD, bounds=BOUNDS)
    assert result.success_rate > 0.5
    assert float(result.linf.max()) <= 0.3 / MNIST_STD + 1e-4  # clamping to valid pixels only shrinks it


def test_targeted_iterative_attack_reaches_the_target_with_a_small_perturbation(trained, test_digits):
    images, labels = test_digits[0][:50], test_digits[1][:50]
    target = (labels + 1) % 10
    eps = 0.2 / MNIST_STD
    result = iterative_attack(trained, images, target, epsilon=eps, steps=20, bounds=BOUNDS)
    assert result.success_rate > 0.8
    assert float(result.linf.max()) <= eps + 1e-5
    assert torch.equal(result.success, result.pred_after == target)


def test_universal_perturbation_pushes_held_out_digits_to_the_target_class(trained, mnist, test_digits):
    train_images = mnist.val_set.images[:300]
    result = universal_perturbation(trained, train_images, target=7, c=0.02, steps=40, lr=0.1, bounds=BOUNDS)
    held_out = perturbation_success(trained, test_digits[0], result.perturbation, 7, bounds=BOUNDS)
    none = perturbation_success(trained, test_digits[0], torch.zeros_like(result.perturbation), 7, bounds=BOUNDS)
    assert none["success_rate"] < 0.05
    assert held_out["success_rate"] > 0.5
    assert result.history[-1] < result.history[0]


def test_gram_matrix_is_the_normalised_feature_inner_product():
    f = torch.randn(2, 3, 4, 5)
    g = gram_matrix(f)
    assert torch.allclose(g[1, 0, 2], (f[1, 0] * f[1, 2]).sum() / 60)
    assert torch.allclose(g, g.transpose(1, 2))


def test_style_transfer_lowers_the_gram_matrix_loss(trained, test_digits):
    content, style = test_digits[0][:1], test_digits[0][1:2]
    layers = ["features.2", "features.6"]
    with torch.no_grad():
        before = style_loss(trained, content, style, layers)
    result = style_transfer(trained, content, style, content_layers=["features.6"], style_layers=layers,
                            steps=40, style_weight=1e3)
    with torch.no_grad():
        after = style_loss(trained, result.image, style, layers)
    assert after < 0.5 * before
    assert result.style_loss[-1] < result.style_loss[0]


def test_texture_synthesis_from_noise_lowers_the_gram_matrix_loss(trained, test_digits):
    result = synthesize_texture(trained, test_digits[0][:1], ["features.2", "features.6"], steps=40)
    assert result.style_loss[-1] < 0.5 * result.style_loss[0]
    assert result.content_loss == [0.0] * len(result.content_loss)


def test_style_transfer_on_a_non_convolutional_layer_is_a_clear_error(trained, test_digits):
    with pytest.raises(ValueError, match="classifier.1.*no \\(N, C, H, W\\) feature map"):
        style_transfer(trained, test_digits[0][:1], test_digits[0][1:2], style_layers=["classifier.1"], steps=1)
