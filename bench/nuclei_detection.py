"""Nucleus detection on DSB2018 (boxes derived from the instance masks), trained from scratch on the
CPU under a wall-clock budget, evaluated with COCO's metrics (Lin et al. 2014) on a held-out split.

Faster R-CNN (Ren et al. 2015) on MobileNetV3-Large-FPN by default, with anchors down to 8 px (the
nuclei are 5-40 px) and up to 300 detections per image (an image holds up to 289 nuclei). The
validation split is ``--val-fraction`` of the 119 images, chosen by ``--split-seed`` (the datamodule's
``split_records``: the same split as ``configs/detection/nuclei_fasterrcnn_mobilenet.yaml``).
Training images are randomly flipped, rescaled and cropped to ``--crop`` px (box-aware albumentations);
the learning rate follows a linear warm-up and a cosine decay over the time budget.

    ZOO_DATA_DIR=../shared/data python bench/nuclei_detection.py              # 20 minutes
    python bench/nuclei_detection.py --minutes 0.5                              # smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import TimeBudget, data_dir, markdown_table, validation_metrics, write_json  # noqa: E402
from datamodules.coco import COCODetectionDataModule  # noqa: E402
from zoo.detection import ObjectDetector  # noqa: E402

NETWORK_KWARGS = {
    "fasterrcnn_mobilenet_v3_large_fpn": {
        "anchor_sizes": [8, 16, 32, 64, 128],
        "box_detections_per_img": 300,
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 1000,
        "rpn_post_nms_top_n_test": 500,
        "box_batch_size_per_image": 256,
    },
    "fasterrcnn_mobilenet_v3_large_320_fpn": {
        "anchor_sizes": [8, 16, 32, 64, 128],
        "box_detections_per_img": 300,
        "rpn_pre_nms_top_n_test": 1000,
        "rpn_post_nms_top_n_test": 500,
    },
    "ssdlite320_mobilenet_v3_large": {"detections_per_img": 300},
}


def run(args: argparse.Namespace) -> dict:
    pl.seed_everything(args.seed, workers=True)
    dm = COCODetectionDataModule(
        data_dir=data_dir(args.data_dir), train_images="dsb2018_nuclei/stage1_train",
        train_annotations="dsb2018_nuclei/instances_derived.json", val_fraction=args.val_fraction,
        split_seed=args.split_seed, batch_size=args.batch_size, eval_batch_size=2, num_workers=args.workers,
        hflip_p=0.5, scale_range=(0.75, 1.25), crop_size=args.crop,
    )  # fmt: skip
    model = ObjectDetector(
        args.network, num_classes=dm.num_classes, class_names=dm.class_names, image_size=args.image_size,
        network_kwargs=NETWORK_KWARGS.get(args.network, {}), log_images=0,
        optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr, weight_decay=1e-4),
    )  # fmt: skip
    budget = TimeBudget(args.minutes * 60, max_lr=args.lr, warmup=0.05)
    trainer, train_s = budget.fit(model, dm, max_epochs=100_000, log_every_n_steps=10, precision=args.precision)
    metrics = validation_metrics(model, dm)
    images = trainer.global_step * args.batch_size
    return {
        "network": args.network, "minutes": args.minutes, "train_seconds": round(train_s, 1),
        "steps": trainer.global_step, "epochs": round(images / len(dm.train_set), 2),
        "train_images": len(dm.train_set), "val_images": len(dm.val_set),
        "val_nuclei": sum(len(r.boxes) for r in dm.val_set.records),
        "train_images_per_s": round(images / train_s, 2), "map_50": metrics["val/map_50"], "map": metrics["val/map"],
        "map_75": metrics["val/map_75"], "map_small": metrics["val/map_small"], "mar_100": metrics["val/mar_100"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget (wall clock)")
    parser.add_argument("--network", default="fasterrcnn_mobilenet_v3_large_fpn", choices=sorted(NETWORK_KWARGS))
    parser.add_argument("--image-size", type=int, default=512, help="network input size (min = max side)")
    parser.add_argument("--crop", type=int, default=256, help="training crop (px, before the network's resize)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed (CPU autocast)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    row = run(args)
    headers = ["network", "minutes", "steps", "epochs", "train_images_per_s", "val_images", "val_nuclei",
               "map_50", "map", "map_75", "mar_100"]  # fmt: skip
    print(markdown_table(headers, [[row[h] for h in headers]]))
    path = write_json("nuclei_detection", {"args": vars(args), "results": [row]}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
