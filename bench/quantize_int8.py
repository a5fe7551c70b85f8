"""INT8 post-training quantization of trained checkpoints (``python -m zoo.export --quantize int8``), measured:
accuracy (classifiers) or mean IoU (segmenters) on the real test set, float vs int8, with the first convolution in
float (the default) and with every layer in int8 (``--keep-float none``), and the CPU inference speedup of each.

Each checkpoint is exported as ``zoo.export`` exports it (its run's ``config.yaml`` beside it gives the data: the
calibration batches come from its training split, the scores from its whole test split). The speed is timed
here again, interleaved: one run of each file (float, int8, int8 all) per round on the same test batch and the
same ONNX Runtime threads, ``--repeats`` rounds, median per file, so that the machine's drift (+-15% between runs
here) falls on all three alike. Target (issue 21): >= 1.5x faster with <= 0.5 points lost.

    python train.py fit --config configs/classification/mnist.yaml
    python train.py fit --config configs/classification/fashion_mnist.yaml
    python train.py fit --config configs/segmentation/isbi_unet.yaml --model.init_args.network_kwargs.base_channels=16
    python bench/quantize_int8.py --ckpt runs/mnist_convnet/version_0/checkpoints/last.ckpt \\
        --ckpt runs/fashion_mnist_convnet/version_0/checkpoints/last.ckpt \\
        --ckpt runs/isbi_unet/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, write_json  # noqa: E402

from zoo.export import _ort_session, export_checkpoint, load_datamodule, resolve_config  # noqa: E402

TARGET_SPEEDUP, TARGET_DROP = 1.5, 0.005


def interleaved_ms(paths: dict[str, Path], batch: torch.Tensor, repeats: int, threads: int) -> dict[str, float]:
    """Median milliseconds per run of each ONNX file on ``batch``, one run of each per round (after one warm-up
    round)."""
    sessions = {name: _ort_session(path, threads) for name, path in paths.items()}
    feed = {"image": batch.numpy()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_index in range(repeats + 1):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            if round_index:  # the first round warms the sessions up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def speed_batch(ckpt: Path, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """The first test batch of the checkpoint's run, fitted to the exported input size (as ``zoo.export`` times),
    and the name of the run's datamodule."""
    from zoo.export import _batch_images, _fitted

    datamodule = load_datamodule(resolve_config(ckpt, None))
    datamodule.setup("test")
    return _fitted(_batch_images(next(iter(datamodule.test_dataloader()))), size), type(datamodule).__name__


def measure(ckpt: Path, work: Path, calibration_batches: int, repeats: int) -> dict[str, Any]:
    reports = {}
    for keep in ("first_conv", "none"):
        out = work / f"{ckpt.parent.parent.parent.name}_{keep}.onnx"
        report = export_checkpoint(ckpt, "onnx", out, quantize="int8", calibration_batches=calibration_batches,
                                   keep_float=keep)  # fmt: skip
        if not report["quantization"]["quantized"]:
            raise SystemExit(f"{ckpt}: {report['quantization']['reason']}")
        reports[keep] = report
    first, every = reports["first_conv"]["quantization"], reports["none"]["quantization"]
    shape = reports["first_conv"]["input"]["shape"]
    batch, data = speed_batch(ckpt, (int(shape[-2]), int(shape[-1])))
    threads = torch.get_num_threads()
    ms = interleaved_ms(
        {"float": Path(reports["first_conv"]["file"]), "int8": Path(first["file"]), "int8_all": Path(every["file"])},
        batch,
        repeats,
        threads,
    )
    return {
        "checkpoint": str(ckpt),
        "network": reports["first_conv"]["network"],
        "data": data,
        "metric": first["metric"],
        "test_images": first["test_images"],
        "float": first["float"],
        "int8": first["int8"],
        "drop": first["drop"],
        "kept_float": first["kept_float"],
        "int8_all": every["int8"],
        "drop_all": every["drop"],
        "argmax_agreement": first["argmax_agreement"],
        "argmax_agreement_all": every["argmax_agreement"],
        "batch": int(batch.shape[0]),
        "threads": threads,
        "ms": ms,
        "speedup": ms["float"] / ms["int8"],
        "speedup_all": ms["float"] / ms["int8_all"],
        "meets_target": ms["float"] / ms["int8"] >= TARGET_SPEEDUP and first["drop"] <= TARGET_DROP,
    }


def main_bench(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", required=True, help="a checkpoint (repeat for several)")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as work:
        for ckpt in args.ckpt:
            result = measure(Path(ckpt), Path(work), args.calibration_batches, args.repeats)
            results.append(result)
            print(f"{result['network']}: {result['metric']} {result['float']:.4f} float, {result['int8']:.4f} int8, "
                  f"{result['int8_all']:.4f} all int8; speedup {result['speedup']:.2f}x, all int8 "
                  f"{result['speedup_all']:.2f}x", flush=True)  # fmt: skip
    rows = [
        [r["network"], r["data"].removesuffix("DataModule"), r["metric"], r["test_images"], f"{r['float']:.4f}",
         f"{r['int8']:.4f}",
         f"{100 * r['drop']:+.2f}", f"{r['int8_all']:.4f}", f"{100 * r['drop_all']:+.2f}", r["batch"],
         f"{r['ms']['float']:.1f}", f"{r['speedup']:.2f}x", f"{r['speedup_all']:.2f}x"]
        for r in results
    ]  # fmt: skip
    print(f"\nINT8 (ONNX Runtime static, QDQ), {machine()['cpu']}, {torch.get_num_threads()} threads")
    print(markdown_table(
        ["network", "data", "metric", "test images", "float", "int8", "lost (pt)", "all int8", "lost (pt)", "batch",
         "float ms", "speedup", "speedup all int8"], rows
    ))  # fmt: skip
    payload = {"repeats": args.repeats, "calibration_batches": args.calibration_batches, "results": results}
    path = write_json("quantize_int8", payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main_bench()
