"""PSPNet (pyramid bins, dilated encoder, auxiliary loss) and smp architectures by name, offline."""

import pytest
import torch

import zoo
from zoo.segmentation import PSPNet


def test_pspnet_pyramid_dilation_and_aux_head():
    net = PSPNet(num_classes=3, in_channels=1, encoder_name="resnet18", head_channels=64)
    assert net.ppm.bins == (1, 2, 3, 6)
    assert [stage[0].output_size for stage in net.ppm.stages] == [1, 2, 3, 6]
    assert net.aux_weight == 0.4
    x = torch.randn(2, 1, 64, 80)
    features = net.encoder(x)
    assert features[-1].shape[-2:] == (8, 10) and features[-2].shape[-2:] == (8, 10)  # output stride 8
    main, aux = net.train()(x)
    assert main.shape == aux.shape == (2, 3, 64, 80)
    assert net.eval()(x).shape == (2, 3, 64, 80)


@pytest.mark.parametrize("name", ["smp_unet", "smp_unetplusplus", "smp_fpn", "smp_deeplabv3plus", "smp_pspnet"])
def test_smp_architectures_by_name(name):
    net = zoo.create_model(name, family="segmentation", num_classes=2, in_channels=1, encoder_name="resnet18")
    assert net.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    assert net.size_divisor in (8, 16, 32)


def test_generic_smp_builder_and_any_encoder():
    net = zoo.create_model(
        "smp", family="segmentation", arch="FPN", num_classes=2, in_channels=3, encoder_name="mobilenet_v2"
    )
    assert net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_encoder_weights_come_only_from_a_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        zoo.create_model("smp_unet", num_classes=2, in_channels=1, encoder_name="resnet18", encoder_weights="imagenet")
    source = zoo.create_model("smp_fpn", num_classes=2, in_channels=1, encoder_name="resnet18")
    path = tmp_path / "encoder.pth"
    torch.save(source.encoder.state_dict(), path)
    loaded = zoo.create_model(
        "smp_unet", num_classes=2, in_channels=1, encoder_name="resnet18", encoder_weights=str(path)
    )
    torch.testing.assert_close(loaded.encoder.conv1.weight, source.encoder.conv1.weight)
    psp = zoo.create_model(
        "pspnet",
        num_classes=2,
        in_channels=1,
        encoder_name="resnet18",
        encoder_weights=str(path),
        head_channels=32,
    )
    torch.testing.assert_close(psp.encoder.conv1.weight, source.encoder.conv1.weight)
    with pytest.raises(ValueError, match="does not fit the encoder"):
        zoo.create_model("smp_unet", num_classes=2, in_channels=1, encoder_name="resnet34", encoder_weights=str(path))
