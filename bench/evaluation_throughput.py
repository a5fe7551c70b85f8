"""Evaluation throughput of ``test`` per family on this CPU, and the report's overhead.

    python bench/evaluation_throughput.py [--data-dir ../shared/data] [--repeats 3]
        [--families classification segmentation detection generation] [--quick] [--out PATH]

For each family, the same model and test data run ``trainer.test`` without and with the
``EvaluationReport`` callback (interleaved, ``--repeats`` times; median). Reported: test images/s
without the report; the report's overhead = (time with report - time without) / time without, and
the callback's own split (collecting per-sample outputs during the loop, writing metrics.json, report.md,
report.html and the figures at the end). What the module itself does at the end of the test runs in both
arms, so it counts in images/s and not in the overhead: the detector's COCOeval and its printed table; the
VAE's FID and 1-NN test. (Until commit 59b440c the classifier and the detector also wrote their own confusion
matrix / PR curves in both arms; the figures in ``bench/results/evaluation_throughput.json`` were measured so.)

Models are untrained (throughput does not depend on the weights, except for detection, below):

* classification: the MNIST default ``convnet`` (width 16) on the 10,000 MNIST test images;
* segmentation: a same-padded U-Net (width 16, depth 4) on 4 whole 512x512 ISBI images;
* detection: ``ObjectDetector`` (``ssdlite320_mobilenet_v3_large`` at image_size 128, or ``--detector``
  ``fasterrcnn_mobilenet_v3_large_320_fpn``; the settings of configs/detection/digits_*.yaml, at most 100
  detections per image) on ``--canvases`` 128-px MNIST digit canvases (``DigitCanvasDataModule``, generated
  from the MNIST files into a temporary folder; a COCO datamodule without test annotations tests on its
  validation split). An untrained detector's scores are nearly uniform, so (almost) every image fills the
  detections cap; a trained one keeps fewer boxes above the score threshold, and its NMS and COCOeval
  (and report) times differ. The JSON records the mean detections per image of the first 8 test images;
* generation: the VAE of configs/generative/mnist_vae.yaml (conv, latent 16) on the 10,000 MNIST test
  images, with FID and the 1-NN test on 1000 real test images and 1000 samples at test end. FID uses the
  LeNet-5 feature classifier ``--fid-classifier`` (default runs/fid/fid_lenet5_mnist.ckpt); when the file
  is missing FID is skipped (a note is printed) and the 1-NN test runs on pixels.

Before the timed runs, each arm runs once untimed on one batch (imports, lazy loading, first-call allocations:
without it the first timed run of an arm is an outlier). ``--quick`` is a smoke run: one test batch per
family (``--limit-batches 1``), 16 canvases, one repeat, no warm-up.
Writes ``bench/results/evaluation_throughput.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules import ISBI2012DataModule, MNISTDataModule  # noqa: E402
from datamodules.digit_canvas import DigitCanvasDataModule  # noqa: E402
from zoo.classification import ImageClassifier  # noqa: E402
from zoo.detection import ObjectDetector  # noqa: E402
from zoo.evaluation import EvaluationReport  # noqa: E402
from zoo.generative import VAE  # noqa: E402
from zoo.segmentation import SemanticSegmenter  # noqa: E402

FAMILIES = ("classification", "segmentation", "detection", "generation")
# network_kwargs of configs/detection/digits_*.yaml, with the detections cap written out
DETECTORS = {
    "ssdlite320_mobilenet_v3_large": {"score_thresh": 0.01, "detections_per_img": 100},
    "fasterrcnn_mobilenet_v3_large_320_fpn": {
        "anchor_sizes": [16, 32, 64, 128], "box_score_thresh": 0.05, "box_detections_per_img": 100,
    },
}  # fmt: skip
Family = tuple[pl.LightningModule, pl.LightningDataModule, dict]


def _run(
    model: pl.LightningModule, dm: pl.LightningDataModule, report: bool, limit_batches: int | None
) -> tuple[float, EvaluationReport | None]:
    callbacks = []
    with tempfile.TemporaryDirectory() as tmp:
        if report:
            callbacks.append(EvaluationReport(Path(tmp) / "report"))
        trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                             default_root_dir=tmp, limit_test_batches=limit_batches)
        # the detector prints COCOeval's table at test end: kept out of the benchmark's output (still timed)
        with contextlib.redirect_stdout(io.StringIO()):
            start = time.perf_counter()
            trainer.test(model, dm, verbose=False)
            elapsed = time.perf_counter() - start
    return elapsed, (callbacks[0] if report else None)


def _classification(args: argparse.Namespace, data_dir: Path, work: Path) -> Family:
    return (
        ImageClassifier("convnet", network_kwargs={"width": 16}),
        MNISTDataModule(data_dir=str(data_dir), download=False),
        {},
    )


def _segmentation(args: argparse.Namespace, data_dir: Path, work: Path) -> Family:
    return (
        SemanticSegmenter("unet", network_kwargs={"base_channels": 16, "depth": 4, "padding": "same"}),
        ISBI2012DataModule(data_dir=str(data_dir / "isbi2012_em_membrane")),
        {},
    )


def _detection(args: argparse.Namespace, data_dir: Path, work: Path) -> Family:
    # train_count=1: setup("test") indexes the training file too; the test split is the validation canvases
    dm = DigitCanvasDataModule(data_dir=str(data_dir), canvas_dir=str(work / "digit_canvases"), train_count=1,
                               val_count=args.canvases, canvas_size=128, eval_batch_size=32, num_workers=0)
    model = ObjectDetector(args.detector, num_classes=dm.num_classes, class_names=dm.class_names, image_size=128,
                           network_kwargs=DETECTORS[args.detector])
    return model, dm, {"network": args.detector, "image_size": 128, "canvases": args.canvases,
                       "network_kwargs": DETECTORS[args.detector]}  # fmt: skip


def _generation(args: argparse.Namespace, data_dir: Path, work: Path) -> Family:
    fid = Path(args.fid_classifier) if args.fid_classifier else None
    if fid is not None and not fid.is_file():
        print(f"note: no FID feature classifier at {fid}: generation runs without FID (1-NN test on pixels). "
              "`python -m zoo.evaluation.fid_features --out PATH` trains one.")  # fmt: skip
        fid = None
    model = VAE(network="vae_conv", latent_dim=16, beta=1.0, loss="bce", metric_samples=1000,
                fid_classifier=str(fid) if fid else None)  # fmt: skip
    model.feature_extractor()  # load the FID classifier now, not inside the first timed run
    dm = MNISTDataModule(data_dir=str(data_dir), download=False, augment=False, normalization="unit")
    return model, dm, {"model": "VAE conv, latent 16", "metric_samples": 1000,
                       "fid_classifier": str(fid) if fid else None}  # fmt: skip


BUILDERS: dict[str, Callable[[argparse.Namespace, Path, Path], Family]] = {
    "classification": _classification,
    "segmentation": _segmentation,
    "detection": _detection,
    "generation": _generation,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="default $ZOO_DATA_DIR, else ../shared/data")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-batches", type=int, default=None, help="test batches per run (default: all)")
    parser.add_argument("--canvases", type=int, default=None, help="detection test canvases (default 200)")
    parser.add_argument("--detector", choices=tuple(DETECTORS), default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--fid-classifier", default=str(ROOT / "runs/fid/fid_lenet5_mnist.ckpt"),
                        help="FID feature classifier checkpoint ('' or a missing file: no FID)")  # fmt: skip
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="one untimed run of each arm on one batch first (default: on, off with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 batch per family, 16 canvases, 1 repeat, no warm-up")
    parser.add_argument("--out", default=str(ROOT / "bench/results/evaluation_throughput.json"))
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.limit_batches = args.limit_batches or (1 if args.quick else None)
    args.canvases = args.canvases or (16 if args.quick else 200)
    args.warmup = not args.quick if args.warmup is None else args.warmup
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir or os.environ.get("ZOO_DATA_DIR") or ROOT.parent / "shared" / "data")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for family in args.families:
            torch.manual_seed(0)  # the same untrained weights every time
            model, dm, setup = BUILDERS[family](args, data_dir, Path(work))
            if args.warmup:
                for report in (False, True):
                    _run(model, dm, report, 1)
            plain, with_report, timings = [], [], []
            for _ in range(args.repeats):
                plain.append(_run(model, dm, False, args.limit_batches)[0])
                elapsed, callback = _run(model, dm, True, args.limit_batches)
                with_report.append(elapsed)
                timings.append(callback.timing)
            n = callback.writer.num_samples  # test images of one run (every writer counts them)
            base, full = statistics.median(plain), statistics.median(with_report)
            results[family] = {
                "test_images": n,
                "seconds_without_report": base,
                "seconds_with_report": full,
                "images_per_s": n / base,
                "report_overhead": (full - base) / base,
                "collect_s_median": statistics.median(t["collect_s"] for t in timings),
                "write_s_median": statistics.median(t["write_s"] for t in timings),
                **({"setup": setup} if setup else {}),
            }
            if family == "detection":
                kept = callback.writer.kept  # the first (up to 8) test images with their detections
                results[family]["detections_per_image_first_images"] = (
                    statistics.mean(len(pred["boxes"]) for *_, pred in kept) if kept else None
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"threads": args.threads, "repeats": args.repeats, "limit_batches": args.limit_batches,
               "warmup": args.warmup, "quick": args.quick, "results": results}  # fmt: skip
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print("| family | test images | images/s | s without | s with report | overhead | collect s | write s |")
    print("|---|---|---|---|---|---|---|---|")
    for family, r in results.items():
        print(f"| {family} | {r['test_images']} | {r['images_per_s']:.1f} | {r['seconds_without_report']:.2f} | "
              f"{r['seconds_with_report']:.2f} | {r['report_overhead']:+.1%} | {r['collect_s_median']:.2f} | "
              f"{r['write_s_median']:.2f} |")
    if "detection" in results:
        r = results["detection"]
        print(f"\ndetection: untrained {r['setup']['network']}, {r['detections_per_image_first_images']:.0f} "
              "detections per image (cap 100); a trained detector keeps fewer, so its NMS/COCOeval time differs.")
    if "generation" in results and not results["generation"]["setup"]["fid_classifier"]:
        print("generation: without FID (no feature classifier); the 1-NN test ran on pixels.")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
