"""Evaluate one small model per family on 1 or 2 CPU processes (Lightning's DDP, gloo) and write the metrics.

Run by ``tests/scale/test_ddp_metrics.py`` in a subprocess (a hang then fails on a timeout instead of
blocking the test run); Lightning's ``ddp`` strategy starts the second rank by re-running this command.

    python tests/scale/ddp_worker.py --out /tmp/ddp --devices 2 --families classification segmentation

Every rank writes ``<out>/<family>_rank<r>.json``: the metrics ``validate`` and ``test`` return and the
sample ids each rank evaluated (so the test can check that every sample was seen exactly once). The
weights are the same on every rank and in both runs: the model is built after ``seed_everything(0)``.
Validation and test sets have an odd number of samples, so that a padding sampler would repeat one.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a file: the project root is not on sys.path otherwise

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

FAMILIES = ("classification", "segmentation", "detection", "generation")


class SampleRecorder(pl.Callback):
    """Ids of the samples each evaluation batch held (``batch_ids(batch)``), per stage."""

    def __init__(self) -> None:
        self.batch_ids: Any = None
        self.seen: dict[str, list[Any]] = {}

    def reset(self, batch_ids: Any) -> None:
        self.batch_ids = batch_ids
        self.seen = {"validate": [], "test": []}

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.seen["validate"] += self.batch_ids(batch)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.seen["test"] += self.batch_ids(batch)


def classification(data_dir: Path) -> tuple[pl.LightningModule, pl.LightningDataModule, Any]:
    """convnet (width 4) on MNIST: 1,001 validation images, and the official 10,000 test images."""
    from datamodules import MNISTDataModule
    from datamodules.base import TensorImageDataset
    from zoo.classification import ImageClassifier

    class OddMNIST(MNISTDataModule):
        def setup(self, stage: str | None = None) -> None:
            super().setup(stage)
            if self.test_set is not None and len(self.test_set) % 2 == 0:  # 9,999 test images
                t = self.test_set
                self.test_set = TensorImageDataset(t.images[:-1], t.labels[:-1], t.source_indices[:-1])

    dm = OddMNIST(data_dir=str(data_dir), download=False, val_size=1001, eval_batch_size=250, return_indices=True,
                  train_subset=100)
    model = ImageClassifier("convnet", num_classes=10, in_channels=1, network_kwargs={"width": 4})
    return model, dm, lambda batch: [int(i) for i in batch[2]]


def segmentation(data_dir: Path) -> tuple[pl.LightningModule, pl.LightningDataModule, Any]:
    """A 2-level U-Net with 'same' padding (width 4) on 5 ISBI 2012 validation slices (test: the same 5)."""
    from datamodules import ISBI2012DataModule
    from zoo.segmentation import SemanticSegmenter

    dm = ISBI2012DataModule(data_dir=str(data_dir), val_size=5, eval_batch_size=2, crop_size=64, pad=0,
                            augment=False)
    model = SemanticSegmenter("unet_same", network_kwargs={"base_channels": 4, "depth": 2},
                              class_names=["membrane", "cell"], log_images=0)
    # An untrained network predicts one class everywhere (IoU of the other: 0 on any subset). Shift the last
    # layer's class-1 bias to the median logit gap of one image, so that predictions split the pixels.
    dm.setup("validate")
    head = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 2][-1]
    image = torch.from_numpy(dm.val_samples[0].image).permute(2, 0, 1)[None].float().div(255)
    with torch.no_grad():
        logits = model.net((image - dm.mean[0]) / dm.std[0])
        head.bias[1] += (logits[:, 0] - logits[:, 1]).median()
    return model, dm, lambda batch: list(batch["name"])


def detection(data_dir: Path) -> tuple[pl.LightningModule, pl.LightningDataModule, Any]:
    """ObjectDetector's COCO evaluation on 5 of the 10 COCO val2017 subset images (test: the same 5).

    An untrained detector finds nothing (mAP 0 on any subset, which would prove nothing), so the detections
    are the ground truth boxes shifted, rescored, thinned and given a false positive, by a rule fixed per
    image id: the metrics then depend on every image and on how often each is counted."""
    from datamodules.coco import COCODetectionDataModule
    from zoo.detection import ObjectDetector

    class NoisyTruthDetector(ObjectDetector):
        def _evaluate(self, batch: dict[str, Any], metric: Any) -> list[dict[str, torch.Tensor]]:
            preds = [noisy_truth(target) for target in batch["targets"]]
            metric.update(preds, batch["targets"])
            return preds

    root = data_dir / "coco_val2017_subset"
    dm = COCODetectionDataModule(train_images=str(root / "images"),
                                 train_annotations=str(root / "annotations" / "instances_val2017_subset.json"),
                                 val_fraction=0.5, augment=False, num_workers=0, eval_batch_size=2)
    dm.setup("fit")
    model = NoisyTruthDetector("ssdlite320_mobilenet_v3_large", num_classes=dm.num_classes,
                               class_names=list(dm.class_names), image_size=96, log_images=0)
    return model, dm, lambda batch: [int(t["image_id"]) for t in batch["targets"]]


def noisy_truth(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(int(target["image_id"]))
    boxes = target["boxes"].clone()
    n = len(boxes)
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    boxes = boxes + size * 0.3 * (torch.rand(n, 4, generator=generator) - 0.5)
    keep = torch.rand(n, generator=generator) > 0.2
    false_positive = torch.tensor([[5.0, 5.0, 60.0, 60.0]])
    return {
        "boxes": torch.cat([boxes[keep], false_positive]),
        "scores": torch.cat([torch.rand(int(keep.sum()), generator=generator), torch.tensor([0.5])]),
        "labels": torch.cat([target["labels"][keep], torch.ones(1, dtype=target["labels"].dtype)]),
    }


def generation(data_dir: Path) -> tuple[pl.LightningModule, pl.LightningDataModule, Any]:
    """A small MLP VAE, briefly trained, on MNIST in [0, 1]: 101 validation images, the first 151 test images.

    The ELBO terms (fixed per-image noise) are means over images; FID (on the 84 features of a LeNet-5, as the
    zoo's default extractor; untrained here, the same weights everywhere) and the 1-NN test compare the first
    91 images of each set with 91 prior samples from the model's fixed noise: every rank must gather the same
    real and generated features for the values to equal the single-process ones."""
    from datamodules import MNISTDataModule
    from datamodules.base import TensorImageDataset
    from zoo.classification import ImageClassifier
    from zoo.generative import VAE, ClassifierFeatures

    class SmallMNIST(MNISTDataModule):
        def setup(self, stage: str | None = None) -> None:
            super().setup(stage)
            if self.test_set is not None and len(self.test_set) > 151:
                t = self.test_set
                self.test_set = TensorImageDataset(t.images[:151], t.labels[:151], t.source_indices[:151])

    dm = SmallMNIST(data_dir=str(data_dir), download=False, val_size=101, eval_batch_size=16, return_indices=True,
                    normalization="unit", augment=False, train_subset=200)
    model = VAE(network="vae_mlp", latent_dim=4, hidden_dims=[64, 32], metric_samples=91)
    model.set_feature_extractor(ClassifierFeatures(ImageClassifier("lenet5", num_classes=10, in_channels=1)))
    # A few plain-PyTorch steps (the same on every rank: same seed, same data, one thread), so that the
    # samples are not uniform gray: the 1-NN accuracy is then below 1 and depends on which samples are scored.
    dm.setup("fit")
    images = dm.train_set.images
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        batch = images[(step * 32) % len(images):][:32]
        recon, kl = model.elbo_terms(batch)
        loss = (recon + kl).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, dm, lambda batch: [int(i) for i in batch[2]]


BUILDERS = {"classification": classification, "segmentation": segmentation, "detection": detection,
            "generation": generation}


def run_family(trainer: pl.Trainer, recorder: SampleRecorder, family: str, data_dir: Path, out: Path) -> None:
    pl.seed_everything(0, verbose=False)  # the same weights on every rank and in every run
    model, dm, batch_ids = BUILDERS[family](data_dir)
    recorder.reset(batch_ids)
    val = trainer.validate(model, datamodule=dm, verbose=False)[0]
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    result = {
        "world_size": trainer.world_size,
        "validate": {k: float(v) for k, v in val.items()},
        "test": {k: float(v) for k, v in test.items()},
        "seen": recorder.seen,
    }
    (out / f"{family}_rank{trainer.global_rank}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=2)
    default_data = Path(os.environ.get("ZOO_DATA_DIR") or ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=default_data)
    parser.add_argument("--families", nargs="+", default=list(BUILDERS), choices=FAMILIES)
    parser.add_argument("--hang-timeout", type=float, default=0,
                        help="after this many seconds, print every thread's stack to stderr and exit (0: never)")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` shows where a rank waits
    if args.hang_timeout:
        faulthandler.dump_traceback_later(args.hang_timeout, exit=True)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two processes share the CI machine's cores
    recorder = SampleRecorder()

    def make_trainer() -> pl.Trainer:
        return pl.Trainer(
            accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[recorder], default_root_dir=str(args.out),
        )

    # Under DDP one trainer for every family: a second DDP Trainer in the same script would launch the other rank
    # again (the test launches one family per 2-process run). On one process a fresh trainer per family: a Trainer
    # keeps the names it has logged across runs and rejects a name (val/loss) that another module logs otherwise.
    shared = make_trainer() if args.devices > 1 else None
    for family in args.families:
        try:
            run_family(shared or make_trainer(), recorder, family, args.data_dir, args.out)
        except Exception:  # recorded for the test, which shows it; the rank stops (its peer would wait forever)
            rank = int(os.environ.get("LOCAL_RANK", 0))
            (args.out / f"{family}_rank{rank}.error").write_text(traceback.format_exc())
            raise


if __name__ == "__main__":
    main()
