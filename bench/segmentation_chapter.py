"""The segmentation chapter's networks side by side (issue 22): every network of the chapter, each trained from
scratch with the same budget of CPU time on ISBI 2012 (membranes) and on the DSB2018 nuclei (semantic: nucleus /
background), then scored with its **last** weights on the data set's validation images.

Data: ``datamodules.ISBI2012DataModule`` (20 training slices, 4 validation slices, ``split_seed`` 0, as
``bench/isbi_unet.py``) and ``datamodules.DSB2018DataModule`` (``target: two_class``, 20% of the 119 images held out
for validation, ``split_seed`` 0, as ``configs/segmentation/dsb2018_*.yaml`` and ``bench/nuclei_instances.py``).
Training: random crops with the data modules' augmentation (elastic deformation, flips, brightness / contrast),
cross-entropy for every network (no weight map: the same loss everywhere), Adam whose learning rate warms up over
the first 5% of the budget and decays to zero on a cosine over the rest (``bench._common.TimeBudget``), under bf16
autocast where the CPU computes bf16 natively, else float32 (``--precision auto``). The budget counts the process's
**CPU seconds** (``clock="cpu"``; data loading in the process, ``num_workers=0``, so augmentation is counted): routes
that share the machine each get the same computation. Evaluation: whole validation images, one mirror-padded pass
each (``SemanticSegmenter.segment`` with ``tile_size`` None), in float32. Nothing is selected on the validation
images, and nothing is tuned here: the learning rates of ``ROUTES`` are fixed beforehand (``--lr`` overrides one,
for tuning on training images).

Reported per route: pixel error (argmax), the ISBI challenge's pixel error (1 - best F-score of the cell / nucleus
probability, ``zoo.segmentation.ISBIPixelError``), IoU (mean over the two classes, and of the foreground class), the
foreground-restricted Rand error, parameters, training images/s (training crops seen / training CPU seconds; wall
seconds too) and inference images/s (whole validation images / seconds of a timed pass, eval mode,
``torch.inference_mode``).

**Widths are reduced** so that one thread takes hundreds of steps in 10 CPU minutes (0.5 to 3.5 CPU seconds a step
in float32 on one thread of a Xeon with AVX-512; each result records its steps):

- ``sliding_window``: Ciresan et al. 2012's N4 at 1/3 width (16 instead of 48 channels per stage, 64 instead of 200
  hidden units), 65x65 window, trained densely on 256x256 crops.
- ``fcn32s`` / ``fcn16s`` / ``fcn8s``: Long et al. 2015 over the registry's ``vgg16_bn`` (VGG-16 with batch
  norm: from scratch the plain one never left the majority-class answer, see ``_VGG_FCN``) at 1/4 width (``width`` 16:
  16 to 128 channels instead of 64 to 512) with fc6 / fc7 at 1024 instead of 4096 (the classifier's own fully
  connected layers, convolutionalized); 256x256 crops (the paper's 100-pixel padding of conv1_1 makes them 456x456).
- ``fcn_resnet50``: torchvision's, unchanged (no width argument), batches of two 256x256 crops.
- ``deconvnet`` / ``segnet`` / ``dilated_context``: the VGG-16 layouts at 1/4 width (``width`` 16 instead of 64;
  fc6 / fc7 of DeconvNet and the dilated front end at 1024 instead of 4096).
- ``unet_*``: the paper's valid U-Net (Ronneberger et al. 2015) at 1/4 width (``base_channels`` 16 instead of 64),
  depth 4, 380x380 tiles (196x196 outputs; the image mirror-padded by the network's border), each ``upsampling``
  choice of ``zoo.segmentation.models.upsampling``; ``unet_same``: the padded U-Net with batch norm, same width.
- ``pspnet``: Zhao et al. 2017 over a dilated ResNet-18 (random init: no download; ResNet-101 / 50 in the paper) with
  the head's 3x3 convolution at 1/4 width (128 instead of 512).

Routes run as separate processes (``--threads 1`` each); ``--collect`` merges their JSON files into one table per
data set, rows in the order the chapter builds the subject up (``ROUTES``' order), and writes
``bench/results/segmentation_chapter.json``. Its ``what it shows`` column is left empty for the README.

    ZOO_DATA_DIR=../shared/data python bench/segmentation_chapter.py --dataset isbi --route segnet --threads 1
    python bench/segmentation_chapter.py --list
    python bench/segmentation_chapter.py --collect
    python bench/segmentation_chapter.py --dataset dsb --route unet_same --minutes 0.05 --threads 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import (  # noqa: E402
    RESULTS,
    TimeBudget,
    add_precision_argument,
    data_dir,
    markdown_table,
    validation_metrics,
    write_json,
)

NAME = "segmentation_chapter"
DATASETS = ("isbi", "dsb")
TITLES = {"isbi": "ISBI 2012 membranes (4 validation slices)", "dsb": "DSB2018 nuclei, semantic (24 validation images)"}


@dataclass(frozen=True)
class Route:
    """One network configuration: the registered ``network``, its builder's arguments, the training crop side and
    batch, and Adam's peak learning rate."""

    network: str
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    crop: int = 256
    batch: int = 4
    lr: float = 1e-3

    @property
    def valid(self) -> bool:
        """A valid-convolution U-Net: its training images are mirror-padded by its border."""
        return self.network == "unet"


def _unet(upsampling: str) -> Route:
    return Route("unet", {"base_channels": 16, "depth": 4, "upsampling": upsampling}, crop=380, batch=4)


# VGG-16 with batch norm (``vgg16_bn``), from scratch. Long et al. start from ImageNet weights; without them the
# plain VGG-16 stayed at the majority-class answer in every 10-minute run on ISBI and DSB2018 (Adam at 1e-4; at 1e-3
# it stalls). Chosen on the training loss of DSB2018 training crops (60 steps, no warm-up): plain VGG-16 at 1e-4
# sat at 0.41-0.44 (the class prior's entropy, 0.44) predicting no nucleus pixel; vgg16_bn at 1e-3 reached 0.33
# and predicted nuclei.
_VGG_FCN = {"backbone": "vgg16_bn", "backbone_kwargs": {"width": 16}, "fc_width": 1024}
# In the order the chapter builds the subject up; the widths are explained in the module docstring.
ROUTES: dict[str, Route] = {
    "sliding_window": Route("sliding_window", {"channels": [16, 16, 16, 16], "hidden": 64}),
    "fcn32s": Route("fcn32s", _VGG_FCN, crop=256, batch=4),
    "fcn16s": Route("fcn16s", _VGG_FCN, crop=256, batch=4),
    "fcn8s": Route("fcn8s", _VGG_FCN, crop=256, batch=4),
    "fcn_resnet50": Route("fcn_resnet50", {}, batch=2),
    "deconvnet": Route("deconvnet", {"width": 16}),
    "segnet": Route("segnet", {"width": 16}),
    "unet_transposed": _unet("transposed"),
    "unet_nearest": _unet("nearest"),
    "unet_bilinear": _unet("bilinear"),
    "unet_bed_of_nails": _unet("bed_of_nails"),
    "unet_max_unpool": _unet("max_unpool"),
    "dilated_context": Route("dilated_context", {"width": 16}),
    "pspnet": Route("pspnet", {"encoder_name": "resnet18", "encoder_weights": None, "head_channels": 128}),
    "unet_same": Route("unet_same", {"base_channels": 16, "depth": 4}),
}


def part_path(results_dir: Path, dataset: str, route: str) -> Path:
    """Where one route's result on one data set is written."""
    return results_dir / f"{NAME}_{dataset}_{route}.json"


class CountingBudget(TimeBudget):
    """:class:`TimeBudget` that also counts the training images (crops) its steps saw."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.images += len(batch["image"])


def build(
    dataset: str, route: Route, root: str, lr: float, seed: int
) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The model and data module of one route on one data set (data set geometry linked as ``train.py`` links it)."""
    from datamodules import DSB2018DataModule, ISBI2012DataModule
    from zoo.segmentation import SemanticSegmenter

    in_channels = 1 if dataset == "isbi" else 3
    class_names = ["membrane", "cell"] if dataset == "isbi" else ["background", "nucleus"]
    model = SemanticSegmenter(
        route.network, num_classes=2, in_channels=in_channels, network_kwargs=dict(route.network_kwargs), loss="ce",
        optimizer=lambda p: torch.optim.Adam(p, lr=lr), class_names=class_names, foreground_class=1, log_images=0,
    )  # fmt: skip
    pad = model.net.border if route.valid else 0  # the valid U-Net's outputs then reach the image edges
    common = dict(data_dir=root, crop_size=route.crop, pad=pad, batch_size=route.batch, eval_batch_size=1,
                  num_workers=0, split_seed=seed)  # fmt: skip
    if dataset == "isbi":
        dm = ISBI2012DataModule(**common, val_size=4, crops_per_image=8)
    else:
        dm = DSB2018DataModule(**common, in_channels=3, target="two_class", val_size=0.2, crops_per_image=2)
    return model, dm


def inference_speed(model: pl.LightningModule, dm: pl.LightningDataModule) -> dict[str, float]:
    """Whole validation images per second (wall and CPU) of one pass in eval mode under ``torch.inference_mode``,
    float32, the loader's time excluded."""
    model.eval()
    images, wall, cpu = 0, 0.0, 0.0
    with torch.inference_mode():
        for batch in dm.val_dataloader():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            model.segment(batch["image"])
            wall += time.perf_counter() - start_wall
            cpu += time.process_time() - start_cpu
            images += len(batch["image"])
    return {"inference_images": images, "inference_seconds": wall, "inference_cpu_seconds": cpu,
            "inference_images_per_s": images / wall, "inference_images_per_cpu_s": images / cpu}  # fmt: skip


def train_route(args: argparse.Namespace) -> dict[str, Any]:
    """Train one route on one data set for the budget, then score its last weights on the validation images."""
    route = ROUTES[args.route]
    lr = args.lr if args.lr is not None else route.lr
    pl.seed_everything(args.seed, workers=True)
    model, dm = build(args.dataset, route, data_dir(args.data_dir), lr, args.split_seed)
    budget = CountingBudget(args.minutes * 60, max_lr=lr, warmup=0.05, clock="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer, train_s = budget.fit(
            model, dm, max_epochs=-1, precision=args.precision, enable_progress_bar=False, log_every_n_steps=50,
            default_root_dir=tmp,
        )  # fmt: skip
        train_cpu_s = budget.elapsed()
        start = time.perf_counter()
        metrics = validation_metrics(model, dm, default_root_dir=tmp)
        evaluation_s = time.perf_counter() - start
    speed = inference_speed(model, dm)
    foreground = model.class_names[1]
    return {
        "dataset": args.dataset, "route": args.route, "network": route.network,
        "network_kwargs": dict(route.network_kwargs), "crop": route.crop, "batch": route.batch, "lr": lr,
        "pad": dm.pad, "minutes": args.minutes, "clock": "cpu", "threads": torch.get_num_threads(),
        "precision": args.precision, "parameters": sum(p.numel() for p in model.net.parameters()),
        "steps": trainer.global_step, "epochs": trainer.current_epoch, "train_images": budget.images,
        "train_seconds": train_s, "train_cpu_seconds": train_cpu_s,
        "train_images_per_s": budget.images / train_s, "train_images_per_cpu_s": budget.images / train_cpu_s,
        "evaluation_seconds": evaluation_s,
        "pixel_error": metrics["val/pixel_error"], "isbi_pixel_error": metrics["val/isbi_pixel_error"],
        "iou": metrics["val/iou"], "iou_foreground": metrics[f"val/iou_{foreground}"],
        "rand_error": metrics["val/rand_error"], "dice": metrics["val/dice"], "val_loss": metrics["val/loss"],
        **speed,
    }  # fmt: skip


TABLE_COLUMNS: list[tuple[str, str]] = [
    ("route", "route"),
    ("parameters", "params"),
    ("steps", "steps"),
    ("pixel_error", "pixel error"),
    ("isbi_pixel_error", "ISBI pixel error"),
    ("iou", "IoU (mean)"),
    ("iou_foreground", "IoU (foreground)"),
    ("rand_error", "Rand error"),
    ("train_images_per_cpu_s", "train img/CPU s"),
    ("inference_images_per_s", "inference img/s"),
]


def table(dataset: str, rows: list[dict[str, Any]]) -> str:
    """The markdown table of one data set: ``rows`` in ``ROUTES``' order, an empty ``what it shows`` column; the
    ISBI challenge's pixel error on ISBI only (the issue's "both definitions on ISBI")."""
    columns = [(k, h) for k, h in TABLE_COLUMNS if dataset == "isbi" or k != "isbi_pixel_error"]
    headers = [h for _, h in columns] + ["what it shows"]
    cells = []
    for row in rows:
        line: list[Any] = []
        for key, _ in columns:
            value = row.get(key)
            line.append(f"{value / 1e6:.2f}M" if key == "parameters" and value is not None else value)
        cells.append([*line, ""])
    return markdown_table(headers, cells)


def collect(results_dir: Path) -> dict[str, Any]:
    """Merge the per-route files of ``results_dir`` into one table per data set; write and return the summary."""
    results: dict[str, list[dict[str, Any]]] = {}
    machines: dict[str, Any] = {}
    tables: dict[str, str] = {}
    for dataset in DATASETS:
        rows = []
        for route in ROUTES:
            path = part_path(results_dir, dataset, route)
            if path.is_file():
                part = json.loads(path.read_text())
                rows.append(part["result"])
                machines[f"{dataset}/{route}"] = part.get("machine")
        results[dataset] = rows
        if rows:
            tables[dataset] = table(dataset, rows)
            print(f"## {TITLES[dataset]}\n\n{tables[dataset]}\n")
    missing = [f"{d}/{r}" for d in DATASETS for r in ROUTES if not part_path(results_dir, d, r).is_file()]
    payload = {"results": results, "tables": tables, "machines": machines, "missing": missing}
    path = write_json(NAME, payload, str(results_dir / f"{NAME}.json"))
    print(f"wrote {path}" + (f" ({len(missing)} route results missing)" if missing else ""))
    return payload


def list_routes() -> None:
    for name, route in ROUTES.items():
        print(f"{name:18s} {route.network:15s} crop {route.crop} x batch {route.batch}, lr {route.lr:g}, "
              f"{json.dumps(route.network_kwargs)}")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--route", choices=list(ROUTES))
    parser.add_argument("--list", action="store_true", help="print the routes and exit")
    parser.add_argument("--collect", action="store_true", help="merge the routes' JSON files: a table per data set")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget: minutes of CPU time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1: routes share the cores)")
    parser.add_argument("--lr", type=float, default=None, help="override the route's peak Adam learning rate")
    add_precision_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and crop sampling")
    parser.add_argument("--split-seed", type=int, default=0, help="the training / validation split")
    parser.add_argument("--data-dir", default=None, help="folder holding isbi2012_em_membrane/ and dsb2018_nuclei/")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the per-route and collected JSON go")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    if args.list:
        list_routes()
        return None
    if args.collect:
        return collect(results_dir)
    if args.dataset is None or args.route is None:
        parser.error("give --dataset and --route (or --collect, --list)")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_route(args)
    print(json.dumps(result))
    path = write_json(NAME, {"args": vars(args), "route": asdict(ROUTES[args.route]), "result": result},
                      str(part_path(results_dir, args.dataset, args.route)))  # fmt: skip
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
