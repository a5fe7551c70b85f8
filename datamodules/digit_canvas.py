"""A CPU-trainable detection benchmark: real MNIST digits pasted on a blank canvas, saved as a
COCO-format set (images + ``instances_<split>.json``, 10 categories: digit d has id d + 1).

Each canvas gets ``digits_per_image`` digits, each a random MNIST digit (training canvases draw
from MNIST's training split, validation canvases from its test split, so validation digits are
unseen), rescaled by a random factor in ``digit_scale`` and placed at a random position where it
overlaps earlier digits' boxes by at most ``max_overlap`` IoU (rejection sampling). The box is the
tight extent of the digit's ink (pixels > ``ink_threshold``). Everything depends on ``seed`` only.

    python -m datamodules.digit_canvas --out data/digit_canvases --train 2000 --val 300

``DigitCanvasDataModule`` generates the canvases on first use and is otherwise the COCO datamodule.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.coco import COCODetectionDataModule
from datamodules.mnist import MNISTDataModule
from datamodules.paths import resolve_data_dir


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def generate_digit_canvases(
    out_dir: str | Path,
    count: int,
    split: str = "train",
    canvas_size: int = 128,
    digits_per_image: tuple[int, int] = (1, 4),
    digit_scale: tuple[float, float] = (1.0, 2.0),
    max_overlap: float = 0.1,
    ink_threshold: int = 32,
    seed: int = 0,
    mnist_dir: str | None = None,
    progress: bool = True,
) -> Path:
    """Write ``count`` canvases to ``out_dir/<split>/`` and ``out_dir/instances_<split>.json``;
    returns the JSON's path. MNIST is read from ``mnist_dir`` (the MNIST datamodule's search rules,
    no download)."""
    from PIL import Image
    from tqdm import tqdm

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}. Fix: --data.init_args.train_count / val_count >= 1")
    lo, hi = digits_per_image
    if not 1 <= lo <= hi:
        raise ValueError(f"digits_per_image must be (min, max) with 1 <= min <= max, got {digits_per_image}. "
                         "Fix: --data.init_args.digits_per_image [1, 4]")
    if digit_scale[1] * 28 > canvas_size:
        raise ValueError(
            f"digit_scale max {digit_scale[1]} makes a digit of {digit_scale[1] * 28:.0f} px, "
            f"larger than canvas_size={canvas_size}"
        )
    mnist = MNISTDataModule(data_dir=mnist_dir, download=False)
    digits, labels = mnist.load_split(train=split == "train")
    digits, labels = digits[:, 0].numpy(), labels.numpy()
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    out_dir = Path(out_dir)
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(count), desc=f"digit canvases ({split})", disable=not progress):
        canvas = np.zeros((canvas_size, canvas_size), np.uint8)
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(lo, hi + 1))):
            k = int(rng.integers(len(digits)))
            side = max(8, round(28 * float(rng.uniform(*digit_scale))))
            digit = np.asarray(Image.fromarray(digits[k]).resize((side, side), Image.BILINEAR))
            ys, xs = np.nonzero(digit > ink_threshold)
            if not len(xs):
                continue
            for _attempt in range(30):
                x0, y0 = (int(v) for v in rng.integers(0, canvas_size - side + 1, size=2))
                box = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1.0, y0 + ys.max() + 1.0]
                if all(_box_iou(box, b) <= max_overlap for b in boxes):
                    break
            else:
                continue  # no room: fewer digits on this canvas
            region = canvas[y0 : y0 + side, x0 : x0 + side]
            np.maximum(region, digit, out=region)
            boxes.append(box)
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(labels[k]) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })  # fmt: skip
        name = f"{i:06d}.png"
        Image.fromarray(canvas).save(image_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": canvas_size, "height": canvas_size})
    path = out_dir / f"instances_{split}.json"
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
    info = {"description": "MNIST digits on canvases (vision-zoo datamodules.digit_canvas)", "seed": seed}
    path.write_text(json.dumps({"info": info, "images": images, "annotations": annotations, "categories": categories}))
    return path


class DigitCanvasDataModule(COCODetectionDataModule):
    """MNIST digit canvases (see the module docstring) as a COCO detection set, generated into
    ``canvas_dir`` (default ``./data/digit_canvases/<settings hash>``) on first use; ``data_dir``
    is where the MNIST IDX files are. Horizontal flips are off: a mirrored digit is another glyph."""

    def __init__(
        self,
        data_dir: str | None = None,
        canvas_dir: str | None = None,
        train_count: int = 2000,
        val_count: int = 300,
        canvas_size: int = 128,
        digits_per_image: tuple[int, int] = (1, 4),
        digit_scale: tuple[float, float] = (1.0, 2.0),
        max_overlap: float = 0.1,
        seed: int = 0,
        batch_size: int = 8,
        eval_batch_size: int | None = 32,
        num_workers: int = 2,
        augment: bool = True,
        scale_range: tuple[float, float] | None = None,
        crop_size: int | None = None,
        min_visibility: float = 0.5,
    ) -> None:
        self.generator_args: dict[str, Any] = {
            "canvas_size": canvas_size, "digits_per_image": tuple(digits_per_image),
            "digit_scale": tuple(digit_scale), "max_overlap": max_overlap, "seed": seed,
        }  # fmt: skip
        key = hashlib.sha1(json.dumps([self.generator_args, train_count, val_count]).encode()).hexdigest()[:10]
        root = Path(canvas_dir) if canvas_dir else Path("data") / "digit_canvases" / key
        super().__init__(
            data_dir=str(root.resolve()),
            train_images="train", train_annotations="instances_train.json",
            val_images="val", val_annotations="instances_val.json",
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
            augment=augment, hflip_p=0.0, scale_range=scale_range, crop_size=crop_size,
            min_visibility=min_visibility,
        )  # fmt: skip
        self.mnist_dir = str(resolve_data_dir(data_dir))
        self.counts = {"train": train_count, "val": val_count}

    def _category_info(self) -> tuple[list[int], list[str]]:
        # known without generating the canvases (linking num_classes to the model must not wait for them)
        return list(range(1, 11)), [str(d) for d in range(10)]

    def ensure_files(self) -> None:
        for split, count in self.counts.items():
            if not (self.data_dir / f"instances_{split}.json").is_file():
                generate_digit_canvases(self.data_dir, count, split, mnist_dir=self.mnist_dir, **self.generator_args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--canvas-size", type=int, default=128)
    parser.add_argument("--digits", type=int, nargs=2, default=(1, 4))
    parser.add_argument("--scale", type=float, nargs=2, default=(1.0, 2.0))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default $ZOO_DATA_DIR)")
    args = parser.parse_args(argv)
    for split, n in (("train", args.train), ("val", args.val)):
        path = generate_digit_canvases(
            args.out, n, split, args.canvas_size, tuple(args.digits), tuple(args.scale), seed=args.seed,
            mnist_dir=args.data_dir,
        )  # fmt: skip
        print(path)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
