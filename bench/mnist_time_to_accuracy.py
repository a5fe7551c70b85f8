"""Time to accuracy on MNIST with the README's default config.

Trains ``configs/classification/mnist.yaml`` (through the zoo's CLI, exactly as
``python train.py fit`` does) ``--runs`` times with different seeds. After every epoch (or every
``--probe-steps`` steps) the clock is paused and the model is evaluated on the official 10,000-image
test set. Reports the training wall time until the test accuracy first reaches ``--target`` and
the accuracy reached within ``--budget`` seconds; the median over runs is the headline.

Training time counts everything ``trainer.fit`` does (loading the data, the validation passes)
except the test probes; the bench turns logging, checkpointing and the progress bar off.

    python bench/mnist_time_to_accuracy.py --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, machine, markdown_table, write_json  # noqa: E402

from zoo.cli import main  # noqa: E402


class TestSetProbe(pl.Callback):
    """Evaluates the official test set with the training clock paused."""

    def __init__(self, every_n_steps: int = 0) -> None:
        self.every_n_steps = every_n_steps
        self.paused = 0.0
        self.start = 0.0
        self.points: list[dict] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop = time.perf_counter()
        dm = trainer.datamodule
        dm.setup("test")
        was_training = pl_module.training
        pl_module.eval()
        correct = 0
        with torch.inference_mode():
            for images, labels in dm.test_dataloader():
                correct += int((pl_module(images.to(pl_module.device)).argmax(1).cpu() == labels).sum())
        pl_module.train(was_training)
        self.points.append({
            "train_seconds": stop - self.start - self.paused,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "test_acc": correct / len(dm.test_set),
        })
        self.paused += time.perf_counter() - stop

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._probe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._probe(trainer, pl_module)


def run_once(config: str, seed: int, data: str, probe_steps: int, extra: list[str]) -> list[dict]:
    cli = main(
        ["--config", config, f"--seed_everything={seed}", f"--data.init_args.data_dir={data}",
         "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=null",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='mnist_bench_')}", *extra],  # its config.yaml
        run=False,
    )
    probe = TestSetProbe(probe_steps)
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, cli.datamodule)
    return probe.points


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/classification/mnist.yaml"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of training")
    parser.add_argument("--probe-steps", type=int, default=0, help="also probe every N steps (0: per epoch)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    parser.add_argument("extra", nargs="*", help="more CLI overrides, e.g. --trainer.max_epochs=4")
    args = parser.parse_args()
    data = data_dir(args.data_dir)

    rows, runs = [], []
    for i in range(args.runs):
        seed = 42 + i
        points = run_once(args.config, seed, data, args.probe_steps, args.extra)
        reached = next((p for p in points if p["test_acc"] >= args.target), None)
        in_budget = [p for p in points if p["train_seconds"] <= args.budget]
        runs.append({
            "seed": seed,
            "points": points,
            "time_to_target_s": reached["train_seconds"] if reached else None,
            "acc_within_budget": in_budget[-1]["test_acc"] if in_budget else None,
            "final_acc": points[-1]["test_acc"],
            "train_seconds": points[-1]["train_seconds"],
        })
        r = runs[-1]
        rows.append([seed, r["time_to_target_s"], r["acc_within_budget"], r["final_acc"], r["train_seconds"]])
        progress = ", ".join(f"{p['train_seconds']:.1f}s acc {p['test_acc']:.4f}" for p in points)
        print(f"run {i + 1}/{args.runs}: {progress}", flush=True)

    def median(key: str) -> float | None:
        values = [r[key] for r in runs]
        return None if any(v is None for v in values) else statistics.median(values)

    summary = {
        "median_time_to_target_s": median("time_to_target_s"),
        "median_acc_within_budget": median("acc_within_budget"),
        "median_final_acc": median("final_acc"),
    }
    rows.append(["median", summary["median_time_to_target_s"], summary["median_acc_within_budget"],
                 summary["median_final_acc"], median("train_seconds")])
    headers = ["seed", f"seconds to {args.target:.1%} test acc", f"test acc within {args.budget:.0f} s",
               "final test acc", "training seconds"]
    info = machine()
    print(f"\nMNIST time to accuracy ({Path(args.config).name}, {info['cpu']}, {info['torch_threads']} threads)")
    print(markdown_table(headers, rows))
    path = write_json("mnist_time_to_accuracy", {
        "config": args.config, "target": args.target, "budget_s": args.budget, "runs": runs, **summary,
    }, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main_bench()
