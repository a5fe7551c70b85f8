"""One sweep over every registered detector: training-mode losses and eval-mode detections at tiny
input sizes (the construction, the class count and the resizing back to each input's size)."""

from __future__ import annotations

import pytest
import torch

from zoo import create_model, list_models

NUM_CLASSES = 3
# the smallest input each network takes quickly; SSD300's extra layers need >= 300 px
IMAGE_SIZE = {"ssd300_vgg16": 300}
SIZES = [(64, 80), (72, 64)]  # (H, W): inputs of different sizes in one batch


def _targets(masks: bool = False) -> list[dict[str, torch.Tensor]]:
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},  # a negative image
    ]
    if masks:  # Mask R-CNN: each object's mask fills its box
        for target, (h, w) in zip(targets, SIZES, strict=True):
            target["masks"] = torch.zeros((len(target["boxes"]), h, w), dtype=torch.uint8)
            for mask, (x1, y1, x2, y2) in zip(target["masks"], target["boxes"].int().tolist(), strict=True):
                mask[y1:y2, x1:x2] = 1
    return targets


def _num_scores(net: torch.nn.Module) -> int:
    if hasattr(net, "roi_heads"):  # Faster R-CNN
        return net.roi_heads.box_predictor.cls_score.out_features
    return net.head.classification_head.num_columns  # SSD: scores per default box


@pytest.mark.parametrize("name", list_models(family="detection"))
def test_detector_trains_and_predicts_at_a_small_size(name: str) -> None:
    torch.manual_seed(0)
    net = create_model(name, family="detection", num_classes=NUM_CLASSES, image_size=IMAGE_SIZE.get(name, 64))
    assert _num_scores(net) == NUM_CLASSES + 1  # the background is class 0
    images = [torch.rand(3, h, w) for h, w in SIZES]

    net.train()
    losses = net(images, _targets(masks=name.startswith("maskrcnn")))
    assert losses and all(torch.isfinite(v) and v.requires_grad for v in losses.values()), losses
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())

    net.eval()
    with torch.no_grad():
        preds = net(images)
    assert len(preds) == len(images)
    for pred, (h, w) in zip(preds, SIZES, strict=True):
        boxes, scores, labels = pred["boxes"], pred["scores"], pred["labels"]
        assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape
        assert ((labels >= 1) & (labels <= NUM_CLASSES)).all()
        # boxes come back in the input's own pixels, whatever size the network resized to
        assert (boxes[:, 0::2] <= w + 1e-3).all() and (boxes[:, 1::2] <= h + 1e-3).all() and (boxes >= 0).all()


def test_unknown_detector_name_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="ssdlite320_mobilenet_v3_large"):
        create_model("ssdlite320_mobilenet", family="detection", num_classes=2)


def test_ssd300_refuses_inputs_below_300_px() -> None:
    with pytest.raises(ValueError, match="image_size >= 300"):
        create_model("ssd300_vgg16", family="detection", num_classes=2, image_size=128)
