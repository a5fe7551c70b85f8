"""Layer lookup, activations, filters, layer table, receptive field, top-activating patches, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from zoo import create_model
from zoo.interpret import (
    UnknownLayerError,
    activations,
    first_layer_filters,
    get_layer,
    layer_table,
    receptive_field,
    saliency,
    top_activating_patches,
)


class FixedHead(nn.Module):
    """A CNN whose classifier only takes 28x28 inputs (flattened 8x7x7 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 7 * 7, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_unknown_layer_error_lists_the_available_layers():
    net = create_model("convnet", width=4)
    with pytest.raises(UnknownLayerError, match=r"Unknown layer 'featurs\.3'.*Did you mean: features\.3.*"
                                                r"Available layers: features, features\.0"):
        get_layer(net, "featurs.3")


def test_activations_of_an_image_larger_than_the_training_size_stop_before_the_fixed_size_head():
    net = FixedHead().eval()
    big = torch.randn(1, 1, 56, 56)
    with pytest.raises(RuntimeError):
        net(big)  # the head rejects the size ...
    acts = activations(net, big, ["features.1", "features.5"])  # ... the convolutional part does not
    assert acts["features.1"].shape == (1, 8, 56, 56)
    assert acts["features.5"].shape == (1, 8, 14, 14)


def test_activations_with_inplace_relu_keep_the_pre_relu_output_of_the_conv():
    net = FixedHead().eval()
    x = torch.randn(2, 1, 28, 28)
    conv = activations(net, x, "features.0")["features.0"]
    assert (conv < 0).any()  # an in-place ReLU after it would have zeroed the stored tensor
    assert torch.allclose(conv, net.features[0](x))


def test_first_layer_filters_are_the_first_convolution_weights():
    net = create_model("convnet", width=4)
    filters = first_layer_filters(net)
    assert filters.shape == (4, 1, 3, 3)
    assert torch.equal(filters, net.features[0].weight)


def test_layer_table_lists_activation_shapes_and_learnables_of_every_layer():
    net = create_model("convnet", width=4)
    table = layer_table(net, (1, 1, 28, 28))
    rows = {r.name: r for r in table.rows}
    assert rows["features.0"].type == "Conv2d" and rows["features.0"].output_shape == [1, 4, 28, 28]
    assert rows["features.0"].params == 4 * 9
    assert table.total_params == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("layer", ["features.2", "features.6", "features.10"])
def test_receptive_field_from_geometry_matches_the_input_gradient_support(layer):
    torch.manual_seed(0)
    net = create_model("convnet", width=4).eval()
    for m in net.modules():  # positive weights: every pixel in the field reaches the unit, none cancel
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    rf = receptive_field(net, layer)
    x = torch.rand(1, 1, 64, 64, requires_grad=True)
    act = activations(net, x, layer, grad=True)[layer]
    i = j = act.shape[-1] // 2
    act[0, 0, i, j].backward()
    rows, cols = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten(), torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    top, bottom, left, right = rf.box(i, j, 64, 64)
    # max pooling routes the gradient to one pixel per window, so the support lies inside the box and
    # reaches its edges for the first layers; its extent can be smaller only by max-pool routing.
    assert top <= int(rows.min()) and int(rows.max()) < bottom
    assert left <= int(cols.min()) and int(cols.max()) < right
    if layer == "features.2":
        assert (top, bottom, left, right) == (i - 1, i + 2, j - 1, j + 2)


def test_top_activating_patches_are_sorted_and_match_the_channel_maximum():
    torch.manual_seed(0)
    net = create_model("convnet", width=4).eval()
    images = torch.randn(40, 1, 28, 28)
    top = top_activating_patches(net, images, "features.6", channel=2, k=5)
    maxima = activations(net, images, "features.6")["features.6"][:, 2].flatten(1).amax(1)
    assert torch.equal(top.indices, maxima.argsort(descending=True)[:5])
    assert torch.allclose(top.values, maxima[top.indices])
    assert top.patches.shape == (5, 1, *top.receptive_field.size)
    t, b, left, r = top.boxes[0].tolist()  # an interior crop equals the image's pixels there
    if t >= 0 and left >= 0 and b <= 28 and r <= 28:
        assert torch.equal(top.patches[0], images[top.indices[0], :, t:b, left:r])


def test_image_with_wrong_channels_is_a_clear_error():
    net = create_model("convnet", width=4)
    with pytest.raises(ValueError, match="3 channel.*expects 1.*grayscale"):
        saliency(net, torch.randn(1, 3, 28, 28), 0)


def test_image_too_small_for_the_model_is_a_clear_error():
    from zoo.interpret.layers import check_images

    net = create_model("lenet5")
    with pytest.raises(ValueError, match=r"size \(8, 8\) do not fit LeNet5"):
        check_images(net, torch.randn(1, 1, 8, 8), try_forward=True)


def test_target_class_out_of_range_is_a_clear_error():
    net = create_model("convnet", width=4)
    with pytest.raises(ValueError, match="target class 10 is out of range: the model has 10 classes"):
        saliency(net, torch.randn(1, 1, 28, 28), 10)
