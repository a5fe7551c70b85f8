"""Instance segmentation of the DSB2018 nuclei, scored as the 2018 Data Science Bowl scored it (Caicedo et al. 2019):
each route trained from scratch on the CPU for the same budget of CPU time, evaluated on the validation images
(the 24 images ``DSB2018DataModule`` / ``NucleiInstanceDataModule`` hold out with ``val_size 0.2``, ``split_seed 0``).

Routes (``--route``):

- ``maskrcnn``: Mask R-CNN (He et al. 2017), MobileNetV3-Large-FPN (``zoo.detection.InstanceDetector``), 256-px
  training crops resized to ``--image-size``.
- ``unet3``: the U-Net with the 3-class target (background / interior / boundary), then seeded watershed
  (``zoo.segmentation.InstanceSegmenter``; ``zoo.segmentation.instances``).
- ``unet_weightmap``: the same U-Net with the 2-class target and the paper's weight map (Ronneberger et al. 2015,
  eq. 2), then the 2-class post-processing; ``unet2``: the same without the weight map (the weight map's effect on
  the metric it was designed for).
- ``baselines`` (no training): Gaussian smoothing + Otsu's threshold + connected components, and the ground-truth
  union mask split by connected components (the ceiling of any method that cannot separate touching nuclei); and
  the post-processing's time per megapixel.

Every training route uses ``bench._common.TimeBudget`` (linear warm-up, cosine decay over the budget) on the
process's **CPU time** (``--clock cpu``, the default; data loading in the process, ``--workers 0``, so it is
counted too): routes that share the machine, or run beside other jobs, each get the same computation. Each is
scored with its **last** weights (no checkpoint is selected on the validation images, which are the reported ones).
The U-Net routes' watershed parameters (thresholds, seed rule) are chosen after training on 24 **training** images
(``--select-on``; the grid is ``POSTPROCESSING_GRID``), written into the saved checkpoint, and then the validation
images are scored once. Mask mAP counts at most ``--mask-max-detections`` instances per image (COCO's 100 by
default, the definition the published figures use; an image holds up to 289 nuclei, so a note is logged: the DSB
score counts every instance). Routes run as separate processes (``--threads 1`` each: four share this 2-core machine);
``--collect`` merges their JSON files into one table.

    ZOO_DATA_DIR=../shared/data python bench/nuclei_instances.py --route maskrcnn --minutes 30 --threads 1
    python bench/nuclei_instances.py --route baselines
    python bench/nuclei_instances.py --collect            # table + bench/results/nuclei_instances.json
    python bench/nuclei_instances.py --route unet3 --minutes 0.5   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import (  # noqa: E402
    RESULTS,
    TimeBudget,
    add_precision_argument,
    cache_dir,
    data_dir,
    markdown_table,
    validation_metrics,
    write_json,
)

ROUTES = ("maskrcnn", "unet3", "unet_weightmap", "unet2", "baselines")
PART = "nuclei_instances_{route}"


def maskrcnn(args: argparse.Namespace) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    from datamodules.nuclei_instances import NucleiInstanceDataModule
    from zoo.detection import InstanceDetector

    dm = NucleiInstanceDataModule(data_dir=data_dir(args.data_dir), crop_size=256, crops_per_image=2,
                                  batch_size=args.batch_size, num_workers=args.workers)  # fmt: skip
    model = InstanceDetector(
        "maskrcnn_mobilenet_v3_large_fpn", num_classes=1, class_names=["nucleus"], image_size=args.image_size,
        network_kwargs={"anchor_sizes": [8, 16, 32, 64, 128], "box_detections_per_img": 300,
                        "rpn_post_nms_top_n_train": 1000},
        optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr, weight_decay=1e-4), log_images=0,
        mask_max_detections=args.mask_max_detections,
    )  # fmt: skip
    return model, dm


def unet(args: argparse.Namespace, target: str, weight_map: bool) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The U-Net routes, built from the shipped config's arguments (what a user runs)."""
    import yaml

    from zoo.core.checkpoint import import_class

    name = "nuclei_unet_instances.yaml" if target == "three_class" else "nuclei_unet_weightmap_instances.yaml"
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "instance" / name).read_text())
    data_args = {**config["data"]["init_args"], "data_dir": data_dir(args.data_dir), "num_workers": args.workers}
    model_args = {**config["model"]["init_args"], "mask_max_detections": args.mask_max_detections}
    if not weight_map:
        model_args = _without_weight_map(model_args, data_args)
    optimizer = model_args.pop("optimizer", None)
    model_args.pop("lr_scheduler", None)
    lr = float((optimizer or {}).get("init_args", {}).get("lr", args.lr))
    dm = import_class(config["data"]["class_path"])(**data_args)
    linked = {name: getattr(dm, name) for name in ("num_classes", "in_channels", "class_names")}  # as train.py links
    model = import_class(config["model"]["class_path"])(
        **model_args, **linked, optimizer=lambda p: torch.optim.Adam(p, lr=lr)
    )
    model._bench_lr = lr
    return model, dm


def _without_weight_map(model_args: dict[str, Any], data_args: dict[str, Any]) -> dict[str, Any]:
    """The weight-map config with plain (unweighted) cross-entropy: the same network, data and schedule."""
    model_args = dict(model_args)
    data_args["weight_maps"] = False
    model_args["loss"] = "ce"
    return model_args


def train_route(args: argparse.Namespace) -> dict[str, Any]:
    pl.seed_everything(args.seed, workers=True)
    if args.route == "maskrcnn":
        model, dm = maskrcnn(args)
        max_lr = args.lr
    else:
        target = "three_class" if args.route == "unet3" else "two_class"
        model, dm = unet(args, target, weight_map=args.route != "unet2")
        max_lr = model._bench_lr
    budget = TimeBudget(args.minutes * 60, max_lr=max_lr, warmup=0.05, clock=args.clock)
    trainer, train_s = budget.fit(model, dm, max_epochs=100_000, log_every_n_steps=10, precision=args.precision)
    train_cpu_s = budget.elapsed()
    selected = select_postprocessing(model, dm, args.select_on) if args.route != "maskrcnn" else None
    checkpoint = cache_dir() / f"nuclei_instances_{args.route}.ckpt"
    trainer.save_checkpoint(checkpoint)  # the last weights: `train.py test --ckpt_path` writes their full report
    start = time.perf_counter()
    metrics = validation_metrics(model, dm)
    evaluation_s = time.perf_counter() - start
    args.trained = (model, dm)  # for the figure, drawn after the results are written
    return {
        "route": args.route, "minutes": args.minutes, "threads": torch.get_num_threads(), "precision": args.precision,
        "clock": args.clock, "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu_s, 1),
        "steps": trainer.global_step, "evaluation_seconds": round(evaluation_s, 1),
        "dsb_score": metrics.get("val/dsb_score"), "mask_map": metrics.get("val/mask_map"),
        "mask_map_50": metrics.get("val/mask_map_50"), "f1_50": metrics.get("val/f1_50"),
        "parameters": sum(p.numel() for p in model.parameters()), "checkpoint": str(checkpoint),
        "postprocessing": selected,
    }  # fmt: skip


POSTPROCESSING_GRID = {
    "three_class": [
        {"foreground_threshold": f, "interior_threshold": i, "elevation": e, "min_seed_size": m}
        for f in (0.4, 0.5, 0.6) for i in (0.3, 0.4, 0.5, 0.6, 0.7) for e in ("probability", "distance")
        for m in (3, 10)
    ],
    "two_class": [
        {"foreground_threshold": f, "seed_method": "erosion", "erosion": e} for f in (0.4, 0.5, 0.6) for e in range(6)
    ] + [
        {"foreground_threshold": f, "seed_method": "maxima", "h": h} for f in (0.4, 0.5, 0.6) for h in (1.0, 2.0, 3.0)
    ],
}  # fmt: skip


def select_postprocessing(model: pl.LightningModule, dm: pl.LightningDataModule, count: int) -> dict[str, Any] | None:
    """Choose the watershed's parameters on the first ``count`` **training** images (whole, unaugmented) by their
    DSB score, and set them on ``model`` (its post-processor and hyperparameters, so the saved checkpoint and
    ``train.py test`` use them). The validation images, which are reported, play no part. ``count`` 0: keep the
    config's parameters. Returns the chosen parameters with their training-image score and the config's."""
    import dataclasses

    from datamodules.segmentation import SegmentationImages
    from zoo.core.instance_metrics import dsb_score
    from zoo.segmentation.instances import instances_from_probabilities

    if count <= 0:
        return None
    model.eval()
    samples = dm.train_samples[:count]
    images = SegmentationImages(samples, dm.mean, dm.std)
    probs, truths = [], []
    with torch.no_grad():
        for item in images:
            probs.append(model.segment(item["image"][None]).float().softmax(1)[0].numpy())
            truths.append(item["instances"].numpy())
    config = dataclasses.asdict(model.postprocessor)

    def score(params: dict[str, Any]) -> float:
        merged = {**config, **params}
        labels = [instances_from_probabilities(p, **merged) for p in probs]
        return float(np.mean([dsb_score(lab, t) for lab, t in zip(labels, truths, strict=True)]))

    scored = [(score(params), params) for params in POSTPROCESSING_GRID[model.postprocessor.mode]]
    best_score, best = max(scored, key=lambda pair: pair[0])
    model.postprocessor = dataclasses.replace(model.postprocessor, **best)
    model.hparams.update(best)
    return {**best, "training_images": len(samples), "training_dsb_score": round(best_score, 4),
            "config_training_dsb_score": round(score({}), 4)}  # fmt: skip


def save_figure(model: pl.LightningModule, dm: pl.LightningDataModule, path: Path) -> None:
    """Outlines of the true (green) and predicted (yellow) nuclei on the validation image with the most nuclei
    touching (the most objects per pixel), side by side with the image."""
    from PIL import Image

    from datamodules.instance_targets import labels_from_masks
    from zoo.core.instances import draw_outlines

    model.eval()
    if not hasattr(model, "instance_labels"):
        return save_unet_figure(model, dm, path)
    loader = dm.val_dataloader()
    best = None
    for batch in loader:
        for image, target in zip(batch["images"], batch["targets"], strict=True):
            density = len(target["masks"]) / image.shape[-1] / image.shape[-2]
            if best is None or density > best[0]:
                best = (density, image, target)
    assert best is not None
    _, image, target = best
    with torch.no_grad():
        labels, _ = model.instance_labels(model.net([image])[0])
    truth = labels_from_masks(target["masks"].numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_outlines(image, labels.cpu().numpy(), truth)).save(path)
    print(f"wrote {path}")


def baselines(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The two routes without training, and the post-processing's speed, on the same validation images."""
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu

    from datamodules.instance_targets import labels_from_masks, three_class_target
    from datamodules.nuclei_instances import NucleiInstanceDataModule
    from zoo.core.instance_metrics import COCOMaskMetrics, DSBScore
    from zoo.segmentation.instances import InstancePostprocessor

    dm = NucleiInstanceDataModule(data_dir=data_dir(args.data_dir), num_workers=0)
    dm.setup("validate")
    rows = []
    otsu = (DSBScore(), COCOMaskMetrics(max_detections=args.mask_max_detections))
    union = (DSBScore(), COCOMaskMetrics(max_detections=args.mask_max_detections))
    postprocess_s, megapixels = 0.0, 0.0
    postprocessor = InstancePostprocessor(mode="three_class")
    for image, target, _ in dm.val_set:
        truth = torch.from_numpy(labels_from_masks(target["masks"].numpy()))
        gray = image.mean(0).numpy()
        if gray.mean() > 0.5:  # brightfield / histology: nuclei darker than the background
            gray = 1 - gray
        smooth = gaussian(gray, sigma=1.0)
        labels = ndimage.label(smooth > threshold_otsu(smooth))[0]
        for metric_pair, predicted in ((otsu, labels), (union, ndimage.label(truth.numpy() > 0)[0])):
            predicted = torch.from_numpy(predicted.astype(np.int32))
            metric_pair[0].update([predicted], [truth])
            count = int(predicted.max())
            metric_pair[1].update([{"labels_image": predicted, "scores": torch.ones(count)}],
                                  [{"labels_image": truth}])  # fmt: skip
        # the post-processing's speed on a perfect 3-class probability map of this image
        classes = three_class_target(truth.numpy())
        probs = np.eye(3, dtype=np.float32)[classes].transpose(2, 0, 1)
        start = time.perf_counter()
        postprocessor(probs)
        postprocess_s += time.perf_counter() - start
        megapixels += truth.numel() / 1e6
    for name, (dsb, masks) in (("Gaussian + Otsu + connected components", otsu),
                               ("ground-truth union, connected components (ceiling without separation)", union)):
        summary, mask = dsb.summary(), masks.compute()
        rows.append({"route": name, "dsb_score": summary["score"], "mask_map": mask["map"],
                     "mask_map_50": mask["map_50"], "f1_50": summary["f1_50"]})  # fmt: skip
    rows.append({"route": "post-processing time", "seconds_per_megapixel": round(postprocess_s / megapixels, 4),
                 "megapixels": round(megapixels, 2)})  # fmt: skip
    return rows


def save_unet_figure(model: pl.LightningModule, dm: pl.LightningDataModule, path: Path) -> None:
    """:func:`save_figure` for the U-Net routes (DSB2018DataModule batches: normalized ``image``, ``instances``)."""
    from PIL import Image

    from zoo.core.instances import draw_outlines

    best = None
    for batch in dm.val_dataloader():
        truth = batch["instances"][0] if isinstance(batch["instances"], list) else batch["instances"][0]
        density = int(truth.max()) / truth.numel()
        if best is None or density > best[0]:
            best = (density, batch["image"][:1], truth)
    assert best is not None
    _, image, truth = best
    with torch.no_grad():
        labels, _ = model.predict_instances(image)[0]
    mean = torch.tensor(dm.mean).view(-1, 1, 1) if hasattr(dm, "mean") else 0
    std = torch.tensor(dm.std).view(-1, 1, 1) if hasattr(dm, "std") else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_outlines(image[0] * std + mean, labels, truth.numpy())).save(path)
    print(f"wrote {path}")


def collect(out: str | None) -> None:
    rows: list[dict[str, Any]] = []
    machines = {}
    for route in ROUTES:
        path = RESULTS / f"{PART.format(route=route)}.json"
        if path.is_file():
            part = json.loads(path.read_text())
            rows.extend(part["results"])
            machines[route] = part.get("machine")
    headers = ["route", "minutes", "steps", "dsb_score", "mask_map", "mask_map_50", "f1_50"]
    table = [[r.get(h, "") if not isinstance(r.get(h), float) else round(r[h], 4) for h in headers] for r in rows]
    print(markdown_table(headers, table))
    path = write_json("nuclei_instances", {"results": rows, "machines": machines}, out)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", choices=ROUTES)
    parser.add_argument("--collect", action="store_true", help="merge the routes' JSON files into one table")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget, minutes of --clock")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: the process's CPU time (routes sharing the cores each get the full budget)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1: two routes share 2 cores)")
    parser.add_argument("--image-size", type=int, default=512, help="Mask R-CNN input size (min = max side)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (Mask R-CNN)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (0: their CPU time is counted)")
    parser.add_argument("--mask-max-detections", type=int, default=100,
                        help="instances per image that the mask mAP counts (COCO's 100; the configs count 300)")
    add_precision_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--select-on", type=int, default=24,
                        help="choose the U-Net routes' watershed parameters on this many training images (0: config)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--figure", default=None, help="save outlines on a validation image to this PNG")
    args = parser.parse_args()
    if args.collect:
        collect(args.out)
        return
    if args.route is None:
        parser.error("give --route (or --collect)")
    if args.clock == "cpu" and args.workers > 0:
        parser.error("--clock cpu counts this process only: loader workers' CPU time would go uncounted. Fix: "
                     "--workers 0, or --clock wall.")  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = baselines(args) if args.route == "baselines" else [train_route(args)]
    for row in rows:
        print(json.dumps(row))
    trained = vars(args).pop("trained", None)
    path = write_json(PART.format(route=args.route), {"args": vars(args), "results": rows}, args.out)
    print(f"wrote {path}")
    if args.figure and trained is not None:
        save_figure(*trained, Path(args.figure))


if __name__ == "__main__":
    main()
