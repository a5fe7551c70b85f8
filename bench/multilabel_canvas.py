"""Multi-label classification on MNIST digit canvases ("which digits appear?") through ImageCSVDataModule, in a
CPU time budget.

The canvases are those of :mod:`datamodules.digit_canvas` (``generate_digit_canvases``, its default settings:
128x128, 1-4 MNIST digits each, scaled 1-2x, at most 0.1 IoU overlap). Each canvas's labels are the digits pasted
on it (from the generator's annotations: a digit that found no room is not pasted and not a label), written as
PNG files plus ``labels.csv`` (``image``, ``split``, ``digit0`` .. ``digit9`` as 0/1) into
``<cache>/digit_canvas_multilabel/<settings hash>/`` (``$ZOO_CACHE_DIR``, default ``~/.cache/vision-zoo``; once).
The splits never share a digit image: training canvases draw from MNIST's training split, validation canvases
from the first half of MNIST's test split and test canvases from its second half (each half written as IDX files
beside the canvases for the generator to read), each split from its own random stream.

**Selection on validation.** Every candidate ``network[:key=value,...]@image_size`` of ``--candidates`` trains
for ``--select-budget-s`` seconds of wall time (``TimeBudget``: a one-cycle learning rate over time, AdamW by
default) through ImageCSVDataModule + ImageClassifier(task="multilabel", binary cross-entropy) and is evaluated
on the validation split. The one with the best validation mAP is trained again from scratch (same seed) for the
full ``--budget-s`` (with ``--select-budget-s`` >= ``--budget-s``, or one candidate, the selection run is the
final run) and evaluated once on the test split: mAP, mean AUROC and the AUROC and AP of every digit
(ImageClassifier's ``test/map``, ``test/auroc``, ``test/auroc_class/<digit>``). Target: test mAP >= 0.95.

Data settings (the same for every candidate): 1 channel, normalized by the training images' own statistics
(``normalize: data``), no augmentation (``augment: false``: a horizontal flip turns digits into other glyphs, and
a random crop can cut off a digit that the labels still name), and ``crop_fraction: 1`` so that evaluation sees
the whole canvas (the default 0.875 crops 1/16 off every side, cutting into digits that touch the border; the
share of test canvases with ink there is reported as ``border_ink_fraction_test``).

    python bench/multilabel_canvas.py --threads 1     # 150 s per candidate, 600 s for the selected one
    # a quick check of the code:
    python bench/multilabel_canvas.py --threads 1 --budget-s 30 --select-budget-s 15 --train 2000 --val 300 --test 300
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TimeBudget,
    add_precision_argument,
    cache_dir,
    data_dir,
    load_note,
    markdown_table,
    validation_metrics,
    write_json,
)

from datamodules import ImageCSVDataModule, MNISTDataModule  # noqa: E402
from datamodules.digit_canvas import generate_digit_canvases  # noqa: E402
from zoo.classification import ImageClassifier  # noqa: E402

DIGITS = [f"digit{d}" for d in range(10)]
GENERATOR = {"canvas_size": 128, "digits_per_image": (1, 4), "digit_scale": (1.0, 2.0), "max_overlap": 0.1}
DEFAULT_CANDIDATES = ["resnet20@64", "convnet:depth=4@64", "convnet:depth=4@48", "convnet:depth=3@64"]


# -- the data ------------------------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (LeCun's MNIST format)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def mnist_test_half(data: str, root: Path, half: int) -> Path:
    """A folder the generator reads as MNIST whose test split is half ``half`` (0: images 0-4999, 1: 5000-9999)
    of MNIST's test split; the training files are links to the originals."""
    mnist = MNISTDataModule(data_dir=data, download=False)
    images, labels = mnist.load_split(train=False)
    n = len(labels) // 2
    part = slice(0, n) if half == 0 else slice(n, len(labels))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in mnist.files[True]:
        source = mnist.find_file(name)
        assert source is not None
        link = raw / source.name
        if not link.exists():
            link.symlink_to(source.resolve())
    write_idx(raw / "t10k-images-idx3-ubyte", images[part, 0].numpy())
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[part].numpy().astype(np.uint8))
    return root


def write_canvases(data: str, counts: dict[str, int], seed: int) -> tuple[Path, dict]:
    """The canvases as PNG files and ``labels.csv`` (see the module docstring); skipped when complete."""
    settings = {**GENERATOR, "counts": counts, "seed": seed, "version": 1}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    root = cache_dir() / "digit_canvas_multilabel" / key
    marker = root / "complete.json"
    if marker.is_file():
        return root, {**json.loads(marker.read_text()), "written": False}
    start = time.perf_counter()
    sources = {"train": (data, "train", seed),  # MNIST's training split
               "val": (str(mnist_test_half(data, root / "mnist_test_half0", 0)), "val", seed),
               "test": (str(mnist_test_half(data, root / "mnist_test_half1", 1)), "test", seed + 1)}  # fmt: skip
    rows, digits_per_canvas = [], {}
    for split, (mnist_dir, generator_split, split_seed) in sources.items():
        # rng [seed, 0] for train, [seed, 1] for val and [seed + 1, 1] for test: three different streams
        json_path = generate_digit_canvases(root, counts[split], generator_split, seed=split_seed,
                                            mnist_dir=mnist_dir, **GENERATOR)  # fmt: skip
        coco = json.loads(json_path.read_text())
        present: dict[int, set[int]] = {image["id"]: set() for image in coco["images"]}
        for a in coco["annotations"]:
            present[a["image_id"]].add(a["category_id"] - 1)  # category d + 1 is digit d
        for image in coco["images"]:
            labels = present[image["id"]]
            rows.append([f"{generator_split}/{image['file_name']}", split, *(int(d in labels) for d in range(10))])
        digits_per_canvas[split] = float(np.mean([len(v) for v in present.values()]))
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "split", *DIGITS])
        writer.writerows(rows)
    info = {"settings": settings, "rows": len(rows), "distinct_digits_per_canvas": digits_per_canvas,
            "seconds": time.perf_counter() - start}  # fmt: skip
    marker.write_text(json.dumps(info, indent=1))
    return root, {**info, "written": True}


def border_ink_fraction(root: Path, split: str, crop_fraction: float = 0.875) -> float:
    """The share of ``split``'s canvases with a digit box reaching into the border that an evaluation center crop
    of ``crop_fraction`` cuts off."""
    coco = json.loads((root / f"instances_{split}.json").read_text())
    size = GENERATOR["canvas_size"]
    margin = size * (1 - crop_fraction) / 2
    cut = set()
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        if x < margin or y < margin or x + w > size - margin or y + h > size - margin:
            cut.add(a["image_id"])
    return len(cut) / len(coco["images"])


def datamodule(root: Path, image_size: int, args: argparse.Namespace) -> ImageCSVDataModule:
    return ImageCSVDataModule(
        csv=str(root / "labels.csv"), image_dir=str(root), label_columns=DIGITS, split_column="split",
        task="multilabel", image_size=image_size, in_channels=1, normalize="data", batch_size=args.batch_size,
        eval_batch_size=256, num_workers=args.num_workers, augment=False, hflip=0.0, crop_fraction=1.0,
    )  # fmt: skip


# -- training ------------------------------------------------------------------------------------------------------
def parse_candidate(spec: str) -> tuple[str, dict, int]:
    """``network[:key=value,...]@image_size`` -> (network, network_kwargs, image_size)."""
    body, _, size = spec.rpartition("@")
    if not body or not size.isdigit():
        raise SystemExit(f"candidate {spec!r}: expected network[:key=value,...]@image_size, e.g. resnet20@64")
    name, _, rest = body.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        kwargs[k] = int(v) if v.lstrip("-").isdigit() else float(v) if v.replace(".", "", 1).isdigit() else v
    return name, kwargs, int(size)


def make_optimizer(args: argparse.Namespace) -> partial:
    if args.optimizer == "sgd":
        return partial(torch.optim.SGD, lr=args.max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return partial(torch.optim.AdamW, lr=args.max_lr, weight_decay=args.weight_decay)


def train_candidate(
    spec: str, root: Path, budget_s: float, args: argparse.Namespace
) -> tuple[dict, ImageClassifier, ImageCSVDataModule]:
    name, kwargs, size = parse_candidate(spec)
    dm = datamodule(root, size, args)
    pl.seed_everything(args.seed, verbose=False)
    model = ImageClassifier(network=name, num_classes=len(dm.class_names), in_channels=1, network_kwargs=kwargs,
                            optimizer=make_optimizer(args), class_names=dm.class_names, task=dm.task)  # fmt: skip
    before = load_note()
    budget = TimeBudget(budget_s, args.max_lr)
    _, seconds = budget.fit(model, dm, max_epochs=100000, precision=args.precision, enable_progress_bar=False)
    after = load_note()
    start = time.perf_counter()
    val = validation_metrics(model, dm)
    n_train = len(dm.train_set)
    result = {
        "candidate": spec, "budget_s": budget_s, "network": name, "network_kwargs": kwargs, "image_size": size,
        "params": sum(p.numel() for p in model.net.parameters()), "steps": budget.steps,
        "epochs": budget.steps * args.batch_size / n_train, "train_seconds": seconds,
        "train_images_per_s": budget.steps * args.batch_size / seconds,
        "val": {k: float(v) for k, v in val.items()}, "val_seconds": time.perf_counter() - start,
        "load_before": before, "load_after": after,
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result, model, dm


def test_metrics(model: ImageClassifier, dm: ImageCSVDataModule) -> dict:
    """The test split's metrics, once, by a fresh quiet float32 Trainer."""
    tester = pl.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False)  # fmt: skip
    return {k: float(v) for k, v in tester.test(model, datamodule=dm, verbose=False)[0].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=600.0, help="training seconds of the final run")
    parser.add_argument("--select-budget-s", type=float, default=150.0, help="training seconds per candidate")
    parser.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES,
                        help="network[:key=value,...]@image_size; the best validation mAP is tested")
    parser.add_argument("--train", type=int, default=30000, help="training canvases")
    parser.add_argument("--val", type=int, default=2000, help="validation canvases")
    parser.add_argument("--test", type=int, default=5000, help="test canvases")
    parser.add_argument("--seed", type=int, default=0, help="the canvases' and the training's seed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--max-lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0: default; "
                        "on a shared 2-core machine 1 can be several times faster than 2)")
    parser.add_argument("--skip-test", action="store_true", help="development: no test evaluation")
    add_precision_argument(parser)
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    data = data_dir(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    for spec in args.candidates:
        parse_candidate(spec)  # a malformed one stops here, before anything trains
    root, canvases = write_canvases(data, {"train": args.train, "val": args.val, "test": args.test}, args.seed)
    print(f"canvases: {root} {json.dumps(canvases)}", flush=True)
    payload: dict = {"args": {k: v for k, v in vars(args).items() if k not in ("data_dir", "out")},
                     "canvas_dir": str(root), "canvases": canvases, "torch_threads": torch.get_num_threads(),
                     "border_ink_fraction_test": border_ink_fraction(root, "test"),
                     "load_at_start": load_note()}  # fmt: skip
    select_s = min(args.select_budget_s, args.budget_s)
    results, trained = [], {}
    for spec in args.candidates:
        result, model, dm = train_candidate(spec, root, args.budget_s if len(args.candidates) == 1 else select_s, args)
        results.append(result)
        trained[spec] = (model, dm)
    best = max(results, key=lambda r: r["val"]["val/map"])
    if best["budget_s"] < args.budget_s:
        final, model, dm = train_candidate(best["candidate"], root, args.budget_s, args)
    else:
        final, (model, dm) = best, trained[best["candidate"]]
    test = None if args.skip_test else test_metrics(model, dm)
    payload.update({"candidates": results, "selected": best["candidate"], "selected_by": "val/map", "final": final,
                    "test": test, "load_at_end": load_note()})  # fmt: skip
    notes = {payload["load_at_start"]["note"], payload["load_at_end"]["note"]}
    for r in [*results, final]:
        notes |= {r["load_before"]["note"], r["load_after"]["note"]}
    payload["machine_note"] = "; ".join(sorted(n for n in notes if n)) or None
    payload["target_map_0.95_met"] = None if test is None else test["test/map"] >= 0.95

    rows = [[r["candidate"], r["budget_s"], r["params"] / 1e6, r["steps"], r["epochs"], r["train_images_per_s"],
             r["val"]["val/map"], r["val"]["val/auroc"], "<- selected" if r is best else ""]
            for r in results]  # fmt: skip
    if final is not best:
        rows.append([f"{final['candidate']} (final)", final["budget_s"], final["params"] / 1e6, final["steps"],
                     final["epochs"], final["train_images_per_s"], final["val"]["val/map"], final["val"]["val/auroc"],
                     "final run"])  # fmt: skip
    print(f"\nDigit canvases, multi-label (which of 0-9 appear): {args.train} train / {args.val} val / {args.test} "
          f"test canvases, {torch.get_num_threads()} thread(s), {args.precision}")
    print(markdown_table(["candidate", "budget s", "params (M)", "steps", "epochs", "train img/s", "val mAP",
                          "val AUROC", ""], rows))  # fmt: skip
    if test is not None:
        print(f"\nTest ({final['candidate']}, {final['budget_s']:g} s, evaluated once): mAP {test['test/map']:.4f} "
              f"(target >= 0.95: {'met' if payload['target_map_0.95_met'] else 'NOT met'}), mean AUROC "
              f"{test['test/auroc']:.4f}, macro F1 {test['test/f1']:.4f}, exact match {test['test/exact_match']:.4f}")
        digit_rows = [[d[-1], test.get(f"test/auroc_class/{d}"), test.get(f"test/ap_class/{d}")] for d in DIGITS]
        print(markdown_table(["digit", "test AUROC", "test AP"], digit_rows))
    if payload["machine_note"]:
        print(f"note: {payload['machine_note']}")
    path = write_json("multilabel_canvas", payload, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
