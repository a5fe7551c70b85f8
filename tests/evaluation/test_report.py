"""``train.py test`` from a checkpoint writes metrics.json (the logged numbers) and the report with valid PNGs,
for classification and segmentation, also on another data set chosen by ``--data.*`` overrides only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from zoo.cli import main
from zoo.evaluation.classification import reliability_bins

PNG = b"\x89PNG\r\n\x1a\n"
QUICK_TEST = ["--trainer.limit_test_batches=2", "--trainer.enable_progress_bar=false"]


def _test(config: Path, ckpt: Path, *extra: str):
    return main(["test", "--config", str(config), f"--ckpt_path={ckpt}", *QUICK_TEST, *extra])


def _assert_report(report_dir: Path, logged: dict, figures: list[str]) -> dict:
    summary = json.loads((report_dir / "metrics.json").read_text())
    assert summary["metrics"].keys() == {k for k in logged}
    for key, value in logged.items():
        assert summary["metrics"][key] == pytest.approx(float(value), abs=0, rel=1e-7), key
    markdown = (report_dir / "report.md").read_text()
    for name in figures:
        assert (report_dir / name).read_bytes()[:8] == PNG, name
        assert f"]({name})" in markdown and f'src="{name}"' in (report_dir / "report.html").read_text()
    return summary


def test_classifier_test_writes_metrics_json_equal_to_logged_metrics_and_the_report(mnist_run, tmp_path):
    ckpt, config = mnist_run
    cli = _test(config, ckpt, f"--report_dir={tmp_path / 'report'}")
    logged = cli.trainer.callback_metrics
    assert {"test/acc", "test/acc_top5", "test/ece", "test/acc_class/3"} <= logged.keys()
    summary = _assert_report(
        tmp_path / "report", logged, ["confusion_matrix.png", "reliability_diagram.png", "misclassified.png"]
    )
    assert summary["num_samples"] == 2000  # 2 test batches of 1000
    # the report's own binning reproduces the ECE that the module logged through torchmetrics
    assert summary["report"]["ece"] == pytest.approx(float(logged["test/ece"]), abs=1e-6)
    confmat = torch.tensor(summary["report"]["confusion_matrix"])
    assert int(confmat.sum()) == 2000
    assert float(confmat.diag().sum() / 2000) == pytest.approx(float(logged["test/acc"]), abs=1e-6)
    assert summary["checkpoint"] == str(ckpt.resolve())


def test_classifier_checkpoint_evaluated_on_fashion_mnist_by_data_overrides_only(mnist_run, fashion_root):
    ckpt, config = mnist_run
    cli = _test(
        config,
        ckpt,
        "--data.class_path=datamodules.FashionMNISTDataModule",
        f"--data.init_args.data_dir={fashion_root}",
    )
    report_dir = (
        ckpt.parent / f"report_{ckpt.stem}_FashionMNISTDataModule"
    )  # default: beside the checkpoint, per data set
    summary = _assert_report(report_dir, cli.trainer.callback_metrics, ["confusion_matrix.png"])
    assert summary["data"]["class_path"] == "datamodules.FashionMNISTDataModule"
    assert "test/acc_class/Sneaker" in summary["metrics"]  # class names linked from the new data set


def test_segmenter_test_writes_metrics_json_per_image_table_and_overlays(isbi_run, tmp_path):
    ckpt, config = isbi_run
    cli = _test(config, ckpt, f"--report_dir={tmp_path}")
    logged = cli.trainer.callback_metrics
    assert {"test/pixel_error", "test/isbi_pixel_error", "test/rand_error", "test/iou_membrane", "test/dice_cell"} <= (
        logged.keys())
    summary = _assert_report(tmp_path, logged, ["per_class_iou_dice.png", "best_overlays.png", "worst_overlays.png"])
    rows = summary["report"]["per_image"]
    assert len(rows) == summary["num_samples"] == 2  # limit_test_batches=2, one whole image per batch
    # the mean of per-image pixel errors equals the logged one (equal-sized images)
    mean_error = sum(r["pixel_error"] for r in rows) / len(rows)
    assert mean_error == pytest.approx(float(logged["test/pixel_error"]), abs=1e-6)
    assert sum(r["rand_error"] for r in rows) / len(rows) == pytest.approx(float(logged["test/rand_error"]), abs=1e-5)
    assert len((tmp_path / "per_image.csv").read_text().strip().splitlines()) == 3


def test_segmenter_checkpoint_evaluated_on_another_folder_by_data_overrides_only(isbi_run, isbi_root, tmp_path):
    import numpy as np
    from PIL import Image

    # another data set: 128x128 crops of ISBI slices as a plain image/mask folder (SegmentationFolderDataModule)
    for sub in ("images", "masks"):
        (tmp_path / "folder" / sub).mkdir(parents=True)
    for i, path in enumerate(sorted((isbi_root / "train/image").glob("*.png"))[:4]):
        image = np.asarray(Image.open(path))[100:228, 200:328]
        label = np.asarray(Image.open(isbi_root / "train/label" / path.name))[100:228, 200:328]
        Image.fromarray(image).save(tmp_path / "folder/images" / f"crop{i}.png")
        Image.fromarray(np.where(label > 127, 255, 0).astype(np.uint8)).save(tmp_path / "folder/masks" / f"crop{i}.png")
    ckpt, config = isbi_run
    cli = _test(
        config,
        ckpt,
        "--data.class_path=datamodules.SegmentationFolderDataModule",
        f"--data.init_args.data_dir={tmp_path / 'folder'}",
        "--data.init_args.image_dir=images",
        "--data.init_args.mask_dir=masks",
        "--data.init_args.val_size=2",
        f"--report_dir={tmp_path / 'r'}",
    )
    summary = _assert_report(tmp_path / "r", cli.trainer.callback_metrics, ["best_overlays.png"])
    assert summary["data"]["class_path"] == "datamodules.SegmentationFolderDataModule"
    assert summary["num_samples"] == 2 and all(r["name"].startswith("crop") for r in summary["report"]["per_image"])


def test_reliability_bins_reproduce_torchmetrics_ece():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 7, generator=generator), dim=1)
    labels = torch.randint(0, 7, (500,), generator=generator)
    confidence, predicted = probs.max(dim=1)
    ours = reliability_bins(confidence, predicted == labels, n_bins=15)
    reference = multiclass_calibration_error(probs, labels, num_classes=7, n_bins=15, norm="l1")
    assert float(ours["ece"]) == pytest.approx(float(reference), abs=1e-6)
    assert int(ours["count"].sum()) == 500
