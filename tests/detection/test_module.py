"""ObjectDetector: learning on real nuclei, `test` from a checkpoint, `predict` output, registry, weight files
(torchvision, zoo classifier checkpoints, whole detectors, safetensors) and the checkpoint identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from zoo import list_models
from zoo.cli import main
from zoo.core.checkpoint import CheckpointError
from zoo.detection import ObjectDetector
from zoo.detection.models import load_backbone_weights

DETECTION_MODELS = [
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "maskrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
]


def test_registry_lists_every_detection_model() -> None:
    import zoo.detection.models  # noqa: F401  (until zoo.core.registry imports the family itself)

    assert list_models(family="detection") == DETECTION_MODELS


def test_short_fit_on_real_nuclei_lowers_the_loss(nuclei: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = nuclei
    data = json.loads(ann.read_text())
    small = [im for im in data["images"] if (im["width"], im["height"]) == (256, 256)][:2]
    ids = {im["id"] for im in small}
    subset = tmp_path / "nuclei2.json"
    subset.write_text(
        json.dumps({**data, "images": small, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]})
    )
    from datamodules.coco import COCODetectionDataModule, collate_detection

    dm = COCODetectionDataModule(train_images=str(images), train_annotations=str(subset), augment=False, num_workers=0)
    dm.setup("fit")
    batch = collate_detection([dm.train_set[i] for i in range(len(dm.train_set))] + [dm.val_set[0]])
    pl.seed_everything(0)
    model = ObjectDetector("ssdlite320_mobilenet_v3_large", num_classes=1, image_size=256,
                           optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))  # fmt: skip
    optimizer = model.configure_optimizers()
    model.train()
    losses = []
    for step in range(12):
        loss = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


def fit_tiny(tiny_coco: Path, tmp_path: Path) -> tuple[list[str], Path]:
    args = [
        "--model", "zoo.detection.ObjectDetector", "--model.network", "ssdlite320_mobilenet_v3_large",
        "--model.image_size", "96", "--model.log_images", "2",
        "--data", "datamodules.coco.COCODetectionDataModule",
        "--data.train_images", str(tiny_coco.parent / "images"), "--data.train_annotations", str(tiny_coco),
        "--data.val_fraction", "0.34", "--data.batch_size", "2", "--data.num_workers", "0",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    main(["fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    return args, ckpt


def test_test_from_checkpoint_prints_coco_table_and_predict_writes_valid_results(
    tiny_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, ckpt = fit_tiny(tiny_coco, tmp_path)
    capsys.readouterr()
    main(["test", *args, "--ckpt_path", str(ckpt)])
    out = capsys.readouterr().out
    assert "Average Precision  @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out and "AP@.5" in out
    # the module logs metrics; the figures are the evaluation report's (beside the checkpoint), written once
    assert not list((tmp_path / "run").glob("*.png"))
    report = ckpt.parent / f"report_{ckpt.stem}_COCODetectionDataModule"
    assert (report / "confusion_matrix.png").is_file() and (report / "pr_curves.png").is_file()

    out_dir = ckpt.parent / f"predict_{ckpt.stem}_COCODetectionDataModule"  # default: beside the checkpoint
    main(["predict", *args, "--ckpt_path", str(ckpt)])
    results = json.loads((out_dir / "predictions.json").read_text())
    assert results and {r["category_id"] for r in results} <= {3, 7, 42}  # COCO ids, not labels
    from pycocotools.coco import COCO

    gt = COCO(str(tiny_coco))
    dt = gt.loadRes(str(out_dir / "predictions.json"))
    assert len(dt.getAnnIds()) == len(results)
    # every detection names the file it was found in: its COCO image id and file name agree with the input JSON
    assert all(Path(r["file_name"]).name == Path(gt.imgs[r["image_id"]]["file_name"]).name for r in results)
    assert len(list(out_dir.glob("*_boxes.png"))) == 2  # the validation images, drawn

    restored = ObjectDetector.load_from_checkpoint(ckpt)
    assert restored.hparams.category_ids == [3, 7, 42]


def test_backbone_initialised_from_local_torchvision_file(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(source.state_dict(), path)
    model = ObjectDetector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, backbone_weights=str(path),
                           trainable_backbone_layers=2)  # fmt: skip
    body = model.net.backbone.body
    assert torch.equal(body["0"][0].weight, source.features[0][0].weight)
    trainable = [n for n, p in body.named_parameters() if p.requires_grad]
    frozen = [n for n, p in body.named_parameters() if not p.requires_grad]
    assert trainable and frozen and all(not n.startswith(("0.", "1.")) for n in trainable)


def test_backbone_file_of_another_architecture_is_an_error(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="resnet18.pth"):
        load_backbone_weights(torchvision.models.mobilenet_v3_large(weights=None), str(path))


def test_backbone_initialised_from_zoo_classifier_checkpoint_without_its_head(tmp_path: Path) -> None:
    from zoo.classification import ImageClassifier

    torch.manual_seed(0)
    classifier = ImageClassifier("mobilenet_v3_large", num_classes=10, in_channels=3)
    path = tmp_path / "classifier.ckpt"  # what Lightning's checkpoint holds, as far as weights go
    torch.save({"state_dict": classifier.state_dict(), "pytorch-lightning_version": pl.__version__}, path)
    model = ObjectDetector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, backbone_weights=str(path))
    body = model.net.backbone.body
    assert torch.equal(body["0"][0].weight, classifier.net.features[0][0].weight)
    assert torch.equal(body["16"][0].weight, classifier.net.features[16][0].weight)


def test_whole_detector_weights_load_except_class_layers_of_another_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = ObjectDetector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3).net
    path = tmp_path / "detector.pth"
    torch.save(source.state_dict(), path)
    target = ObjectDetector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=5, weights=str(path)).net
    assert torch.equal(target.rpn.head.conv[0][0].weight, source.rpn.head.conv[0][0].weight)
    assert torch.equal(target.roi_heads.box_head.fc6.weight, source.roi_heads.box_head.fc6.weight)
    assert target.roi_heads.box_predictor.cls_score.out_features == 6  # fresh: 5 classes + background


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_whole_detector_weights_file_formats_and_the_report_of_class_layers_left_fresh(
    tmp_path: Path, suffix: str
) -> None:
    from safetensors.torch import save_file

    from zoo.detection.models import load_detector_weights

    torch.manual_seed(0)
    source = ObjectDetector("ssdlite320_mobilenet_v3_large", num_classes=2, image_size=64).net
    path = tmp_path / f"detector{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    target = ObjectDetector("ssdlite320_mobilenet_v3_large", num_classes=4, image_size=64).net
    report = load_detector_weights(target, str(path))
    before, after = source.state_dict(), target.state_dict()
    reshaped = {k for k in after if before[k].shape != after[k].shape}
    assert reshaped and set(report.skipped_head) == reshaped  # the class layers of another size: left fresh, listed
    assert all(k.startswith("head.classification_head.") for k in reshaped)
    kept = [k for k in after if k not in reshaped and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(after[k], before[k]) for k in kept)


def test_backbone_initialised_from_safetensors_file(tmp_path: Path) -> None:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet_v3_large.safetensors"
    save_file(source.state_dict(), str(path))
    model = ObjectDetector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, backbone_weights=str(path))
    assert torch.equal(model.net.backbone.body["0"][0].weight, source.features[0][0].weight)


def _save_plain_python_checkpoint(model: pl.LightningModule, path: Path) -> None:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=0)  # fmt: skip
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)


def test_plain_python_checkpoint_names_the_detector_and_is_refused_as_a_segmenter(tmp_path: Path) -> None:
    from zoo.segmentation import SemanticSegmenter

    model = ObjectDetector("ssdlite320_mobilenet_v3_large", num_classes=2, image_size=64)
    path = tmp_path / "detector.ckpt"
    _save_plain_python_checkpoint(model, path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert checkpoint["zoo"]["class_path"] == "zoo.detection.ObjectDetector"
    with pytest.raises(CheckpointError, match=r"zoo\.detection\.ObjectDetector.*SemanticSegmenter"):
        SemanticSegmenter.load_from_checkpoint(path)
    assert isinstance(ObjectDetector.load_from_checkpoint(path), ObjectDetector)


def test_checkpoint_reloads_after_its_weight_files_are_deleted(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    backbone = tmp_path / "mobilenet_v3_large.pth"
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), backbone)
    detector = tmp_path / "detector.pth"
    torch.save(ObjectDetector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2).net.state_dict(), detector)
    model = ObjectDetector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, backbone_weights=str(backbone),
                           weights=str(detector))  # fmt: skip
    path = tmp_path / "trained.ckpt"
    _save_plain_python_checkpoint(model, path)
    backbone.unlink()
    detector.unlink()
    restored = ObjectDetector.load_from_checkpoint(path)
    assert restored.hparams.weights == str(detector) and restored.hparams.backbone_weights == str(backbone)
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
