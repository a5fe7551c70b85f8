"""Lightning overhead: the zoo's training step time against a plain PyTorch loop.

Both sides train the same network (the default MNIST config's, from the same initial weights) on
the same in-memory MNIST batches with the same augmentation, loss, optimizer and one-cycle
schedule. The zoo side is ``trainer.fit`` as the default config runs it (progress bar, metrics,
logging to TensorBoard); the plain side is the hand-written loop. Runs are interleaved
(plain, zoo, plain, zoo, ...) so that machine noise hits both alike; the step time of a run is
the wall time from the end of step ``--warmup`` to the end of the last step, divided by the
number of steps, and the headline is the median of the per-pair ratios zoo / plain.

    python bench/lightning_overhead.py --pairs 5 --steps 150
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, machine, markdown_table, write_json  # noqa: E402

from zoo.cli import main  # noqa: E402


class StepClock(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())

    def step_time(self) -> float:
        return (self.times[-1] - self.times[self.warmup - 1]) / (len(self.times) - self.warmup)


def zoo_run(config: str, data: str, steps: int, warmup: int, initial: dict, log_dir: str) -> float:
    cli = main(
        ["--config", config, f"--data.init_args.data_dir={data}", "--trainer.max_epochs=1",
         f"--trainer.limit_train_batches={steps}", "--trainer.limit_val_batches=0",
         "--trainer.num_sanity_val_steps=0", "--trainer.enable_checkpointing=false", "--trainer.callbacks=null",
         f"--trainer.logger.init_args.save_dir={log_dir}"],
        run=False,
    )
    cli.model.net.load_state_dict(initial)
    clock = StepClock(warmup)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, cli.datamodule)
    return clock.step_time()


def plain_run(config: str, data: str, steps: int, warmup: int, initial: dict) -> float:
    cli = main(["--config", config, f"--data.init_args.data_dir={data}"], run=False)
    net = copy.deepcopy(cli.model.net)
    net.load_state_dict(initial)
    net.train()
    # What the config runs on the zoo side: its precision as the CLI resolved it (auto: bf16 autocast where the CPU
    # computes bf16 natively) and its memory format.
    bf16 = str(cli.trainer.precision) == "bf16-mixed"
    channels_last = bool(cli.config["model"]["init_args"].get("channels_last"))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    dm = cli.datamodule
    dm.setup("fit")
    init = cli.config["model"]["init_args"]
    opt_args = dict(init["optimizer"]["init_args"])
    optimizer = torch.optim.SGD(net.parameters(), **opt_args)
    sched_args = dict(init["lr_scheduler"]["init_args"])
    sched_args = {k: v for k, v in sched_args.items() if v is not None}
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, total_steps=steps, **sched_args)
    smoothing = init["label_smoothing"]
    times = []
    for step, (images, labels) in enumerate(dm.train_dataloader()):
        if step == steps:
            break
        images = dm.augment_batch(images)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(images), labels, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        times.append(time.perf_counter())
    return (times[-1] - times[warmup - 1]) / (len(times) - warmup)


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/classification/mnist.yaml"))
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    data = data_dir(args.data_dir)

    pl.seed_everything(0, verbose=False)
    initial = copy.deepcopy(main(["--config", args.config], run=False).model.net.state_dict())
    rows, pairs = [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for i in range(args.pairs):
            # alternate which side goes first so that a drift in machine speed cancels out
            if i % 2 == 0:
                plain = plain_run(args.config, data, args.steps, args.warmup, initial)
                zoo = zoo_run(args.config, data, args.steps, args.warmup, initial, log_dir)
            else:
                zoo = zoo_run(args.config, data, args.steps, args.warmup, initial, log_dir)
                plain = plain_run(args.config, data, args.steps, args.warmup, initial)
            pairs.append({"plain_ms": plain * 1e3, "zoo_ms": zoo * 1e3, "ratio": zoo / plain})
            rows.append([i + 1, plain * 1e3, zoo * 1e3, zoo / plain])
            print(f"pair {i + 1}: plain {plain * 1e3:.2f} ms/step, zoo {zoo * 1e3:.2f} ms/step", flush=True)
    median_ratio = statistics.median(p["ratio"] for p in pairs)
    rows.append(["median", statistics.median(p["plain_ms"] for p in pairs),
                 statistics.median(p["zoo_ms"] for p in pairs), median_ratio])
    print(f"\nLightning overhead ({Path(args.config).name}, {args.steps} steps, {machine()['cpu']})")
    print(markdown_table(["pair", "plain ms/step", "zoo ms/step", "zoo / plain"], rows))
    path = write_json("lightning_overhead", {
        "config": args.config, "steps": args.steps, "warmup": args.warmup, "pairs": pairs,
        "median_ratio": median_ratio,
    }, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main_bench()
