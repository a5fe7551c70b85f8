"""ONNX / TorchScript export with parity on a real test image, and the model card."""

from __future__ import annotations

import json

import pytest
import torch

from zoo import create_model
from zoo.card import build_card
from zoo.card import main as card_main
from zoo.classification import ImageClassifier
from zoo.core.checkpoint import load_zoo_module
from zoo.detection import ObjectDetector
from zoo.export import detection_difference, export_checkpoint, export_module


def _break_torch_jit(monkeypatch: pytest.MonkeyPatch, function: str, message: str) -> None:
    """Make ``torch.jit.<function>`` raise ``RuntimeError(message)``, as an exporter that cannot handle a model does."""

    def refuse(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(torch.jit, function, refuse)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_classifier_export_matches_pytorch_on_a_real_test_image(mnist_run, tmp_path, fmt, capfd):
    ckpt, _ = mnist_run
    out = tmp_path / f"model.{fmt}"
    report = export_checkpoint(ckpt, fmt, out)
    printed = capfd.readouterr().out  # what the exporters print (C++ included) is kept from the terminal
    assert "Torch IR graph" not in printed and "[torch.onnx]" not in printed, printed[:500]
    assert report["exported"] and out.is_file()
    assert report["parity"]["max_abs_diff"] <= 1e-4 and report["parity"]["passed"]
    spec = json.loads(out.with_name(out.name + ".json").read_text())
    assert spec["input"]["shape"] == ["batch", 1, 28, 28]
    assert spec["input"]["normalization"]["mean"] == [0.1307]
    assert "MNISTDataModule test split" in spec["input"]["test_image"]


def test_segmenter_onnx_export_matches_pytorch(isbi_run, tmp_path):
    ckpt, _ = isbi_run
    report = export_checkpoint(ckpt, "onnx", tmp_path / "unet.onnx")
    assert report["exported"], report.get("reason")
    assert report["parity"]["passed"] and report["parity"]["same_argmax"]
    assert report["output"]["shape"][1] == 2  # two classes, logits per pixel


def test_segmenter_torchscript_export_matches_pytorch(isbi_run, tmp_path):
    ckpt, _ = isbi_run
    out = tmp_path / "unet.pt"
    report = export_checkpoint(ckpt, "torchscript", out)
    assert report["exported"], report.get("reason")
    assert report["exporter"] == "torch.jit.trace" and report["runtime"] == "torch.jit.load"
    assert report["parity"]["passed"] and report["parity"]["same_argmax"]
    assert report["parity"]["max_abs_diff"] <= report["parity"]["tolerance"] == 1e-3
    assert report["output"]["shape"][1] == 2
    # the file on its own, against the checkpoint's network, on another batch of the exported tile size
    net = load_zoo_module(ckpt).net
    tile = torch.rand(2, *report["input"]["shape"][1:])
    with torch.no_grad():
        expected, got = net(tile), torch.jit.load(str(out))(tile)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_detector_torchscript_export_from_checkpoint_matches_pytorch(digits_detection_run, tmp_path):
    ckpt, _ = digits_detection_run
    out = tmp_path / "ssdlite.pt"
    report = export_checkpoint(ckpt, "torchscript", out)
    assert report["exported"], report.get("reason")
    assert report["exporter"] == "torch.jit.script" and report["parity"]["passed"]
    counts = report["parity"]["num_detections"]
    assert counts["pytorch"] == counts["exported"] > 0  # a real canvas, score_thresh 0.01: detections to compare
    spec = json.loads(out.with_name(out.name + ".json").read_text())
    assert spec["input"]["shape"] == ["list of", 3, "height", "width"]
    assert spec["input"]["category_ids"] == list(range(1, 11)) and spec["input"]["class_names"][0] == "0"
    assert "DigitCanvasDataModule test split" in spec["input"]["test_image"]
    # the file on its own takes a list of images of any size, as ObjectDetector.forward does
    module = load_zoo_module(ckpt)
    images = [torch.rand(3, 72, 56), torch.rand(3, 64, 64)]
    with torch.no_grad():
        expected, got = module(images), torch.jit.load(str(out))(images)
    for e, g in zip(expected, got, strict=True):
        assert detection_difference(e, g) == 0.0


def test_faster_rcnn_onnx_export_matches_pytorch_at_any_image_size(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    module = ObjectDetector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, image_size=64).eval()
    out = tmp_path / "frcnn.onnx"
    report = export_module(module, "onnx", out, torch.rand(1, 3, 64, 80))
    assert report["exported"], report.get("reason")
    assert report["opset"] >= 11 and report["runtime"] == "onnxruntime"
    assert report["parity"]["passed"] and report["parity"]["num_detections"]["pytorch"] > 0
    assert report["input"]["shape"] == [3, "height", "width"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = torch.rand(3, 48, 96)  # another size: height and width are dynamic
    boxes, scores, labels = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        expected = module([image])[0]
    got = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}
    assert len(got["boxes"]) == len(expected["boxes"]) > 0
    assert detection_difference(expected, got) <= 1e-3


def test_detector_that_cannot_export_says_why(tmp_path, monkeypatch):
    module = ObjectDetector("ssdlite320_mobilenet_v3_large", num_classes=2, image_size=64)
    _break_torch_jit(monkeypatch, "script", "Could not compile detector foo")
    report = export_module(module, "torchscript", tmp_path / "d.pt", torch.rand(1, 3, 64, 64))
    assert report["exported"] is False
    assert report["reason"] == "torch.jit.script: RuntimeError: Could not compile detector foo"
    assert json.loads((tmp_path / "d.pt.json").read_text())["reason"] == report["reason"]


def test_detection_difference_ignores_the_order_of_detections_and_counts_them():
    a = {"boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]), "scores": torch.tensor([0.5, 0.5]),
         "labels": torch.tensor([1, 2])}  # fmt: skip
    b = {k: v.flip(0) for k, v in a.items()}
    assert detection_difference(a, b) == 0.0
    b["boxes"] = b["boxes"] + torch.tensor([0.0, 0.25, 0, 0])
    assert detection_difference(a, b) == 0.25
    b["labels"] = torch.tensor([1, 1])  # a detection with no counterpart of its label
    assert detection_difference(a, b) is None
    assert detection_difference(a, {k: v[:1] for k, v in a.items()}) is None


def test_export_of_a_model_that_cannot_export_says_why(tmp_path, monkeypatch):
    module = ImageClassifier("lenet5", num_classes=10, in_channels=1)
    _break_torch_jit(monkeypatch, "trace", "unsupported operator foo")
    report = export_module(module, "torchscript", tmp_path / "m.pt", torch.randn(1, 1, 28, 28))
    assert report["exported"] is False and "unsupported operator foo" in report["reason"]
    assert json.loads((tmp_path / "m.pt.json").read_text())["exported"] is False


def test_card_lists_the_right_parameter_count_and_the_training_config(mnist_run, capsys):
    ckpt, config = mnist_run
    expected = sum(p.numel() for p in create_model("convnet", num_classes=10, in_channels=1, width=16).parameters())
    card = build_card(ckpt)
    assert card["model"]["parameters"] == expected
    assert card["model"]["registry_name"] == "convnet"
    assert card["model"]["macs"]["mult_adds"] > 0
    assert card["model"]["in_channels"] == 1
    assert card["model"]["macs"]["input_size"] == [1, 1, 28, 28]  # MNIST's images, not 224x224
    assert card["data"]["class_path"] == "datamodules.MNISTDataModule"
    assert card["training"]["config_file"] == str(config.resolve())
    assert card["software"]["at_training"]["torch"] == str(torch.__version__)
    assert card_main(["--ckpt", str(ckpt), "--no-macs"]) == 0
    printed = capsys.readouterr().out
    assert f"parameters: {expected:,}" in printed and "registry name: `convnet`" in printed
    architecture = printed.split("## Architecture")[1].split("## Data")[0]
    assert "input channels: 1 (from ImageClassifier.in_channels)" in architecture and "None" not in architecture


def _checkpoint(module: torch.nn.Module, path):
    """``path``: a checkpoint of the untrained ``module`` (what ``build_card`` reads)."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def test_card_of_a_detector_reports_its_input_channels_and_counts_macs_at_its_image_size(tmp_path):
    import torchinfo

    from zoo.card import render_markdown

    module = ObjectDetector("ssdlite320_mobilenet_v3_large", num_classes=2, image_size=128, in_channels=None)
    card = build_card(_checkpoint(module, tmp_path / "ssdlite.ckpt"))
    model = card["model"]
    assert model["in_channels"] == 3 and "first convolution" in model["in_channels_from"]
    assert model["macs"]["input_size"] == [1, 3, 128, 128]
    assert model["macs"]["input_size_from"] == "the hyperparameter image_size"
    at_128 = torchinfo.summary(module.net, input_size=(1, 3, 128, 128), verbose=0, mode="eval").total_mult_adds
    assert model["macs"]["mult_adds"] == at_128
    markdown = render_markdown(card).split("## Data")[0]  # the architecture (the config below may hold None)
    assert "None" not in markdown
    assert "input channels: 3 (from the network's first convolution" in markdown
    assert "for one 1x3x128x128 input (128x128 px; size: the hyperparameter image_size)" in markdown


def test_card_of_a_detector_without_image_size_counts_at_the_size_the_network_resizes_to(tmp_path):
    module = ObjectDetector("ssdlite320_mobilenet_v3_large", num_classes=2)  # SSDlite: a fixed 320x320 input
    card = build_card(_checkpoint(module, tmp_path / "ssdlite.ckpt"))
    assert card["model"]["in_channels"] == 3
    assert card["model"]["macs"]["input_size"] == [1, 3, 320, 320]
    assert "fixed_size" in card["model"]["macs"]["input_size_from"]


def test_card_of_a_generative_model_has_no_none_and_counts_at_its_image_size(tmp_path):
    from zoo.card import render_markdown
    from zoo.generative.gan import GAN
    from zoo.generative.vae import VAE

    vae = build_card(_checkpoint(VAE(image_size=28), tmp_path / "vae.ckpt"))
    assert vae["model"]["in_channels"] == 1
    assert vae["model"]["macs"]["input_size"] == [1, 1, 28, 28] and vae["model"]["macs"]["mult_adds"] > 0
    gan = build_card(_checkpoint(GAN(latent_dim=32), tmp_path / "gan.ckpt"))
    assert gan["model"]["macs"]["input_size"] == [1, 32] and gan["model"]["macs"]["mult_adds"] > 0
    for card in (vae, gan):
        markdown = render_markdown(card).split("## Data")[0]
        assert "None" not in markdown and "unknown" not in markdown, markdown


def test_card_says_why_when_the_input_channels_are_unknown():
    from zoo.card import _channels, input_channels_for

    class NoConvolution(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

    channels, why = input_channels_for(NoConvolution(), {})
    assert channels is None
    assert why.startswith("unknown:") and "no run config" in why and "no convolution" in why
    line = _channels({"in_channels": "unknown", "in_channels_from": why})
    assert line == why and "None" not in line
