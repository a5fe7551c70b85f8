"""Overlap-tile inference: seamless for the valid U-Net, blended for padded networks."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from zoo.segmentation import UNet, build_smp, mirror_pad, predict_tiled, predict_whole
from zoo.segmentation.tiling import network_geometry, plan_axis


@pytest.fixture(scope="module")
def small_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, base_channels=4, depth=3).eval()


def test_tiles_equal_one_pass_over_the_whole_mirror_padded_image(small_unet):
    torch.manual_seed(1)
    image = torch.randn(1, 1, 157, 203)  # not a multiple of anything
    tiled = predict_tiled(small_unet, image, tile_size=124, batch_size=3)
    # reference built independently: numpy's mirror padding and a single forward pass
    border = small_unet.border  # 44 for depth 3
    pad_h = small_unet.input_size(157) - 157 - border
    pad_w = small_unet.input_size(203) - 203 - border
    padded = np.pad(image.numpy(), ((0, 0), (0, 0), (border, pad_h), (border, pad_w)), mode="reflect")
    with torch.no_grad():
        whole = small_unet(torch.from_numpy(padded))[..., :157, :203]
    assert tiled.shape == (1, 2, 157, 203)
    plan = plan_axis(157, 124, network_geometry(small_unet))
    assert len(plan.starts) > 1  # really tiled
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(predict_whole(small_unet, image), whole, atol=1e-5, rtol=1e-4)


def test_images_smaller_than_a_tile_and_flips(small_unet):
    image = torch.randn(2, 1, 9, 30)
    out = predict_tiled(small_unet, image, tile_size=124)
    assert out.shape == (2, 2, 9, 30)
    flipped = predict_tiled(small_unet, image, tile_size=124, flips=True)
    assert flipped.shape == out.shape and not torch.allclose(flipped, out)
    assert small_unet.training is False


def test_tiles_are_batched():
    calls = []

    class Recorder(nn.Module):
        size_divisor = 8

        def forward(self, x):
            calls.append(x.shape[0])
            return torch.cat([x, -x], dim=1)

    image = torch.randn(1, 1, 100, 100)
    out = predict_tiled(Recorder(), image, tile_size=32, overlap=8, batch_size=5)
    assert sum(calls) == 16 and max(calls) == 5  # 4 x 4 tiles, 5 per forward pass
    torch.testing.assert_close(out, torch.cat([image, -image], dim=1))  # blending a pointwise net is exact


def test_padded_network_is_blended_and_close_to_the_whole_image_pass():
    # zero-padded convolutions (receptive radius 3): only pixels near a tile edge differ from the whole
    # pass, and the blending gives those pixels little weight
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 2, 3, padding=1),
    ).eval()
    image = torch.randn(1, 1, 150, 170)
    tiled = predict_tiled(net, image, tile_size=64, overlap=16)
    whole = predict_whole(net, image)
    assert tiled.shape == whole.shape == (1, 2, 150, 170)
    # inside the image (the outermost pixels may see mirrored context where the whole pass sees zeros)
    inner = (..., slice(4, -4), slice(4, -4))
    difference = (tiled - whole).abs()[inner]
    assert difference.mean() < 1e-2 * whole.abs().mean()
    assert difference.max() < 0.2 * whole.abs().max()
    # without blending (overlap 0) the seams show
    seams = (predict_tiled(net, image, tile_size=64, overlap=0) - whole).abs()[inner]
    assert seams.max() > 3 * difference.max()


def test_smp_network_tiles_on_its_stride():
    net = build_smp("fpn", 2, 1, "resnet18").eval()
    plan = plan_axis(150, 100, network_geometry(net), overlap=32)
    assert plan.tile % 32 == 0 and len(plan.starts) > 1 and plan.padded >= 150
    assert predict_tiled(net, torch.randn(1, 1, 150, 170), tile_size=100, overlap=32).shape == (
        1,
        2,
        150,
        170,
    )


def test_mirror_pad_beyond_the_image_size():
    x = torch.arange(3.0).view(1, 1, 1, 3)
    out = mirror_pad(x, 0, 0, 5, 4)
    assert out.flatten().tolist() == np.pad(np.arange(3.0), (5, 4), mode="reflect").tolist()
