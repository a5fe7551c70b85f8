"""ONNX / TorchScript export with parity on a real test image, and the model card."""

from __future__ import annotations

import json

import pytest
import torch

from zoo import create_model
from zoo.card import build_card
from zoo.card import main as card_main
from zoo.classification import ImageClassifier
from zoo.export import export_checkpoint, export_module


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


def test_export_of_a_model_that_cannot_export_says_why(tmp_path, monkeypatch):
    module = ImageClassifier("lenet5", num_classes=10, in_channels=1)

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator foo")

    monkeypatch.setattr(torch.jit, "trace", refuse)
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
