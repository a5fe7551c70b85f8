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


def test_segmenter_report_says_the_isbi_test_split_is_the_validation_slices(isbi_run, tmp_path):
    from zoo.card import build_card

    ckpt, config = isbi_run
    cli = _test(config, ckpt, f"--report_dir={tmp_path}", "--trainer.limit_test_batches=1")
    val = [s.name for s in cli.datamodule.val_samples]
    summary = json.loads((tmp_path / "metrics.json").read_text())
    evaluated = summary["data"]["evaluated_on"]
    assert "validation slices, not a test set" in evaluated and "test labels are not public" in evaluated
    assert f"1 of the {len(val)} validation slices ({val[0]})" in evaluated and "split_seed=0" in evaluated
    overview = (tmp_path / "report.md").read_text().split("## Overview")[1].split("## Summary")[0]
    assert f"Evaluated on {evaluated}." in overview
    assert "datamodules.ISBI2012DataModule (validation slices, not a test split, 1 sample)" in overview
    assert "(test split," not in overview
    assert "validation images" in build_card(ckpt, macs=False)["data"]["evaluated_on"]


def test_evaluated_images_names_the_validation_images_only_when_the_test_loop_ran_on_them():
    from types import SimpleNamespace

    from zoo.evaluation.segmentation import evaluated_images

    def sample(name: str) -> SimpleNamespace:
        return SimpleNamespace(name=name)

    folder = SimpleNamespace(val_samples=[sample("b"), sample("d")], train_samples=[sample("a"), sample("c")],
                             val_size=0.5, split_seed=3)  # fmt: skip
    short, text = evaluated_images(folder, ["d", "b"])
    assert short == "validation images, not a test split"
    assert text.endswith("Images evaluated: all 2 validation images (b, d), chosen from the 4 labelled ones by "
                         "val_size=0.5, split_seed=3")  # fmt: skip
    assert evaluated_images(folder, ["x"]) == ("", "")  # a real test split: nothing to say
    assert evaluated_images(None, ["b"]) == ("", "")
    stated = SimpleNamespace(test_split_description="the held-out scanner B slices")
    assert evaluated_images(stated, ["x"]) == ("not a test split", "the held-out scanner B slices")


def test_segmentation_legends_are_made_from_what_is_drawn():
    import numpy as np

    from zoo.evaluation.segmentation import _class_bars, _overlay_figure
    from zoo.segmentation.plots import OVERLAY_COLOURS, class_colours

    fig = _class_bars(["bg", "cell", "absent"], [["bg", 0.9, 0.95], ["cell", 0.5, 0.6], ["absent", np.nan, np.nan]])
    ax = fig.axes[0]
    for handle, bars in zip(ax.get_legend().legend_handles, ax.containers, strict=True):
        assert {p.get_facecolor() for p in bars.patches} == {handle.get_facecolor()}
    assert [t.get_text() for t in ax.texts] == ["n/a", "n/a"]  # the absent class: no score, not a score of 0

    image = torch.full((1, 8, 8), 0.5)
    image[0, 0, 0], image[0, 0, 1] = 0.0, 1.0  # min-max scaling keeps the other pixels mid-grey
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[2, 2], mask[3, 3] = 1, 2
    colours = class_colours(3, OVERLAY_COLOURS) / 255.0
    fig = _overlay_figure([(0.5, "img", image, mask, mask.clone())], colours, "t", ["bg", "cell", "nucleus"])
    truth = fig.axes[1].images[0].get_array()
    handles = {h.get_label(): h for h in fig.legends[0].legend_handles}
    for label, (y, x) in (("cell", (2, 2)), ("nucleus", (3, 3))):
        assert np.allclose(handles[label].get_facecolor()[:3], truth[y, x], atol=1e-6), label
    assert set(handles) == {"bg (not tinted)", "cell", "nucleus", "error (wrong class)"}
