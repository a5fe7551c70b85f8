"""``train.py predict`` throughput per family beside a hand-written PyTorch loop on the same network, interleaved.

Each family's shipped config is built as ``train.py predict`` builds it (``zoo.cli``; an untrained model: the
throughput does not depend on the weights, except the detector's drawing, alike on both sides), and its
``trainer.predict`` runs with one hand-written batch after each of its own (``on_predict_batch_end``), on its
own iterator over the same predict loader: the per-run noise of a shared machine (+-15% here) cancels, as in
``bench/lightning_overhead.py``. The hand-written side is plain PyTorch (``torch.inference_mode``, the network
in eval mode, in the config's memory format) doing what the module's ``predict_step`` produces:

* classification, ``configs/classification/mnist.yaml`` on the 10,000 MNIST test images: softmax probabilities,
  class and confidence of each image (the CSV written once at the end is outside both timings);
* segmentation, ``configs/segmentation/isbi_unet.yaml`` at width 16 on the ISBI test images: the overlap-tile
  prediction (``zoo.segmentation.tiling.predict_tiled``, the paper's 572 tile, with the config's test-time flips),
  the argmax mask and its PNGs (``zoo.segmentation.plots.write_prediction``, the zoo's own writer);
* detection, ``configs/detection/digits_ssdlite.yaml`` on ``--canvases`` MNIST digit canvases: the boxes,
  the drawn image saved as PNG (``zoo.detection.plots.draw_detections``);
* generation, ``configs/generative/mnist_vae.yaml``: one prior sample per test image, decoded, in [0, 1].

A zoo batch's time runs from the end of the hand-written batch before it to the end of the zoo's batch
(Lightning's loop, fetching, hooks, the progress bar's updates); a hand-written batch's from fetching it from its
iterator to the end of its work. Reported:
images/s of each side after ``--warmup`` batches and zoo / hand-written throughput (target >= 0.97).

    python bench/predict_throughput.py
    python bench/predict_throughput.py --families classification --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, machine, markdown_table, write_json  # noqa: E402

from zoo.cli import main  # noqa: E402

FAMILIES: dict[str, tuple[str, list[str]]] = {
    "classification": ("configs/classification/mnist.yaml", []),
    "segmentation": ("configs/segmentation/isbi_unet.yaml", ["--model.init_args.network_kwargs.base_channels=16"]),
    "detection": ("configs/detection/digits_ssdlite.yaml", ["--data.init_args.num_workers=0"]),
    "generation": ("configs/generative/mnist_vae.yaml", ["--model.init_args.fid_classifier=null"]),
}


def _images_in(batch: Any) -> int:
    if isinstance(batch, dict):
        return len(batch["images"] if "images" in batch else batch["image"])
    return len(batch[0] if isinstance(batch, (tuple, list)) else batch)


def plain_predictor(family: str, module: Any, out_dir: Path) -> Callable[[Any], Any]:
    """The hand-written equivalent of ``module.predict_step`` for one batch, in plain PyTorch; returns what it
    computed (probabilities, masks, detections or samples), which the tests compare with the zoo's."""
    net = module.net.eval()  # the module's own network object: its memory format and compilation are the zoo's
    kept: list[torch.Tensor] = []

    if family == "classification":

        def predict(batch: Any) -> torch.Tensor:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            probs = torch.softmax(net(images).float(), dim=1)
            kept.append(probs.cpu())
            probs.max(dim=1)
            return probs
    elif family == "segmentation":
        from zoo.segmentation.plots import write_prediction
        from zoo.segmentation.tiling import predict_tiled

        hp = module.hparams

        def predict(batch: Any) -> Any:
            logits = predict_tiled(net, batch["image"], hp.tile_size, hp.tile_overlap, hp.tile_batch_size, hp.tta_flips)
            masks = logits.argmax(dim=1).cpu().numpy()
            for i, mask in enumerate(masks):
                raw = batch["raw"][i].cpu().numpy() if "raw" in batch else None
                write_prediction(out_dir, f"plain_{batch['name'][i]}", mask, module.num_classes, raw)
            return masks
    elif family == "detection":
        from PIL import Image

        from zoo.detection.plots import draw_detections

        ids = module.hparams.category_ids or list(range(1, module.num_classes + 1))
        results: list[dict[str, Any]] = []

        def predict(batch: Any) -> Any:
            preds = net(batch["images"])
            for image, pred, target, path in zip(batch["images"], preds, batch["targets"], batch["paths"], strict=True):
                pred = {k: v.cpu() for k, v in pred.items()}
                for (x1, y1, x2, y2), score, label in zip(
                    pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True
                ):
                    results.append({
                        "image_id": int(target["image_id"]), "file_name": str(path), "category_id": int(ids[label - 1]),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(score, 5),
                    })  # fmt: skip
                drawn = draw_detections(image.cpu(), pred, module.class_names, module.hparams.score_threshold)
                Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out_dir / f"plain_{Path(path).stem}_boxes.png")
            return preds
    elif family == "generation":

        def predict(batch: Any) -> torch.Tensor:
            z = torch.randn(_images_in(batch), module.latent_dim)
            return module.to_unit(module.decode(z)).clamp(0, 1)
    else:
        raise ValueError(f"unknown family {family!r}")

    def run(batch: Any) -> Any:
        with torch.inference_mode():
            return predict(batch)

    return run


class Interleaver(pl.Callback):
    """After each zoo predict batch, the same batch of the hand-written loop; records both sides' times."""

    def __init__(self, plain: Callable[[Any], None], batches: Any) -> None:
        self.plain, self.batches = plain, batches
        self.zoo: list[tuple[float, int]] = []
        self.hand: list[tuple[float, int]] = []
        self._mark = 0.0

    def on_predict_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._mark = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.zoo.append((time.perf_counter() - self._mark, _images_in(batch)))
        start = time.perf_counter()
        plain_batch = next(self.batches)  # fetched inside the timing, as Lightning's fetch is inside the zoo's
        self.plain(plain_batch)
        self.hand.append((time.perf_counter() - start, _images_in(plain_batch)))
        self._mark = time.perf_counter()


def throughput(records: list[tuple[float, int]]) -> float:
    return sum(n for _, n in records) / sum(t for t, _ in records)


def build_cli(
    family: str, data: str, work: Path, canvases: int = 200, limit: int | None = None, compile_network: bool = False
) -> Any:
    """The family's shipped config built as ``train.py predict`` builds it (not run), predicting into
    ``work/<family>``."""
    config, overrides = FAMILIES[family]
    out_dir = work / family
    extra = (
        [f"--data.init_args.val_count={canvases}", f"--data.init_args.canvas_dir={work / 'canvases'}"]
        if family == "detection"
        else []
    )
    if family in ("segmentation", "detection"):
        extra.append(f"--model.init_args.output_dir={out_dir}")
    if limit is not None:
        extra.append(f"--trainer.limit_predict_batches={limit}")
    if compile_network:
        extra.append("--model.init_args.compile=true")
    args = ["--config", str(ROOT / config), f"--data.init_args.data_dir={data}", "--trainer.logger=false"]
    cli = main([*args, f"--trainer.default_root_dir={out_dir}", *overrides, *extra], run=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    return cli


def family_run(
    family: str, data: str, warmup: int, limit: int | None, canvases: int, work: Path, compile_network: bool = False
) -> dict[str, Any]:
    cli = build_cli(family, data, work, canvases, limit, compile_network)
    out_dir = work / family
    dm = cli.datamodule
    dm.setup("predict")
    interleaver = Interleaver(plain_predictor(family, cli.model, out_dir), iter(dm.predict_dataloader()))
    cli.trainer.callbacks.append(interleaver)
    cli.trainer.predict(cli.model, datamodule=dm, return_predictions=False)
    zoo, hand = throughput(interleaver.zoo[warmup:]), throughput(interleaver.hand[warmup:])
    return {
        "batches": len(interleaver.zoo),
        "images": sum(n for _, n in interleaver.zoo[warmup:]),
        "zoo_images_per_s": zoo,
        "plain_images_per_s": hand,
        "ratio": zoo / hand,
    }


def main_bench(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="first batches left out of both timings")
    parser.add_argument("--limit-batches", type=int, default=None, help="predict batches per run (default: all)")
    parser.add_argument("--canvases", type=int, default=200, help="detection: digit canvases to predict")
    parser.add_argument("--compile", action="store_true", help="compile: true (the same compiled network both sides)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the CLI below gets its arguments explicitly, not this script's
    data = data_dir(args.data_dir)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for family in args.families:
            runs = [
                family_run(family, data, args.warmup, args.limit_batches, args.canvases, Path(work), args.compile)
                for _ in range(args.runs)
            ]
            for i, run in enumerate(runs):
                print(
                    f"{family} run {i + 1}: zoo {run['zoo_images_per_s']:.1f} img/s, "
                    f"plain {run['plain_images_per_s']:.1f} img/s, ratio {run['ratio']:.3f}",
                    flush=True,
                )
            results[family] = {"runs": runs, "median_ratio": statistics.median(r["ratio"] for r in runs)}
    rows = [
        [
            family,
            statistics.median(r["zoo_images_per_s"] for r in res["runs"]),
            statistics.median(r["plain_images_per_s"] for r in res["runs"]),
            res["median_ratio"],
        ]
        for family, res in results.items()
    ]
    print(
        f"\npredict throughput, interleaved ({args.runs} runs, {machine()['cpu']}, {torch.get_num_threads()} threads)"
    )
    print(markdown_table(["family", "zoo predict img/s", "hand-written img/s", "zoo / hand-written"], rows))
    payload = {
        "runs": args.runs,
        "warmup": args.warmup,
        "compile": args.compile,
        "families": results,
        "threads": torch.get_num_threads(),
    }
    path = write_json("predict_throughput", payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main_bench()
