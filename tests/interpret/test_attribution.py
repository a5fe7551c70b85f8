"""Attribution sanity checks: region localisation, guided-backprop rule, CAM, model randomisation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from zoo import create_model
from zoo.interpret import cam, grad_cam, guided_backprop, occlusion, saliency, smoothgrad

REGION = (slice(4, 12), slice(16, 24))  # rows 4..11, columns 16..23 of a 28x28 image


class LooksAtOneRegion(nn.Module):
    """Multiplies the input by a fixed mask of REGION, then conv (no bias) - ReLU - global pooling -
    linear: nothing outside REGION can change the output."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, 28, 28)
        mask[..., REGION[0], REGION[1]] = 1
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.uniform_(0.1, 1.0)
            self.fc.weight.copy_(torch.tensor([[1.0, 0.5, 1.0, 0.5], [-1.0, -0.5, -1.0, -0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x * self.mask))).flatten(1))


def region_mass(maps: torch.Tensor, margin: int = 0) -> torch.Tensor:
    rows, cols = slice(REGION[0].start - margin, REGION[0].stop + margin), slice(REGION[1].start - margin,
                                                                                  REGION[1].stop + margin)
    inside = maps[..., rows, cols].abs().sum(dim=(1, 2, 3))
    return inside / maps.abs().sum(dim=(1, 2, 3)).clamp_min(1e-12)


@pytest.mark.parametrize("method", [saliency, smoothgrad, occlusion, grad_cam, cam])
def test_maps_of_a_network_that_looks_at_one_region_put_their_mass_there(method):
    torch.manual_seed(0)
    net = LooksAtOneRegion()
    images = torch.rand(4, 1, 28, 28)
    kwargs = {"layer": "conv"} if method in (grad_cam, cam) else {}
    if method is occlusion:
        kwargs = {"patch": 3, "stride": 1}
    maps = method(net, images, 0, **kwargs)
    assert maps.shape == (4, 1, 28, 28)
    assert maps.abs().sum() > 0
    # the region is 64 of 784 pixels (8%). An occluding patch overlapping its edge marks the pixels it
    # covers outside (patch - 1 = 2 pixels): "most" inside, everything within that margin.
    assert (region_mass(maps) > 0.75).all(), region_mass(maps)
    assert (region_mass(maps, margin=2) > 0.999).all(), region_mass(maps, margin=2)


def test_guided_backprop_equals_the_hand_computed_rule_on_a_two_layer_relu_network():
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(12, 16), nn.Linear(16, 3)
    net = nn.Sequential(nn.Flatten(), fc1, nn.ReLU(), fc2)
    x = torch.randn(5, 1, 3, 4)
    target = torch.tensor([0, 1, 2, 0, 1])
    got = guided_backprop(net, x, target)
    # Springenberg et al. 2015, fig. 1: R_l = (f_l > 0) * (R_{l+1} > 0) * R_{l+1}
    h = fc1(x.flatten(1))
    upstream = fc2.weight[target]  # dS_c / d relu(h)
    guided = (h > 0).float() * upstream.clamp_min(0)
    expected = (guided @ fc1.weight).view_as(x)
    assert torch.allclose(got, expected, atol=1e-6)
    plain = ((h > 0).float() * upstream) @ fc1.weight  # the plain gradient differs: the rule is applied
    assert not torch.allclose(got.flatten(1), plain, atol=1e-4)


def test_cam_equals_zhou_weighted_feature_sum_on_a_gap_linear_network():
    torch.manual_seed(0)
    net = LooksAtOneRegion()
    x = torch.rand(2, 1, 28, 28)
    maps = cam(net, x, 1, layer="relu", upsample=False)
    features = net.relu(net.conv(x * net.mask))
    zhou = torch.einsum("k,nkhw->nhw", net.fc.weight[1], features)[:, None]
    assert torch.allclose(maps, zhou / (28 * 28), atol=1e-6)  # Zhou's map over the pooled pixel count
    logits = net(x)[:, 1]
    assert torch.allclose(maps.sum(dim=(1, 2, 3)) + net.fc.bias[1], logits, atol=1e-5)


def test_cam_on_a_network_with_a_nonlinear_head_says_to_use_grad_cam():
    net = create_model("lenet5", modern=True)
    with pytest.raises(ValueError, match="not linear.*Use grad_cam"):
        cam(net, torch.randn(1, 1, 28, 28), 3)


def test_inplace_relus_are_restored_after_attribution():
    net = create_model("convnet", width=4)
    grad_cam(net, torch.randn(1, 1, 28, 28), 0)
    guided_backprop(net, torch.randn(1, 1, 28, 28), 0)
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))


def _randomize(model: nn.Module) -> nn.Module:
    randomized = copy.deepcopy(model)
    torch.manual_seed(1)
    for m in randomized.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return randomized


@pytest.mark.parametrize("method", [saliency, smoothgrad, grad_cam])
def test_maps_of_the_trained_model_differ_from_those_with_randomised_weights(method, trained, test_digits):
    """Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018, sec. 3 (cascading/full
    model-parameter randomisation): a faithful method's maps must change when the weights do."""
    images, labels = test_digits[0][:8], test_digits[1][:8]
    kwargs = {"samples": 8} if method is smoothgrad else {}
    a = method(trained, images, labels, **kwargs).flatten(1)
    b = method(_randomize(trained), images, labels, **kwargs).flatten(1)
    # Spearman rank correlation per image (the paper's similarity measure)
    ra, rb = a.argsort(1).argsort(1).float(), b.argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    spearman = (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))
    assert spearman.mean() < 0.6, spearman
    # and the same model gives the same map (the comparison is not noise)
    assert torch.allclose(method(trained, images, labels, **kwargs).flatten(1), a, atol=1e-5)
