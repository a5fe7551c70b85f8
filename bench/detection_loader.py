"""Is the COCO datamodule fast enough to feed a detector? Images/s of its training loader (decode +
box-aware albumentations + collate) at 0 and 2 workers, against the images/s of the detector's
training steps (forward, backward, optimizer step) on batches already in memory. The loader is not
the bottleneck when its images/s exceeds the detector's (``ratio`` > 1).

Data: the DSB2018 nuclei (variable-size PNGs, up to 289 boxes each) with the nuclei benchmark's
augmentation (flip, scale 0.75-1.25, 256-px crop) and detector (Faster R-CNN MobileNetV3-Large-FPN
at 512 px); or ``--data coco`` (the COCO val2017 subset, JPEGs, no crop, Faster R-CNN at 512 px).

    ZOO_DATA_DIR=../shared/data python bench/detection_loader.py
    python bench/detection_loader.py --batches 5 --steps 2      # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import data_dir, markdown_table, write_json  # noqa: E402
from datamodules.coco import COCODetectionDataModule  # noqa: E402
from zoo.detection import ObjectDetector  # noqa: E402

DATA = {
    "nuclei": {
        "train_images": "dsb2018_nuclei/stage1_train", "train_annotations": "dsb2018_nuclei/instances_derived.json",
        "crop_size": 256,
    },
    "coco": {
        "train_images": "coco_val2017_subset/images",
        "train_annotations": "coco_val2017_subset/annotations/instances_val2017_subset.json", "crop_size": None,
    },
}  # fmt: skip
NETWORK_KWARGS = {"anchor_sizes": [8, 16, 32, 64, 128], "box_detections_per_img": 300}


def datamodule(args: argparse.Namespace, workers: int) -> COCODetectionDataModule:
    dm = COCODetectionDataModule(
        data_dir=data_dir(args.data_dir), val_fraction=0.1, batch_size=args.batch_size, num_workers=workers,
        hflip_p=0.5, scale_range=(0.75, 1.25), **DATA[args.data],
    )  # fmt: skip
    dm.setup("fit")
    return dm


def loader_rate(args: argparse.Namespace, workers: int) -> dict:
    """Images/s over ``--batches`` batches after the first (worker start-up is reported apart)."""
    loader = datamodule(args, workers).train_dataloader()
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for batch in islice(it, args.batches):
        images += len(batch["images"])
    seconds = time.perf_counter() - start
    del it
    return {"workers": workers, "images": images, "seconds": round(seconds, 2),
            "images_per_s": round(images / seconds, 2), "first_batch_s": round(first, 2)}  # fmt: skip


def train_rate(args: argparse.Namespace) -> dict:
    """Images/s of ``--steps`` training steps on preloaded batches (after one warm-up step)."""
    dm = datamodule(args, 0)
    torch.manual_seed(0)
    batches = list(islice(iter(dm.train_dataloader()), args.steps + 1))
    model = ObjectDetector(args.network, num_classes=dm.num_classes, image_size=args.image_size,
                           network_kwargs=NETWORK_KWARGS, log_images=0)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    seconds, images = 0.0, 0
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16-mixed"):
            targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch["targets"]]  # crowd-free (train)
            loss = sum(model.net(batch["images"], targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i > 0:  # the first step allocates
            seconds += time.perf_counter() - start
            images += len(batch["images"])
    return {"network": args.network, "image_size": args.image_size, "precision": args.precision,
            "images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(DATA), default="nuclei")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=30, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=8, help="training steps timed")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--network", default="fasterrcnn_mobilenet_v3_large_fpn")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    loaders = [loader_rate(args, w) for w in args.workers]
    train = train_rate(args)
    rows = [[f"loader, {r['workers']} workers", r["images_per_s"], round(r["images_per_s"] / train["images_per_s"], 2),
             r["first_batch_s"]] for r in loaders]  # fmt: skip
    rows.append([f"train {args.network} @{args.image_size} ({args.precision})", train["images_per_s"], 1.0, None])
    print(markdown_table(["what", "images_per_s", "ratio_to_training", "first_batch_s"], rows))
    bottleneck = all(r["images_per_s"] < train["images_per_s"] for r in loaders if r["workers"] >= 2)
    print("loader is the bottleneck" if bottleneck else "loader is not the bottleneck")
    payload = {"args": vars(args), "loader": loaders, "train": train, "loader_is_bottleneck": bottleneck}
    print(f"wrote {write_json('detection_loader', payload, args.out)}")


if __name__ == "__main__":
    main()
