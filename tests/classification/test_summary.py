"""The layer table: rows, output shapes, and totals that match the model's parameter count."""

from __future__ import annotations

import pytest
import torch.nn as nn

from zoo.classification.summary import main, summarize
from zoo.core.registry import create_model


@pytest.mark.parametrize(
    "name, input_size",
    [
        ("convnet", (1, 1, 28, 28)),
        ("lenet5", (1, 1, 28, 28)),
        ("resnet20", (1, 1, 28, 28)),
        ("resnet18", (1, 3, 64, 64)),  # torchvision
        ("googlenet", (1, 3, 64, 64)),  # its auxiliary heads are not run in eval mode: still counted
        ("seresnet50", (1, 3, 32, 32)),  # timm
    ],
)
@pytest.mark.parametrize("depth", [None, 1])
def test_totals_equal_the_parameter_count(name, input_size, depth):
    summary = summarize(name, input_size, depth=depth, num_classes=10)
    net = create_model(name, num_classes=10, in_channels=input_size[1])
    expected = sum(p.numel() for p in net.parameters())
    assert summary.total_params == expected
    assert sum(row.params for row in summary.rows) == expected
    assert summary.trainable_params == expected and summary.non_trainable_params == 0
    if depth == 1:
        assert {row.depth for row in summary.rows} == {1}
        assert [row.name for row in summary.rows] == [n for n, _ in net.named_children()]


def test_rows_have_names_types_shapes_and_own_parameters():
    summary = summarize("convnet", (2, 1, 28, 28))
    rows = {row.name: row for row in summary.rows}
    first = rows["features.0"]
    assert (first.type, first.output_shape, first.params) == ("Conv2d", [2, 16, 28, 28], 16 * 9)
    assert rows["features.3"].output_shape == [2, 16, 14, 14] and rows["features.3"].params == 0
    assert rows["features"].params == 0  # containers own nothing: no double counting
    assert rows["classifier.2"].output_shape == [2, 10]
    assert summary.mult_adds > 0
    text = str(summary)
    expected = sum(p.numel() for p in create_model("convnet").parameters())
    assert f"Total params: {expected:,}" in text and "MaxPool2d" in text


def test_frozen_parameters_are_reported_as_non_trainable():
    net = create_model("resnet20", in_channels=1)
    net.layer1.requires_grad_(False)
    summary = summarize(net, (1, 1, 28, 28))
    frozen = sum(p.numel() for p in net.layer1.parameters())
    assert summary.non_trainable_params == frozen
    assert summary.model == "CifarResNet"
    with pytest.raises(TypeError, match="create_kwargs"):
        summarize(nn.Linear(2, 2), (1, 2), num_classes=3)


def test_command_line_prints_the_table(capsys):
    summary = main(["lenet5", "--input-size", "1", "1", "28", "28", "--num-classes", "10", "--depth", "2"])
    out = capsys.readouterr().out
    assert "Total params: 61,750" in out  # LeNet-5's documented count
    assert summary.total_params == 61_750
    main(["resnet18", "--input-size", "1", "3", "32", "32", "--arg", "small_input=true", "--json"])
    assert '"total_params": 11' in capsys.readouterr().out
