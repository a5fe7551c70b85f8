"""Evaluation throughput of ``test`` per family on this CPU, and the report's overhead.

    python bench/evaluation_throughput.py [--data-dir ../shared/data] [--repeats 3]

For each family, the same model and test data run ``trainer.test`` without and with the
``EvaluationReport`` callback (interleaved, ``--repeats`` times; median). Reported: test images/s
without the report; the report's overhead = (time with report - time without) / time without, and
the callback's own split (collecting per-sample outputs during the loop, writing figures at the end).
Models are untrained (throughput does not depend on the weights): classification, the MNIST default
``convnet`` (width 16) on the 10,000 MNIST test images; segmentation, a same-padded U-Net (width 16,
depth 4) on 4 whole 512x512 ISBI images. Writes ``bench/results/evaluation_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules import ISBI2012DataModule, MNISTDataModule  # noqa: E402
from zoo.classification import ImageClassifier  # noqa: E402
from zoo.evaluation import EvaluationReport  # noqa: E402
from zoo.segmentation import SemanticSegmenter  # noqa: E402


def _run(model: pl.LightningModule, dm: pl.LightningDataModule, report: bool) -> tuple[float, dict]:
    callbacks = []
    with tempfile.TemporaryDirectory() as tmp:
        if report:
            callbacks.append(EvaluationReport(Path(tmp) / "report"))
        trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                             default_root_dir=tmp)
        start = time.perf_counter()
        trainer.test(model, dm, verbose=False)
        elapsed = time.perf_counter() - start
    return elapsed, (callbacks[0].timing if report else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else ROOT.parent / "shared" / "data"
    families = {
        "classification": (
            ImageClassifier("convnet", backbone_kwargs={"width": 16}),
            MNISTDataModule(data_dir=str(data_dir), download=False),
        ),
        "segmentation": (
            SemanticSegmenter("unet", network_kwargs={"base_channels": 16, "depth": 4, "padding": "same"}),
            ISBI2012DataModule(data_dir=str(data_dir / "isbi2012_em_membrane")),
        ),
    }
    results = {}
    for family, (model, dm) in families.items():
        plain, with_report, timings = [], [], []
        for _ in range(args.repeats):
            plain.append(_run(model, dm, report=False)[0])
            elapsed, timing = _run(model, dm, report=True)
            with_report.append(elapsed)
            timings.append(timing)
        n = len(dm.test_dataloader().dataset)
        base, full = statistics.median(plain), statistics.median(with_report)
        results[family] = {
            "test_images": n,
            "seconds_without_report": base,
            "seconds_with_report": full,
            "images_per_s": n / base,
            "report_overhead": (full - base) / base,
            "collect_s_median": statistics.median(t["collect_s"] for t in timings),
            "write_s_median": statistics.median(t["write_s"] for t in timings),
        }
    out = ROOT / "bench/results/evaluation_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"threads": args.threads, "repeats": args.repeats, "results": results}
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print("| family | test images | images/s | s without | s with report | overhead | collect s | write s |")
    print("|---|---|---|---|---|---|---|---|")
    for family, r in results.items():
        print(f"| {family} | {r['test_images']} | {r['images_per_s']:.1f} | {r['seconds_without_report']:.2f} | "
              f"{r['seconds_with_report']:.2f} | {r['report_overhead']:+.1%} | {r['collect_s_median']:.2f} | "
              f"{r['write_s_median']:.2f} |")


if __name__ == "__main__":
    main()
