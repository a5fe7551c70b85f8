"""Training throughput on 1 and N processes under Lightning's DDP: the scaling efficiency.

Two workloads on real data: a classifier (CIFAR ResNet-20 on MNIST, batch 128 per process) and a
segmenter (the valid U-Net, width 16, on ISBI 2012 crops of 252 px, batch 2 per process, weight map
on). Each configuration runs in a fresh process tree (``--worker``): Lightning's ``ddp`` strategy
launches the other ranks by re-running that command, exactly as ``python train.py fit
--trainer.strategy ddp`` does. After ``--warmup`` steps, rank 0 times ``--steps`` optimizer steps
(every rank takes one step per global step, so the global throughput is
``world_size x batch x steps / seconds``).

On a CPU (``--accelerator cpu``, gloo backend) the processes share the machine's cores: each of N
processes gets ``cores / N`` torch threads, so the comparison is the same hardware split two ways,
and the interesting figure is ``samples/s(N) / samples/s(1)`` (1.0 = DDP costs nothing). On GPUs
(``--accelerator gpu --devices 1 8``) each process owns a GPU and the efficiency is
``samples/s(N) / (N x samples/s(1))``.

    python bench/ddp_scaling.py                                        # CPU, 1 vs 2 processes
    python bench/ddp_scaling.py --accelerator gpu --devices 1 8 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, machine, markdown_table, train_only_trainer, write_json  # noqa: E402

WORKLOADS = ("classifier", "segmenter")


class StepTimer(pl.Callback):
    """Wall time of ``steps`` training steps after ``warmup`` steps; stops the run after them."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start: float | None = None
        self.seconds = float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.start is not None and trainer.global_step >= self.warmup + self.steps:
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


def build(workload: str, data: str) -> tuple[pl.LightningModule, pl.LightningDataModule, int]:
    """The module, the datamodule and the per-process batch size of a workload."""
    from datamodules import ISBI2012DataModule, MNISTDataModule
    from zoo.classification import ImageClassifier
    from zoo.segmentation import SemanticSegmenter

    if workload == "classifier":
        dm = MNISTDataModule(data_dir=data, download=False, batch_size=128)
        model = ImageClassifier(network="resnet20", num_classes=10, in_channels=1)
        return model, dm, dm.batch_size
    root = Path(data) / "isbi2012_em_membrane"
    model = SemanticSegmenter(
        "unet", network_kwargs={"base_channels": 16, "depth": 4}, loss="weighted_ce", class_names=["membrane", "cell"]
    )
    dm = ISBI2012DataModule(
        data_dir=str(root if root.is_dir() else data), crop_size=252, pad=model.net.border, crops_per_image=16,
        batch_size=2, weight_maps=True,
    )
    return model, dm, dm.batch_size


def worker(args: argparse.Namespace) -> None:
    """One configuration; every rank runs this, rank 0 writes ``args.result``."""
    devices = args.devices[0]
    if args.accelerator == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices))
    pl.seed_everything(0, verbose=False)
    model, dm, batch = build(args.workloads[0], args.data)
    timer = StepTimer(args.warmup, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train_only_trainer(
            accelerator=args.accelerator,
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            precision=args.precision,
            max_steps=args.warmup + args.steps,
            enable_progress_bar=False,
            callbacks=[timer],
            default_root_dir=tmp,
        )
        trainer.fit(model, dm)
    if trainer.global_rank == 0:
        world = trainer.world_size
        Path(args.result).write_text(
            json.dumps(
                {
                    "workload": args.workloads[0],
                    "processes": world,
                    "threads_per_process": torch.get_num_threads(),
                    "batch_per_process": batch,
                    "steps": args.steps,
                    "seconds": timer.seconds,
                    "samples_per_s": world * batch * args.steps / timer.seconds,
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 2], help="process counts to compare")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    data = data_dir(args.data_dir)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            for devices in args.devices:
                result = Path(tmp) / f"{workload}_{devices}.json"
                command = [
                    sys.executable, __file__, "--worker", "--workloads", workload, "--devices", str(devices),
                    "--accelerator", args.accelerator, "--precision", args.precision, "--warmup", str(args.warmup),
                    "--steps", str(args.steps), "--data", data, "--result", str(result),
                ]
                subprocess.run(command, check=True)
                results.append(json.loads(result.read_text()))
                print(results[-1], flush=True)

    rows = []
    for r in results:
        base = next(b for b in results if b["workload"] == r["workload"] and b["processes"] == min(args.devices))
        speedup = r["samples_per_s"] / base["samples_per_s"]
        r["speedup"] = speedup
        # GPUs add hardware with each process; CPU processes split the same cores.
        r["efficiency"] = speedup / (r["processes"] / base["processes"]) if args.accelerator == "gpu" else speedup
        rows.append([r["workload"], r["processes"], r["threads_per_process"], r["batch_per_process"],
                     r["samples_per_s"], speedup, r["efficiency"]])
    info = machine()
    print(f"\nDDP scaling, {args.accelerator}, {info['date']}, {info['cpu']} ({info['cores']} cores), "
          f"{info['gpu'] or 'no GPU'}")
    print(markdown_table(["workload", "processes", "threads/process", "batch/process", "samples/s", "speedup",
                          "efficiency"], rows))
    path = write_json("ddp_scaling", {"accelerator": args.accelerator, "precision": args.precision,
                                      "steps": args.steps, "results": results}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
