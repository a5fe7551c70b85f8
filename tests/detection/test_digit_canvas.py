"""The digit-canvas generator: deterministic, tight in-canvas boxes around real MNIST ink, valid COCO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.digit_canvas import DigitCanvasDataModule, generate_digit_canvases

INK = 32  # the generator's default ink_threshold


def generate(out: Path, mnist: Path, seed: int = 0, count: int = 8) -> Path:
    return generate_digit_canvases(
        out, count, "val", canvas_size=64, digits_per_image=(1, 3), digit_scale=(1.0, 1.5), seed=seed,
        mnist_dir=str(mnist), progress=False,
    )  # fmt: skip


def test_same_seed_gives_identical_canvases_and_another_seed_differs(data_root: Path, tmp_path: Path) -> None:
    a, b, c = (generate(tmp_path / name, data_root, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert a.read_text() == b.read_text()
    for image in json.loads(a.read_text())["images"]:
        name = image["file_name"]
        assert (a.parent / "val" / name).read_bytes() == (b.parent / "val" / name).read_bytes()
    assert json.loads(a.read_text())["annotations"] != json.loads(c.read_text())["annotations"]


def test_boxes_lie_in_the_canvas_and_hug_the_digits_ink(data_root: Path, tmp_path: Path) -> None:
    path = generate(tmp_path, data_root)
    data = json.loads(path.read_text())
    assert {c["id"] for c in data["categories"]} == set(range(1, 11))
    assert len(data["annotations"]) >= len(data["images"])  # at least one digit per canvas
    for image in data["images"]:
        pixels = np.asarray(Image.open(path.parent / "val" / image["file_name"]))
        assert pixels.shape == (image["height"], image["width"]) == (64, 64)
        covered = np.zeros_like(pixels, bool)
        for ann in (a for a in data["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = ann["bbox"]
            assert min(x, y) >= 0 and x + w <= 64 and y + h <= 64 and w >= 1 and h >= 1
            assert 1 <= ann["category_id"] <= 10 and ann["area"] == pytest.approx(w * h)
            x1, y1, x2, y2 = int(x), int(y), int(x + w), int(y + h)
            crop = pixels[y1:y2, x1:x2] > INK
            # tight: ink on every edge of the box
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
            covered[y1:y2, x1:x2] = True
        assert not (pixels > INK)[~covered].any()  # no ink outside the boxes: no unlabelled digit


def test_canvases_load_in_pycocotools_and_the_datamodule(data_root: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    dm = DigitCanvasDataModule(
        data_dir=str(data_root), canvas_dir=str(tmp_path / "canvases"), train_count=6, val_count=4,
        canvas_size=64, digit_scale=(1.0, 1.5), num_workers=0,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.class_names == [str(d) for d in range(10)]
    assert len(dm.train_set) == 6 and len(dm.val_set) == 4
    gt = COCO(str(tmp_path / "canvases" / "instances_val.json"))
    assert len(gt.getImgIds()) == 4 and len(gt.getAnnIds()) == sum(len(dm.val_set[i][1]["boxes"]) for i in range(4))
