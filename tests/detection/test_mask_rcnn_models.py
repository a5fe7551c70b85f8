"""The three registered Mask R-CNN builders (He et al. 2017; ``zoo.detection.models``): one soft mask per detection
in eval mode, a mask loss in training, torchvision's architecture parameter for parameter (ResNet-50 ones), and
the MobileNetV3 variant's ``weights`` (a Faster R-CNN MobileNetV3 file: box layers loaded, mask head fresh).

Nothing is downloaded: torchvision's builders get ``weights=None, weights_backbone=None``, weight files are written
to ``tmp_path``. Proposal and detection counts are cut (``SMALL``) so that the ResNet-50 networks run in seconds on
a CPU; the structure under test does not depend on them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision.models.detection as tv_detection

from zoo import create_model

MASK_RCNNS = ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "maskrcnn_mobilenet_v3_large_fpn"]
SIZES = [(64, 80), (72, 64)]  # (H, W): two input sizes in one batch
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
# fewer proposals and sampled RoIs than torchvision's defaults (2000 / 1000 / 512): seconds instead of tens
SMALL = {
    "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 64, "box_detections_per_img": 20,
}  # fmt: skip


def build(name: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, family="detection", num_classes=1, image_size=64, **SMALL, **kwargs)


def targets() -> list[dict[str, torch.Tensor]]:
    masks = torch.zeros(2, *SIZES[0], dtype=torch.uint8)
    masks[0, 4:40, 6:30] = 1
    masks[1, 10:30, 30:70] = 1
    return [
        {
            "boxes": torch.tensor([[6.0, 4.0, 30.0, 40.0], [30.0, 10.0, 70.0, 30.0]]),
            "labels": torch.ones(2).long(),
            "masks": masks,
        },  # fmt: skip
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long(), "masks": torch.zeros(0, *SIZES[1]).byte()},
    ]


@pytest.mark.parametrize("name", MASK_RCNNS)
def test_mask_rcnn_returns_one_soft_mask_per_detection_at_the_input_size(name: str) -> None:
    # box_score_thresh 0: an untrained network's detections are kept, so that there are masks to look at
    net = build(name, box_score_thresh=0.0).eval()
    assert net.roi_heads.has_mask()
    assert net.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2  # nucleus + background
    torch.manual_seed(1)
    with torch.no_grad():
        preds = net([torch.rand(3, h, w) for h, w in SIZES])
    assert len(preds) == len(SIZES)
    for pred, (h, w) in zip(preds, SIZES, strict=True):
        n = len(pred["scores"])
        assert 0 < n <= SMALL["box_detections_per_img"]
        assert pred["boxes"].shape == (n, 4) and pred["labels"].shape == (n,)
        assert pred["masks"].shape == (n, 1, h, w)  # pasted back into each input's own pixels
        assert pred["masks"].dtype == torch.float32
        assert pred["masks"].min() >= 0 and pred["masks"].max() <= 1  # probabilities (sigmoid)
        assert (pred["labels"] == 1).all()


@pytest.mark.parametrize("name", MASK_RCNNS)
def test_mask_rcnn_training_returns_a_mask_loss_that_trains_the_mask_head(name: str) -> None:
    net = build(name).train()
    net.backbone.requires_grad_(False)  # no backbone gradients to compute: the heads' are what is checked
    torch.manual_seed(1)
    losses = net([torch.rand(3, h, w) for h, w in SIZES], targets())
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values()), losses
    assert losses["loss_mask"] > 0
    sum(losses.values()).backward()
    for module in (net.roi_heads.mask_head, net.roi_heads.mask_predictor):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_mask_rcnn_training_refuses_targets_without_masks() -> None:
    # what a box-only detection target gives a Mask R-CNN (torchvision's check): an error, not a silent box loss
    net = build("maskrcnn_mobilenet_v3_large_fpn").train()
    box_only = [{k: v for k, v in t.items() if k != "masks"} for t in targets()]
    with pytest.raises(ValueError, match="masks"):
        net([torch.rand(3, h, w) for h, w in SIZES], box_only)


@pytest.mark.parametrize(
    ("name", "torchvision_builder"),
    [
        ("maskrcnn_resnet50_fpn", tv_detection.maskrcnn_resnet50_fpn),
        ("maskrcnn_resnet50_fpn_v2", tv_detection.maskrcnn_resnet50_fpn_v2),
    ],
)
def test_resnet50_mask_rcnn_has_torchvision_parameters_for_coco_classes(name: str, torchvision_builder) -> None:
    # the zoo counts object classes (90 for COCO), torchvision counts the background too (91)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        zoo_net = create_model(name, family="detection", num_classes=90)
        tv_net = torchvision_builder(weights=None, weights_backbone=None, num_classes=91)
    zoo_count = sum(p.numel() for p in zoo_net.parameters())
    assert zoo_count == sum(p.numel() for p in tv_net.parameters())
    assert zoo_count == {"maskrcnn_resnet50_fpn": 44_454_513, "maskrcnn_resnet50_fpn_v2": 46_359_409}[name]
    # name for name and shape for shape (buffers too): torchvision's COCO files load key for key
    assert {k: v.shape for k, v in zoo_net.state_dict().items()} == {k: v.shape for k, v in tv_net.state_dict().items()}
    assert zoo_net.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 91


def test_resnet50_mask_rcnn_loads_a_coco_mask_rcnn_file_except_its_class_layers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    coco = tv_detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "maskrcnn_coco.pth"
    torch.save(coco.state_dict(), path)
    net = create_model("maskrcnn_resnet50_fpn", family="detection", num_classes=1, weights=str(path))
    state, saved = net.state_dict(), coco.state_dict()
    class_layers = {k for k in state if state[k].shape != saved[k].shape}
    assert class_layers == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.weight", "roi_heads.mask_predictor.mask_fcn_logits.bias",
    }  # fmt: skip
    for key in state.keys() - class_layers:
        assert torch.equal(state[key], saved[key]), key


@pytest.fixture(scope="module")
def faster_rcnn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo Faster R-CNN MobileNetV3 (1 class, seed 1) saved as a plain state dict."""
    torch.manual_seed(1)
    faster = create_model("fasterrcnn_mobilenet_v3_large_fpn", family="detection", num_classes=1)
    path = tmp_path_factory.mktemp("faster") / "fasterrcnn_mobilenet_v3_large_fpn.pth"
    torch.save(faster.state_dict(), path)
    return path


def test_mobilenet_mask_rcnn_takes_box_layers_from_a_faster_rcnn_file_and_a_fresh_mask_head(
    faster_rcnn_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = {k: v for k, v in torch.load(faster_rcnn_file).items() if not k.endswith("num_batches_tracked")}
    with caplog.at_level(logging.INFO):
        loaded = build("maskrcnn_mobilenet_v3_large_fpn", weights=str(faster_rcnn_file)).state_dict()
    fresh = build("maskrcnn_mobilenet_v3_large_fpn").state_dict()  # the same seed, no file
    mask_keys = {k for k in loaded if k.startswith("roi_heads.mask_")}
    assert mask_keys and not mask_keys & saved.keys()
    # every layer of the file (backbone, FPN, RPN, box head and predictor) is the file's
    assert saved.keys() <= loaded.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    assert not torch.equal(loaded["roi_heads.box_predictor.cls_score.weight"], fresh[
        "roi_heads.box_predictor.cls_score.weight"])  # fmt: skip
    # the mask head is the network's own initialisation, untouched by the load
    for key in mask_keys:
        assert torch.equal(loaded[key], fresh[key]), key
    assert "roi_heads.mask_predictor.mask_fcn_logits.weight" in caplog.text  # reported as freshly initialised


def test_mobilenet_mask_rcnn_keeps_fresh_class_layers_from_a_file_of_another_class_count(tmp_path: Path) -> None:
    # torchvision's COCO Faster R-CNN MobileNetV3 has 91 classes: its box predictor cannot fit 1 class
    torch.manual_seed(1)
    coco = create_model("fasterrcnn_mobilenet_v3_large_fpn", family="detection", num_classes=90)
    path = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), path)
    loaded = build("maskrcnn_mobilenet_v3_large_fpn", weights=str(path)).state_dict()
    fresh = build("maskrcnn_mobilenet_v3_large_fpn").state_dict()
    saved = coco.state_dict()
    for key in loaded:
        if key.startswith(("roi_heads.box_predictor.", "roi_heads.mask_")):
            assert torch.equal(loaded[key], fresh[key]), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], saved[key]), key
