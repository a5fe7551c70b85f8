"""Fashion-MNIST test accuracy of a representative set of classifiers in a fixed CPU budget.

Each model trains on the Fashion-MNIST training split (55,000 images; 5,000 held out for
validation) for ``--minutes`` of wall time with SGD + Nesterov and a learning rate that follows a
one-cycle shape over *time* (warm-up over the first 15% of the budget, cosine decay to zero at
its end), so every model gets a complete schedule whatever its speed. Training runs under bf16
autocast where the CPU computes bf16 natively, else float32 (``--precision auto``; weights and the test
pass stay float32). Then the official
10,000-image test set is evaluated once. Same data pipeline as the zoo's configs
(in-memory tensors, per-batch random shifts), same ImageClassifier.

    python bench/fashion_mnist_accuracy.py --minutes 10
    python bench/fashion_mnist_accuracy.py --minutes 2 --models lenet5 resnet20
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TimeBudget, add_precision_argument, data_dir, machine, markdown_table, write_json  # noqa: E402

from datamodules import FashionMNISTDataModule  # noqa: E402
from zoo import get_model_entry  # noqa: E402
from zoo.classification import ImageClassifier  # noqa: E402

DEFAULT_MODELS = ["lenet5", "nin", "resnet20", "densenet_bc100", "seresnet50", "mobilenet_v2"]


def evaluate(model: ImageClassifier, dm: FashionMNISTDataModule) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for images, labels in dm.test_dataloader():
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(dm.test_set)


def run(name: str, minutes: float, data: str, max_lr: float, batch_size: int, precision: str) -> dict:
    pl.seed_everything(0, verbose=False)
    dm = FashionMNISTDataModule(data_dir=data, download=False, batch_size=batch_size,
                                rotation_degrees=0.0, translate_px=2.0, scale=0.0)
    kwargs = {}
    if "small_input" in inspect.signature(get_model_entry(name).builder).parameters:
        kwargs["small_input"] = True
    model = ImageClassifier(
        network=name, num_classes=10, in_channels=1, network_kwargs=kwargs, label_smoothing=0.1,
        optimizer=partial(torch.optim.SGD, lr=max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4),
        class_names=dm.class_names,
    )
    budget = TimeBudget(minutes * 60, max_lr)
    trainer = pl.Trainer(max_epochs=1000, precision=precision, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[budget])
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    dm.setup("test")
    return {
        "model": name,
        "params": sum(p.numel() for p in model.net.parameters()),
        "network_kwargs": kwargs,
        "steps": budget.steps,
        "epochs": budget.steps * batch_size / len(dm.train_set),
        "train_seconds": seconds,
        "test_acc": evaluate(model, dm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--max-lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    add_precision_argument(parser)
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    data = data_dir(args.data_dir)
    results = []
    for name in args.models:
        results.append(run(name, args.minutes, data, args.max_lr, args.batch_size, args.precision))
        print(results[-1], flush=True)
    info = machine()
    rows = [[r["model"], r["params"] / 1e6, r["epochs"], r["train_seconds"], r["test_acc"]] for r in results]
    print(f"\nFashion-MNIST, {args.minutes:g} min of training per model ({info['date']}, {info['cpu']}, "
          f"{info['torch_threads']} threads)")
    print(markdown_table(["model", "params (M)", "epochs", "train s", "test acc"], rows))
    path = write_json("fashion_mnist_accuracy", {"minutes": args.minutes, "max_lr": args.max_lr,
                                                 "batch_size": args.batch_size, "precision": args.precision,
                                                 "results": results}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
