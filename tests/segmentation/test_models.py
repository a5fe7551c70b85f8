"""PSPNet (pyramid bins, dilated encoder, auxiliary loss) and smp architectures by name, offline; encoder
weights read through zoo.core.weights (any file format it reads, errors naming the key)."""

import pytest
import torch

import zoo
from zoo.core.weights import PretrainedWeightsError
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


def test_encoder_weights_load_from_a_local_file_and_a_name_stays_offline_when_told(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="smp-hub/resnet18.imagenet"):
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
    # resnet34 has blocks that resnet18 lacks: the first missing key is named, with the file and the fix
    missing = r"encoder\.pth does not fit the encoder .*'layer1\.2\.conv1\.weight' is not in the file.*encoder_name"
    with pytest.raises(PretrainedWeightsError, match=missing):
        zoo.create_model("smp_unet", num_classes=2, in_channels=1, encoder_name="resnet34", encoder_weights=str(path))


def test_a_wrong_encoder_file_names_the_key_the_shapes_and_the_fix(tmp_path):
    path = tmp_path / "rgb_encoder.pth"
    torch.save(zoo.create_model("smp_unet", num_classes=2, in_channels=3, encoder_name="resnet18").encoder.state_dict(),
               path)
    with pytest.raises(PretrainedWeightsError) as error:
        zoo.create_model("smp_unet", num_classes=2, in_channels=1, encoder_name="resnet18", encoder_weights=str(path))
    message = str(error.value)
    for part in (str(path), "'conv1.weight'", "(64, 3, 7, 7) in the file", "(64, 1, 7, 7) in the network",
                 "Fix: pass the weights of an encoder of the same encoder_name and in_channels"):
        assert part in message, message


def test_encoder_weights_from_safetensors_a_classifier_file_and_a_whole_model(tmp_path):
    from safetensors.torch import save_file

    source = zoo.create_model("smp_fpn", num_classes=2, in_channels=3, encoder_name="resnet18")
    expected = source.encoder.state_dict()
    # .safetensors, as a torchvision / timm classifier file: the encoder's keys plus the classifier head
    classifier = {**{k: v.contiguous() for k, v in expected.items()}, "fc.weight": torch.randn(1000, 512),
                  "fc.bias": torch.randn(1000)}
    save_file(classifier, str(tmp_path / "resnet18.safetensors"))
    # a whole smp model's state dict, wrapped as a zoo checkpoint wraps it (net.encoder.*, net.decoder.*)
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "model.ckpt")
    for name in ("resnet18.safetensors", "model.ckpt"):
        loaded = zoo.create_model(
            "smp_unet", num_classes=2, in_channels=3, encoder_name="resnet18", encoder_weights=str(tmp_path / name)
        )
        for key, value in loaded.encoder.state_dict().items():
            torch.testing.assert_close(value, expected[key], msg=f"{name}: {key}")
