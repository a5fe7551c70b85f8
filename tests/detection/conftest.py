"""Fixtures of the detection tests: the real COCO subset and DSB2018 nuclei, and tiny COCO sets
written on the fly (coloured rectangles on noise, non-contiguous category ids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import _require

CATEGORY_IDS = [3, 7, 42]  # non-contiguous on purpose: labels 1, 2, 3


@pytest.fixture(scope="session")
def coco_subset() -> tuple[Path, Path]:
    """(annotation file, images folder) of the 10-image COCO val2017 subset."""
    root = _require("coco_val2017_subset") / "coco_val2017_subset"
    return root / "annotations" / "instances_val2017_subset.json", root / "images"


@pytest.fixture(scope="session")
def nuclei() -> tuple[Path, Path]:
    """(annotation file, images folder) of the DSB2018 nuclei with derived boxes."""
    root = _require("dsb2018_nuclei") / "dsb2018_nuclei"
    return root / "instances_derived.json", root / "stage1_train"


def write_tiny_coco(
    root: Path, num_images: int = 6, size: tuple[int, int] = (96, 80), seed: int = 0, empty_images: int = 1
) -> Path:
    """Images ``root/images/*.png`` with 1-3 filled rectangles each (the last ``empty_images`` have
    none) and ``root/instances.json``; category ids :data:`CATEGORY_IDS`. Returns the JSON path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    colours = {3: (255, 0, 0), 7: (0, 255, 0), 42: (0, 0, 255)}
    for i in range(num_images):
        pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        if i < num_images - empty_images:
            for _ in range(int(rng.integers(1, 4))):
                cat = int(rng.choice(CATEGORY_IDS))
                bw, bh = int(rng.integers(12, 30)), int(rng.integers(12, 30))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                pixels[y : y + bh, x : x + bw] = colours[cat]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat,
                    "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                })  # fmt: skip
        Image.fromarray(pixels).save(root / "images" / f"img{i}.png")
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": w, "height": h})
    categories = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Path:
    return write_tiny_coco(tmp_path / "tiny")
