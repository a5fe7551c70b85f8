"""Detection on MNIST digit canvases, trained from scratch on the CPU under a time budget.

SSDlite320-MobileNetV3 and Faster R-CNN MobileNetV3-FPN (320 variant) are trained on generated
canvases (``datamodules.digit_canvas``: real MNIST digits at random positions and scales, MNIST
test digits on the validation canvases) for ``--minutes`` each, with AdamW and a cosine learning
rate over the time budget, then evaluated with COCO's metrics on the validation canvases.
Target: mAP@.5 >= 0.90 for the better of the two within 20 minutes.

    ZOO_DATA_DIR=../shared/data python bench/digits_detection.py --minutes 20
    python bench/digits_detection.py --minutes 1 --models ssdlite --train-count 200 --val-count 50   # smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import TimeBudget, add_precision_argument, data_dir, markdown_table, validation_metrics, write_json  # noqa: E402
from datamodules.digit_canvas import DigitCanvasDataModule  # noqa: E402
from zoo.detection import ObjectDetector  # noqa: E402

MODELS = {
    "ssdlite": ("ssdlite320_mobilenet_v3_large", {"score_thresh": 0.01, "detections_per_img": 100}, 3e-3),
    "fasterrcnn": (
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        # small anchors for 15-55 px digits; fewer proposals and sampled RoIs: 5x faster steps on a CPU
        {
            "anchor_sizes": [16, 32, 64, 128],
            "rpn_pre_nms_top_n_train": 300,
            "rpn_post_nms_top_n_train": 100,
            "box_batch_size_per_image": 64,
            "rpn_batch_size_per_image": 128,
        },
        1e-3,
    ),
}


def run(key: str, args: argparse.Namespace) -> dict:
    network, kwargs, lr = MODELS[key]
    pl.seed_everything(args.seed, workers=True)
    dm = DigitCanvasDataModule(
        data_dir=data_dir(args.data_dir), canvas_dir=args.canvas_dir, train_count=args.train_count,
        val_count=args.val_count, canvas_size=args.canvas_size, batch_size=args.batch_size,
        num_workers=args.workers, digit_scale=tuple(args.digit_scale), digits_per_image=tuple(args.digits),
    )  # fmt: skip
    lr = args.lr or lr
    if args.optimizer == "sgd":
        optimizer = lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=1e-4, nesterov=True)  # noqa: E731
    else:
        optimizer = lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=1e-4)  # noqa: E731
    model = ObjectDetector(
        network, num_classes=dm.num_classes, class_names=dm.class_names, image_size=args.image_size or args.canvas_size,
        network_kwargs=kwargs, optimizer=optimizer, log_images=0,
    )  # fmt: skip
    budget = TimeBudget(args.minutes * 60, max_lr=lr, warmup=args.warmup)
    trainer, train_s = budget.fit(model, dm, max_epochs=100_000, log_every_n_steps=10, precision=args.precision)
    images = trainer.global_step * args.batch_size
    metrics = validation_metrics(model, dm)
    return {
        "model": key, "network": network, "minutes": args.minutes, "train_seconds": round(train_s, 1),
        "steps": trainer.global_step, "epochs": round(images / args.train_count, 2),
        "train_images_per_s": round(images / train_s, 2), "map_50": metrics["val/map_50"], "map": metrics["val/map"],
        "map_75": metrics["val/map_75"], "mar_100": metrics["val/mar_100"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--models", default="ssdlite,fasterrcnn")
    parser.add_argument("--train-count", type=int, default=4000)
    parser.add_argument("--val-count", type=int, default=300)
    parser.add_argument("--canvas-size", type=int, default=128)
    parser.add_argument("--digits", type=int, nargs=2, default=(1, 4))
    parser.add_argument("--digit-scale", type=float, nargs=2, default=(1.0, 2.0))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: 3e-3 SSDlite, 1e-3 Faster R-CNN")
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of the budget of linear lr warm-up")
    add_precision_argument(parser)
    parser.add_argument("--image-size", type=int, default=None, help="network input size (default: canvas size)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--canvas-dir", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = [run(key, args) for key in args.models.split(",")]
    headers = ["model", "minutes", "steps", "epochs", "train_images_per_s", "map_50", "map", "map_75", "mar_100"]
    print(markdown_table(headers, [[r[h] for h in headers] for r in rows]))
    best = max(rows, key=lambda r: r["map_50"])
    print(f"best: {best['model']} mAP@.5 = {best['map_50']:.3f} (target >= 0.90)")
    path = write_json("digits_detection", {"args": vars(args), "results": rows, "target_map_50": 0.9}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
