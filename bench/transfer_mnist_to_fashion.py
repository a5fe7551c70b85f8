"""Transfer learning from MNIST to Fashion-MNIST with 1,000 labels.

1. Pre-train with the zoo's default MNIST recipe (``configs/classification/mnist.yaml``: convnet of
   width 16, SGD + Nesterov, one-cycle schedule, augmentation) for ``--pretrain-epochs`` epochs
   (default 1: 98.8% MNIST test accuracy).
2. Fine-tune on a deterministic class-balanced subset of ``--labels`` Fashion-MNIST training images
   (``train_subset``: 100 per class; the same subset for every run) with
   ``configs/classification/fashion_mnist_finetune.yaml``, three ways:

   - **frozen**: the MNIST network with every stage frozen (``freeze_stages=-1``, BatchNorm
     statistics included): only the new classifier head trains (a linear probe);
   - **unfrozen**: the MNIST network, everything trained (``freeze_stages=0``);
   - **scratch**: the same network from random initialisation.

   Same recipe, epochs and batch size for all three; no model selection (the validation split is
   not used); the score is the accuracy on the official 10,000-image Fashion-MNIST test set after
   the last epoch, over ``--seeds`` seeds (which change the head's initialisation and the batch
   order, not the subset).

    python bench/transfer_mnist_to_fashion.py   # 1.3 min on 2 idle CPU cores (8.8 min measured
                                                # while other jobs shared the cores)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, machine, markdown_table, write_json  # noqa: E402

from zoo.cli import main as cli_main  # noqa: E402


def main(args: list[str], run: bool = True):  # noqa: ANN201
    """The zoo's CLI on ``args`` alone (not on this script's own command line)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return cli_main(args, run=run)
    finally:
        sys.argv = argv

MNIST_CONFIG = str(ROOT / "configs/classification/mnist.yaml")
FINETUNE_CONFIG = str(ROOT / "configs/classification/fashion_mnist_finetune.yaml")
QUIET = ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=null",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
VARIANTS = {
    "frozen": ["--model.init_args.freeze_stages=-1", "--model.init_args.unfreeze_at_epoch=null"],
    "unfrozen": ["--model.init_args.freeze_stages=0"],
    "scratch": ["--model.init_args.freeze_stages=0", "--model.init_args.pretrained=null"],
}
DESCRIPTION = {
    "frozen": "MNIST weights, all stages frozen (head only)",
    "unfrozen": "MNIST weights, everything trained",
    "scratch": "random initialisation, everything trained",
}


def pretrain(data: str, epochs: int, work: Path) -> tuple[Path, float, float]:
    """The MNIST network's checkpoint, its MNIST test accuracy and the training seconds."""
    cli = main(["--config", MNIST_CONFIG, f"--data.init_args.data_dir={data}",
                f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={work}",
                "--trainer.limit_val_batches=0", *QUIET], run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    path = work / "mnist.ckpt"
    cli.trainer.save_checkpoint(path)
    acc = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"]
    return path, acc, seconds


def finetune(variant: str, checkpoint: Path, data: str, labels: int, epochs: int, batch_size: int, seed: int,
             work: Path) -> dict:
    cli = main(["--config", FINETUNE_CONFIG, f"--seed_everything={seed}", f"--data.init_args.data_dir={data}",
                f"--model.init_args.pretrained={checkpoint}", *VARIANTS[variant],
                f"--data.init_args.train_subset={labels}", f"--data.init_args.batch_size={batch_size}",
                f"--trainer.max_epochs={epochs}", "--trainer.limit_val_batches=0",
                f"--trainer.default_root_dir={work}", *QUIET], run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in cli.model.parameters() if p.requires_grad)  # frozen: the head only
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {"variant": variant, "seed": seed, "test_acc": test["test/acc"], "train_seconds": seconds,
            "trainable_params": trainable, "train_images": len(cli.datamodule.train_set)}


def main_bench() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir")
    parser.add_argument("--labels", type=int, default=1000,
                        help="Fashion-MNIST training labels (class-balanced)")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs over the labelled subset")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    data = data_dir(args.data_dir)
    began = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint, mnist_acc, mnist_seconds = pretrain(data, args.pretrain_epochs, work)
        print(f"MNIST pre-training: {args.pretrain_epochs} epochs, {mnist_seconds:.0f} s, "
              f"test acc {mnist_acc:.4f}", flush=True)
        runs = []
        for seed in range(args.seeds):
            for variant in VARIANTS:
                run = finetune(variant, checkpoint, data, args.labels, args.epochs, args.batch_size,
                               100 + seed, work)
                runs.append(run)
                print(f"  {variant:8s} seed {run['seed']}: test acc {run['test_acc']:.4f} "
                      f"({run['train_seconds']:.0f} s)", flush=True)

    summary = {}
    rows = []
    for variant in VARIANTS:
        accs = [r["test_acc"] for r in runs if r["variant"] == variant]
        mean, std = statistics.mean(accs), (statistics.stdev(accs) if len(accs) > 1 else 0.0)
        trainable = next(r["trainable_params"] for r in runs if r["variant"] == variant)
        summary[variant] = {"mean_test_acc": mean, "std_test_acc": std, "test_accs": accs,
                            "trainable_params": trainable}
        rows.append([variant, DESCRIPTION[variant], f"{mean:.4f} ± {std:.4f}",
                     ", ".join(f"{a:.4f}" for a in accs), f"{trainable:,}"])
    total = time.perf_counter() - began
    info = machine()
    print(f"\nMNIST -> Fashion-MNIST with {args.labels:,} labels: official test set accuracy after "
          f"{args.epochs} epochs (mean ± std over {args.seeds} seeds; {info['cpu']}, "
          f"{info['torch_threads']} threads, {total / 60:.1f} min in all)")
    headers = ["variant", "initialisation / training", "test acc", "runs", "trainable params"]
    print(markdown_table(headers, rows))
    path = write_json("transfer_mnist_to_fashion", {
        "labels": args.labels, "pretrain_epochs": args.pretrain_epochs, "finetune_epochs": args.epochs,
        "batch_size": args.batch_size, "seeds": args.seeds, "mnist_test_acc": mnist_acc,
        "mnist_train_seconds": mnist_seconds, "summary": summary, "runs": runs, "total_seconds": total,
        "configs": [str(Path(c).relative_to(ROOT)) for c in (MNIST_CONFIG, FINETUNE_CONFIG)],
    }, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main_bench()
