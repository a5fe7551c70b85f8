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
def test_classifier_export_matches_pytorch_on_a_real_test_image(mnist_run, tmp_path, fmt):
    ckpt, _ = mnist_run
    out = tmp_path / f"model.{fmt}"
    report = export_checkpoint(ckpt, fmt, out)
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
    assert card["data"]["class_path"] == "datamodules.MNISTDataModule"
    assert card["training"]["config_file"] == str(config.resolve())
    assert card["software"]["at_training"]["torch"] == str(torch.__version__)
    assert card_main(["--ckpt", str(ckpt), "--no-macs"]) == 0
    printed = capsys.readouterr().out
    assert f"parameters: {expected:,}" in printed and "registry name: `convnet`" in printed
