"""The paper's U-Net: sizes, the size helpers and their errors, initialisation, variants."""

import math

import pytest
import torch

import zoo
from zoo.segmentation import UNet, nearest_valid_sizes, unet_input_size, unet_output_size
from zoo.segmentation.models import InvalidInputSizeError


def test_paper_unet_maps_572_to_388():
    net = UNet(num_classes=2, in_channels=1)  # the defaults: 64 base channels, 4 poolings, valid convolutions
    assert sum(p.numel() for p in net.parameters()) == 31_030_658
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_size_helpers_match_the_network():
    assert unet_output_size(572) == 388
    assert unet_input_size(388) == 572
    assert unet_input_size(1) == 188 and unet_output_size(188) == 4  # the smallest valid input of depth 4
    assert nearest_valid_sizes(500) == (492, 508)  # valid inputs of depth 4 are 188 + 16k
    net = UNet(2, 1, base_channels=4, depth=2).eval()
    for size in (44, 48, 92):
        with torch.no_grad():
            assert net(torch.zeros(1, 1, size, size)).shape[-1] == unet_output_size(size, depth=2)
    assert net.border == 20 and net.size_divisor == 4


def test_invalid_size_names_the_nearest_valid_sizes():
    net = UNet(2, 1, base_channels=4, depth=4)
    with pytest.raises(
        InvalidInputSizeError,
        match=r"cannot take input height 500.*even size.*492 \(output 308\) or 508 \(output 324\)",
    ):
        net(torch.zeros(1, 1, 500, 572))
    with pytest.raises(InvalidInputSizeError, match="input width 573"):
        net(torch.zeros(1, 1, 572, 573))
    with pytest.raises(InvalidInputSizeError, match="multiple of 2\\*\\*depth = 16.*496"):
        UNet(2, 1, base_channels=4, padding="same")(torch.zeros(1, 1, 500, 512))


def test_wrong_channel_count_is_an_error():
    with pytest.raises(ValueError, match=r"in_channels=3"):
        UNet(2, 1, base_channels=4, depth=2)(torch.zeros(1, 3, 92, 92))


def test_same_padding_keeps_the_size_and_batch_norm_is_optional():
    net = UNet(3, 3, base_channels=4, depth=3, padding="same", batch_norm=True).eval()
    assert net(torch.zeros(2, 3, 64, 40)).shape == (2, 3, 64, 40)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in UNet(2, 1, 4, 2).modules())


def test_he_initialisation_and_dropout_at_the_end_of_the_contracting_path():
    torch.manual_seed(0)
    net = UNet(2, 1, base_channels=32, depth=3, dropout=0.5)
    conv = net.down[2][2]  # second 3x3 convolution of level 2: N = 9 * 128 incoming nodes
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.05)
    up = net.up[0]  # 2x2 up-convolution with stride 2: N = input channels
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / up.in_channels), rel=0.05)
    assert isinstance(net.dropout, torch.nn.Dropout) and net.dropout.p == 0.5
    assert isinstance(UNet(2, 1, 4, 2, dropout=0).dropout, torch.nn.Identity)


def test_registered_names():
    assert {"unet", "unet_same", "pspnet", "smp_unet", "smp_fpn", "smp_deeplabv3plus"} <= set(
        zoo.list_models(family="segmentation")
    )
    net = zoo.create_model("unet", family="segmentation", num_classes=3, in_channels=1, base_channels=4, depth=2)
    assert isinstance(net, UNet) and net.head.out_channels == 3
