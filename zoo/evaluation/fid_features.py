"""Train the FID feature classifier on real (Fashion-)MNIST, whose features
:class:`zoo.generative.features.ClassifierFeatures` reads.

    python -m zoo.evaluation.fid_features --out checkpoints/fid_lenet5_mnist.ckpt

A tool above the families (it trains a classifier for the generative family's metrics, and the families import
no other family), kept out of the library modules, which build no datamodule.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import torch


def train_feature_classifier(
    out: str | Path,
    data_dir: str | None = None,
    network: str = "lenet5",
    epochs: int = 1,
    seed: int = 0,
    fashion: bool = False,
) -> Path:
    """Train the FID feature classifier on real (Fashion-)MNIST and save its checkpoint to ``out``.

    ``ImageClassifier(network)`` with AdamW (lr 2e-3), batch 128, no augmentation, for ``epochs``
    epochs; the checkpoint loads with :meth:`ClassifierFeatures.from_checkpoint`.
    """
    import pytorch_lightning as pl

    from datamodules import FashionMNISTDataModule, MNISTDataModule
    from zoo.classification import ImageClassifier

    pl.seed_everything(seed, verbose=False)
    dm_class = FashionMNISTDataModule if fashion else MNISTDataModule
    dm = dm_class(data_dir=data_dir, augment=False, batch_size=128)
    model = ImageClassifier(
        network=network,
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3),  # stored as plain data (zoo.core.optim)
    )
    trainer = pl.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    result = trainer.validate(model, dm, verbose=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(out)
    acc = result[0].get("val/acc") if result else None
    print(f"FID feature classifier {network}: val accuracy {acc:.4f}, saved to {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m zoo.evaluation.fid_features --out PATH [--data-dir DIR] [--network lenet5] [--epochs 1] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m zoo.evaluation.fid_features", description="Train the FID feature classifier on real MNIST."
    )
    parser.add_argument("--out", required=True, help="checkpoint path to write")
    parser.add_argument("--data-dir", default=None, help="default: $ZOO_DATA_DIR, else ./data")
    parser.add_argument("--network", default="lenet5")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fashion", action="store_true", help="Fashion-MNIST instead of MNIST")
    args: Any = parser.parse_args(argv)
    train_feature_classifier(args.out, args.data_dir, args.network, args.epochs, args.seed, args.fashion)


if __name__ == "__main__":
    main()
