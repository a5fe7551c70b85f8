"""Every registered classifier and segmenter exported to ONNX and TorchScript, run, and compared with PyTorch.

For each model of ``zoo.list_models(family="classification")`` and ``family="segmentation"`` (or ``--models``
patterns), built with seeded random weights (no files read) and wrapped in its LightningModule
(``ImageClassifier`` / ``SemanticSegmenter``) so that the export is exactly ``zoo.export.export_module``'s:

* classifiers: 3 x 32 x 32 input (``--size``), 10 classes, the CIFAR-style stem (``small_input=True``) where the
  builder has one; pass at max abs difference <= 1e-4 of the logits;
* segmenters: 3 x 64 x 64 input (``--seg-size``; the paper's valid-padding U-Net takes the nearest valid size
  above), 2 classes; the max abs difference of the logits is reported (and whether every pixel keeps its class).

ONNX runs in onnxruntime (CPU), TorchScript through ``torch.jit.load``; a model that cannot be exported in a format
gets the reason (the exporter's error) instead of a difference. The model files go to a temporary folder and are
deleted after each check. The input is a real photograph (``--input coco``, the default: the first image of the
COCO val2017 subset under ``--data-dir`` / ``$ZOO_DATA_DIR``, resized to the input side and normalized with
ImageNet's mean and std); ``--input random`` uses seeded Gaussian noise instead. Before the export, batch norm's
running statistics are set from the subset's other images (``calibrate_batch_norm``; ``--no-calibration`` keeps the
defaults, under which a random deep ResNet's logits reach 1e9 and no absolute tolerance means anything). Prints a
Markdown table and writes ``bench/results/export_sweep.json`` (rewritten after every model: an interrupted sweep keeps
what it measured).

    python bench/export_sweep.py                                   # everything (long: every ResNet, VGG, smp arch)
    python bench/export_sweep.py --models lenet5 "resnet2*" unet_same --formats onnx
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, machine, markdown_table, write_json  # noqa: E402

from zoo import get_model_entry, list_models  # noqa: E402
from zoo.export import FORMATS, TOLERANCE, export_module  # noqa: E402

FAMILIES = ("classification", "segmentation")


def build_module(name: str, family: str) -> torch.nn.Module:
    """The model's LightningModule with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    if family == "classification":
        from zoo.classification import ImageClassifier

        small = "small_input" in inspect.signature(get_model_entry(name).builder).parameters
        kwargs = {"small_input": True} if small else {}
        return ImageClassifier(name, num_classes=10, in_channels=3, network_kwargs=kwargs).eval()
    from zoo.segmentation import SemanticSegmenter

    return SemanticSegmenter(name, num_classes=2, in_channels=3).eval()


def input_side(module: torch.nn.Module, family: str, args: argparse.Namespace) -> int:
    """The classifier side; for a segmenter the paper U-Net's nearest valid size, else the smallest of ``--seg-size``,
    2x and 4x that the network accepts in PyTorch (smp's PAN pools its deepest map further: 64 px is too small)."""
    if family == "classification":
        return args.size
    net = module.net
    if hasattr(net, "depth") and hasattr(net, "padding") and hasattr(net, "input_size"):  # the paper's U-Net
        from zoo.segmentation.models.unet import nearest_valid_sizes

        return nearest_valid_sizes(args.seg_size, net.depth, net.padding)[1]
    for side in (args.seg_size, 2 * args.seg_size, 4 * args.seg_size):
        try:
            with torch.no_grad():
                module(torch.zeros(1, 3, side, side))
            return side
        except RuntimeError:
            continue
    return args.seg_size  # the export check reports PyTorch's own error at this size


@torch.no_grad()
def calibrate_batch_norm(module: torch.nn.Module, images: torch.Tensor) -> None:
    """Set every batch-norm layer's running statistics from real images (one train-mode pass, cumulative average).

    With random weights and the default running statistics (mean 0, variance 1) batch norm in eval mode is the
    identity, and in a deep residual network the activations then grow with depth: the logits of a random
    CIFAR ResNet-110 reach 1e9, where float32 rounding alone exceeds any absolute tolerance. Calibrated on real
    images, the network normalizes as a trained one does and its logits stay O(1), so the 1e-4 bound means
    what it means for a trained model."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration pass
    module.train()
    module(images)
    module.eval()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def coco_images(root: str | None) -> list[Path]:
    """The COCO val2017 subset's images by name: the first is the parity input, the rest calibrate batch norm."""
    folder = Path(data_dir(root)) / "coco_val2017_subset" / "images"
    images = sorted(folder.glob("*.jpg"))
    if not images:
        sys.exit(f"no COCO images in {folder}: pass --data-dir (the folder holding coco_val2017_subset/) "
                 f"or use --input random")
    return images


def example_input(args: argparse.Namespace, side: int, path: Path | None = None) -> torch.Tensor:
    """``(1, 3, side, side)``: the photograph resized (antialiased) and ImageNet-normalized, or seeded noise."""
    if args.input == "random":
        return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    image = decode_image(str(path or args.image_path), mode=ImageReadMode.RGB)[None].float() / 255
    image = TF.resize(image, [side, side], antialias=True)
    return TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD)


def calibration_batch(args: argparse.Namespace, side: int) -> torch.Tensor:
    """The batch-norm calibration images: every COCO subset image but the parity one, as ``example_input`` makes it
    (with ``--input random``: 8 seeded noise images)."""
    if args.input == "random":
        return torch.randn(8, 3, side, side, generator=torch.Generator().manual_seed(2))
    return torch.cat([example_input(args, side, path) for path in args.calibration])


def check(name: str, family: str, fmt: str, args: argparse.Namespace, folder: Path) -> dict:
    row: dict = {"model": name, "family": family, "format": fmt}
    try:
        module = build_module(name, family)
        side = input_side(module, family, args)
    except Exception as error:  # noqa: BLE001  (a model that cannot be built is a row with its reason)
        return {**row, "exported": False, "reason": f"build: {type(error).__name__}: {str(error).splitlines()[0]}"}
    example = example_input(args, side)
    if args.calibration is not None:
        calibrate_batch_norm(module, calibration_batch(args, side))
    path = folder / f"{name}.{'onnx' if fmt == 'onnx' else 'pt'}"
    start = time.perf_counter()
    try:
        report = export_module(module, fmt, path, example)
    except Exception as error:  # noqa: BLE001  (e.g. the runtime rejecting the file): reported, the sweep goes on
        report = {"exported": False, "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    row.update(input=[3, side, side], seconds=round(time.perf_counter() - start, 2), exported=report["exported"])
    if report["exported"]:
        parity = report["parity"]
        row.update(exporter=report["exporter"], max_abs_diff=parity["max_abs_diff"], same_argmax=parity["same_argmax"],
                   max_abs_output=parity["max_abs_output"])
        if family == "classification":
            row["passed"] = parity["max_abs_diff"] <= args.tolerance
    else:
        row["reason"] = report["reason"]
    for leftover in (path, path.with_name(path.name + ".json"), path.with_name(path.name + ".data")):
        leftover.unlink(missing_ok=True)
    return row


def table(results: list[dict]) -> str:
    headers = ["model", "family", "format", "input", "exporter", "max abs diff", "max abs logit", "pass (1e-4)",
               "same argmax", "s", "reason"]  # fmt: skip
    rows = []
    for r in results:
        passed = {True: "pass", False: "FAIL"}.get(r.get("passed"), "-")
        if not r["exported"]:
            passed = "FAIL" if r["family"] == "classification" else "-"
        rows.append([
            r["model"], r["family"], r["format"], "x".join(map(str, r.get("input", []))) or None, r.get("exporter"),
            f"{r['max_abs_diff']:.2e}" if r.get("max_abs_diff") is not None else None,
            f"{r['max_abs_output']:.3g}" if r.get("max_abs_output") is not None else None, passed, r.get("same_argmax"),
            r.get("seconds"), (r.get("reason") or "").replace("|", "/")[:160] or None,
        ])  # fmt: skip
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["*"], help="name patterns (shell wildcards)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--formats", nargs="*", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--size", type=int, default=32, help="classifier input side")
    parser.add_argument("--seg-size", type=int, default=64, help="segmenter input side")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE["classification"], help="classifiers' pass bound")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--input", choices=["coco", "random"], default="coco",
                        help="parity input: a COCO val2017 photograph (default) or seeded Gaussian noise")
    parser.add_argument("--data-dir", default=None, help="folder holding coco_val2017_subset/ (for --input coco)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="keep batch norm's default running statistics (random deep ResNets' logits explode)")
    parser.add_argument("--out", help="JSON path (default bench/results/export_sweep.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = coco_images(args.data_dir) if args.input == "coco" else [None]
    args.image_path = images[0]
    args.calibration = None if args.no_calibration else images[1:]

    names = [
        (name, family)
        for family in args.families
        for name in list_models(family=family)
        if any(fnmatch.fnmatch(name, p) for p in args.models)
    ]
    if not names:
        sys.exit(f"no registered classifier or segmenter matches {args.models}")
    settings = {"classifier_input": [1, 3, args.size, args.size], "classifier_tolerance": args.tolerance,
                "segmenter_input": [1, 3, args.seg_size, args.seg_size], "formats": args.formats,
                "weights": "random, torch.manual_seed(0)",
                "input": (f"{args.image_path.name} (COCO val2017), resized, ImageNet-normalized" if args.image_path
                          else "torch.randn, seed 1"),
                "batch_norm": "default running statistics" if args.calibration is None else
                "running statistics from one train-mode pass over the other COCO images (or 8 noises)"}  # fmt: skip
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="export_sweep_") as tmp:
        for name, family in names:
            for fmt in args.formats:
                row = check(name, family, fmt, args, Path(tmp))
                results.append(row)
                shown = row.get("max_abs_diff", row.get("reason"))
                print(f"{name} ({family}) {fmt}: {shown}", flush=True)
                path = write_json("export_sweep", {"settings": settings, "results": results}, args.out)
    info = machine()
    print(f"\nExport sweep: {info['date']}, {info['cpu']}, torch {info['torch']}; "
          f"classifiers 3x{args.size}x{args.size} (pass: max abs diff <= {args.tolerance:g}), "
          f"segmenters 3x{args.seg_size}x{args.seg_size}.\n")
    print(table(results))
    failed = [r for r in results if r["family"] == "classification" and not r.get("passed")]
    print(f"\n{len(results)} exports, {len(failed)} classifier failures; wrote {path}")


if __name__ == "__main__":
    main()
