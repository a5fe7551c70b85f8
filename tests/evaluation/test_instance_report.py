"""The instance segmentation report (zoo.evaluation.instances): written by ``Trainer.test`` of a Mask R-CNN
InstanceDetector on two real DSB2018 images (files, metrics.json keys and ranges, the box part kept), and its
sections on hand-made result dicts of both instance modules (known numbers appear in the markdown)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from PIL import Image

from zoo.evaluation import EvaluationReport
from zoo.evaluation.instances import (
    BENCHMARK_KEYS,
    InstanceDetectionReport,
    InstanceSegmentationReport,
    best_and_worst,
    instance_report,
    instance_result,
)
from zoo.evaluation.report import report_writer_for, write_report_files

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
PNG = b"\x89PNG\r\n\x1a\n"
THRESHOLDS = [round(0.5 + 0.05 * k, 2) for k in range(10)]


@pytest.fixture(scope="module")
def detector_report(tmp_path_factory, dsb_root) -> tuple[Path, pl.Trainer]:
    from datamodules.nuclei_instances import NucleiInstanceDataModule
    from zoo.detection import InstanceDetector

    report_dir = tmp_path_factory.mktemp("instance_report")
    # two validation images (a count), whole: the test split of this datamodule is its validation split
    data = NucleiInstanceDataModule(data_dir=str(dsb_root.parent), val_size=2, num_workers=0)
    model = InstanceDetector(network="maskrcnn_mobilenet_v3_large_fpn", num_classes=1, image_size=128)
    trainer = pl.Trainer(callbacks=[EvaluationReport(report_dir)], limit_test_batches=2, accelerator="cpu", **QUIET)
    trainer.test(model, datamodule=data, verbose=False)
    return report_dir, trainer


def test_the_detector_writer_is_the_instance_writer_not_the_box_writer():
    from zoo.detection import InstanceDetector
    from zoo.segmentation import InstanceSegmenter

    assert report_writer_for(InstanceDetector(num_classes=1, image_size=64)) is InstanceDetectionReport
    assert report_writer_for(InstanceSegmenter(network_kwargs={"base_channels": 2, "depth": 1})) is (
        InstanceSegmentationReport
    )


def test_test_of_mask_rcnn_on_two_dsb_images_writes_the_instance_report(detector_report):
    report_dir, trainer = detector_report
    summary = json.loads((report_dir / "metrics.json").read_text())
    report = summary["report"]
    assert summary["num_samples"] == 2
    # the benchmark numbers: what the module logged, in range
    for key in BENCHMARK_KEYS:
        assert key in report, key
    assert 0.0 <= report["dsb_score"] <= 1.0
    assert report["dsb_score"] == pytest.approx(float(trainer.callback_metrics["test/dsb_score"]), abs=1e-6)
    assert 0.0 <= report["f1_50"] <= 1.0
    for key in ("mask_map", "mask_map_50"):  # nuclei in both images: COCO gives a number, not -1
        assert 0.0 <= report[key] <= 1.0, key
        assert report[key] == pytest.approx(float(trainer.callback_metrics[f"test/{key}"]), abs=1e-6)
    assert isinstance(report["merged"], int) and report["merged"] >= 0
    assert isinstance(report["split"], int) and report["split"] >= 0
    details = report["instances"]
    assert details["dsb"]["images"] == 2 and len(details["per_image"]) == 2
    assert details["dsb"]["thresholds"] == pytest.approx(THRESHOLDS)
    assert len(details["best"]) == 1 and len(details["worst"]) == 1  # two images: one best, one worst, not both twice
    assert set(details["best"]) | set(details["worst"]) == {r["name"] for r in details["per_image"]}
    assert "coco" in report and "per_class" in report  # the detector's box part is kept
    assert summary["data"]["evaluated_on"].startswith("the validation images, not a test set")

    markdown, page = (report_dir / "report.md").read_text(), (report_dir / "report.html").read_text()
    figures = ["dsb_score_vs_iou.png", "best_1.png", "worst_1.png", "per_class_ap.png", "detections.png"]
    assert set(figures) <= set(report["figures"])
    for name in report["figures"]:
        path = report_dir / name
        assert path.read_bytes()[:8] == PNG, name
        with Image.open(path) as image:
            image.verify()
        assert f"]({name})" in markdown and f'src="{name}"' in page, name
    # the outline images are the test images at full size (whole DSB images, not the network's 128 px)
    sizes = {Path(r["path"]).name: Image.open(r["path"]).size for r in details["per_image"]}
    with Image.open(report_dir / "best_1.png") as best:
        assert best.size == sizes[details["best"][0]] and best.mode == "RGB"
    for title in ("## Instance metrics", "## Score against the IoU threshold", "## Merged and split objects",
                  "## Per image (instances)", "## Best and worst images", "## Boxes: COCO metrics"):  # fmt: skip
        assert title in markdown, title
    assert markdown.index("## Instance metrics") < markdown.index("## Boxes: COCO metrics")
    with (report_dir / "instances_per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {"image", "DSB score", "merged", "split", "path"} <= rows[0].keys()


def _dsb_summary() -> dict:
    """A DSBScore.summary() of 3 images, one of them empty (not scored)."""
    tp, fp, fn = [9, 8, 8, 7, 6, 5, 4, 3, 2, 1], [1, 2, 2, 3, 4, 5, 6, 7, 8, 9], [2, 3, 3, 4, 5, 6, 7, 8, 9, 10]
    return {
        "score": 0.4321, "thresholds": THRESHOLDS, "score_per_threshold": [0.8 - 0.07 * k for k in range(10)],
        "tp": tp, "fp": fp, "fn": fn, "f1": [2 * a / (2 * a + b + c) for a, b, c in zip(tp, fp, fn, strict=True)],
        "average_f1": 0.3777, "f1_50": 0.8571, "images": 2, "empty_images": 1, "true_objects": 11,
        "pred_objects": 10, "merged": 3, "merged_objects": 7, "split": 2, "split_pieces": 5,
    }  # fmt: skip


MASK = {"map": 0.2468, "map_50": 0.6543, "map_75": 0.1111, "map_small": -1.0, "mar_100": 0.3}


def _labels(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    for k, (y1, x1, y2, x2) in enumerate(boxes, start=1):
        labels[y1:y2, x1:x2] = k
    return labels


def _detector_result() -> dict:
    """``last_test_result`` as InstanceDetector keeps it (box result + ``instances``)."""
    per_image = [
        {"image": "a.png", "path": "/x/a.png", "dsb_score": 0.9, "true_objects": 2, "predicted_objects": 2,
         "merged": 0, "split": 0},
        {"image": "b.png", "path": "/x/b.png", "dsb_score": 0.125, "true_objects": 9, "predicted_objects": 8,
         "merged": 3, "split": 2},
        {"image": "empty.png", "path": "/x/empty.png", "dsb_score": float("nan"), "true_objects": 0,
         "predicted_objects": 0, "merged": 0, "split": 0},
    ]  # fmt: skip
    truth = _labels((40, 50), [(2, 2, 12, 12), (20, 20, 30, 35)])
    examples = [
        {**row, "pixels": np.random.default_rng(i).random((3, 40, 50)).astype(np.float16), "labels": truth,
         "truth": truth}
        for i, row in enumerate(per_image)
    ]  # fmt: skip
    return {"map": 0.5, "instances": {"dsb": _dsb_summary(), "mask": MASK, "per_image": per_image,
                                      "examples": examples}}  # fmt: skip


def _segmenter_result() -> dict:
    """``last_test_result`` as InstanceSegmenter keeps it (at the top; uint8 (H, W, C) images; best / worst)."""
    truth = _labels((30, 30), [(1, 1, 10, 10)])
    pred = _labels((30, 30), [(1, 1, 10, 12), (20, 20, 25, 25)])

    def example(name: str, score: float) -> dict:
        return {"name": name, "dsb_score": score, "image": np.full((30, 30, 3), 120, np.uint8), "true": truth,
                "pred": pred}  # fmt: skip

    best, worst = example("good", 0.75), example("bad", 0.05)
    rows = [{"name": "good", "path": "/y/good.png", "dsb_score": 0.75, "true_objects": 1, "pred_objects": 2,
             "merged": 0, "split": 1},
            {"name": "bad", "path": None, "dsb_score": 0.05, "true_objects": 1, "pred_objects": 2, "merged": 0,
             "split": 0}]  # fmt: skip
    # two images and examples=3: the segmenter lists both in best and in worst
    return {"mode": "three_class", "dsb": _dsb_summary(), "mask_coco": MASK, "per_image": rows,
            "examples": {"best": [best, worst], "worst": [worst, best]}}  # fmt: skip


def test_the_instance_section_shows_the_numbers_of_the_result(tmp_path):
    instances = instance_result(_detector_result())
    assert instances is not None
    part = instance_report(instances, tmp_path)
    write_report_files(tmp_path, "t", part.sections)
    markdown = (tmp_path / "report.md").read_text()
    assert "| DSB2018 score (mean over images of the mean over IoU .50:.05:.95 of TP / (TP + FP + FN)) | 0.4321 |" in (
        markdown
    )
    assert "| F1 at IoU 0.5 (pooled over images) | 0.8571 |" in markdown
    assert "| mask AP@0.50:0.95 (area all, at most 100 detections) | 0.2468 |" in markdown
    assert "| mask AP@0.50 (area all, at most 100 detections) | 0.6543 |" in markdown
    assert "| mask AP@0.50:0.95 (area small, at most 100 detections) | —, no ground truth |" in markdown  # COCO's -1
    assert "| images without true or predicted objects (not scored) | 1 |" in markdown
    assert "| 0.50 | 0.8000 | 9 | 1 | 2 | 0.8571 |" in markdown  # the threshold table: F1 = 18 / 21
    assert "| 0.95 | 0.1700 | 1 | 9 | 10 | 0.0952 |" in markdown
    assert "| merged predictions (each covers more than half of two or more true objects) | 3 |" in markdown
    assert "| true objects inside those merges | 7 |" in markdown
    assert "| split true objects (two or more predictions each lie more than half inside one) | 2 |" in markdown
    assert "| predictions that are pieces of those splits | 5 |" in markdown
    # per image: worst first, the empty image last with no score
    lines = [line for line in markdown.splitlines() if line.startswith(("| a.png", "| b.png", "| empty.png"))]
    assert lines == ["| b.png | 0.1250 | 9 | 8 | 3 | 2 |", "| a.png | 0.9000 | 2 | 2 | 0 | 0 |",
                     "| empty.png | —, no objects | 0 | 0 | 0 | 0 |"]  # fmt: skip
    # the best and worst images: the unscored one is neither
    assert "Best #1: a.png, DSB score 0.900" in markdown and "Worst #1: b.png, DSB score 0.125" in markdown
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["best_1.png", "dsb_score_vs_iou.png", "worst_1.png"]
    with Image.open(tmp_path / "best_1.png") as image:
        outlines = np.asarray(image)
    assert outlines.shape == (40, 50, 3)
    assert (outlines == (255, 221, 0)).all(axis=-1).any()  # yellow: predicted outlines (here equal to the true)
    data = part.data
    assert {k: data[k] for k in BENCHMARK_KEYS} == {"dsb_score": 0.4321, "f1_50": 0.8571, "mask_map": 0.2468,
                                                     "mask_map_50": 0.6543, "merged": 3, "split": 2}  # fmt: skip
    assert data["instances"]["mask"]["map_small"] == -1.0  # as COCO gave it; the table says what it means
    assert data["instances"]["per_image"][-1]["dsb_score"] is None  # NaN: JSON has none
    json.dumps(data, allow_nan=False)


def test_the_segmenter_result_reads_the_same(tmp_path):
    instances = instance_result(_segmenter_result())
    assert instances is not None
    assert [e["name"] for e in instances.examples] == ["good", "bad"]  # each image once
    assert instances.examples[0]["image"].shape == (3, 30, 30)
    assert instances.examples[0]["image"].max() == pytest.approx(120 / 255)
    assert instances.per_image[0]["predicted_objects"] == 2 and instances.mask["map"] == 0.2468
    best, worst = best_and_worst(instances.examples)
    assert [e["name"] for e in best] == ["good"] and [e["name"] for e in worst] == ["bad"]
    part = instance_report(instances, tmp_path)
    write_report_files(tmp_path, "t", part.sections)
    markdown = (tmp_path / "report.md").read_text()
    assert "| good | 0.7500 | 1 | 2 | 0 | 1 |" in markdown
    # the counts of the caption come from the per-image rows
    assert "Best #1: good, DSB score 0.750 (1 true, 2 predicted objects, 0 merged, 1 split)" in markdown
    assert part.data["dsb_score"] == 0.4321 and part.data["split"] == 2
    assert instance_result(None) is None and instance_result({"map": 0.1}) is None  # a box-only result


def test_test_of_the_unet_route_writes_the_instance_report_and_the_pixel_report(tmp_path):
    """InstanceSegmenter's own result, end to end: perfect probabilities (the 'network output' is the one-hot target)
    score 1.0, and the segmenter's pixel report follows the instance one."""
    import torch
    from torch.utils.data import DataLoader

    from datamodules.instance_targets import three_class_target
    from datamodules.segmentation import collate_segmentation
    from zoo.segmentation import InstanceSegmenter

    class Oracle(InstanceSegmenter):
        def segment(self, images: torch.Tensor, flips: bool = False) -> torch.Tensor:
            return images * 50.0

    items = []
    for k, boxes in enumerate([[(2, 2, 12, 12), (20, 20, 30, 35)], [(5, 30, 25, 45)], []]):
        labels = _labels((40, 50), boxes).astype(np.int32)
        classes = three_class_target(labels)
        onehot = np.eye(3, dtype=np.float32)[classes].transpose(2, 0, 1)
        items.append({"image": torch.from_numpy(onehot), "mask": torch.from_numpy(classes).long(),
                      "name": f"hand_{k}", "instances": torch.from_numpy(labels)})  # fmt: skip
    model = Oracle(network="unet_same", num_classes=3, in_channels=3, network_kwargs={"base_channels": 2, "depth": 1},
                   min_size=0)  # fmt: skip
    trainer = pl.Trainer(callbacks=[EvaluationReport(tmp_path)], **QUIET)
    trainer.test(model, DataLoader(items, batch_size=2, collate_fn=collate_segmentation), verbose=False)
    report = json.loads((tmp_path / "metrics.json").read_text())["report"]
    assert report["dsb_score"] == pytest.approx(1.0) and report["f1_50"] == pytest.approx(1.0)
    assert report["mask_map"] == pytest.approx(1.0) and report["merged"] == report["split"] == 0
    assert report["instances"]["dsb"]["empty_images"] == 1  # hand_2: no objects, not scored
    assert {"best_1.png", "worst_1.png", "dsb_score_vs_iou.png", "per_class_iou_dice.png"} <= set(report["figures"])
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.index("## Instance metrics") < markdown.index("## Pixels: Summary")
    assert "| hand_2 | —, no objects | 0 | 0 | 0 | 0 |" in markdown


def test_best_and_worst_take_three_each_of_many_images():
    examples = [{"name": str(k), "dsb_score": k / 10} for k in range(8)] + [{"name": "x", "dsb_score": math.nan}]
    best, worst = best_and_worst(examples)
    assert [e["name"] for e in best] == ["7", "6", "5"] and [e["name"] for e in worst] == ["0", "1", "2"]
    assert best_and_worst([]) == ([], [])


def test_nan_numbers_anywhere_in_a_report_are_written_as_null():
    import torch

    from zoo.evaluation.report import json_numbers

    assert json_numbers({"iou": [0.5, float("nan")], "per_image": [{"iou": torch.tensor(float("nan"))}]}) == {
        "iou": [0.5, None], "per_image": [{"iou": None}]
    }
