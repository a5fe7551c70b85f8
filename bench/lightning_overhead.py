"""Lightning overhead: the zoo's training step time against a plain PyTorch loop, interleaved step by step.

Both sides train the same network (the default MNIST config's, from the same initial weights) on
the same in-memory MNIST batches with the same augmentation, loss, optimizer, one-cycle schedule,
precision and memory format. The zoo side is ``trainer.fit`` as the default config runs it
(progress bar, metrics, logging to TensorBoard); the plain side is a hand-written step.

Why interleaved: on a shared 2-core machine the same loop's step time varies by +-15% from one
10-second run to the next (the plain loop alone, 8 runs in a row: 30.6 to 41.2 ms/step on
2026-12-03), far more than the 3% this measures. So the plain step runs *inside* the zoo's run:
after each zoo step (at ``on_train_batch_end``) one plain step, on its own copy of the network,
optimizer, schedule and batch iterator. A zoo step's time runs from the end of the plain step
before it to the end of the zoo step (Lightning's fetching, hooks, closure, logging, the bar's
updates: all of it); a plain step's time is its own. Both come from the same seconds of the
machine, so its drift cancels. One thing is shared: a background thread of the zoo side (the rich
progress bar's redraws) also runs during plain steps, so its cost is split between the two sides
(the ablations show it). The headline is the median over ``--runs`` of
sum(zoo step times) / sum(plain step times) after ``--warmup`` steps.

``--ablations`` also runs the zoo side without its parts one at a time (the progress bar at
Lightning's own 100 redraws a second instead of the zoo's 4, no progress bar, no logger,
neither: Lightning's loop, hooks and closure alone), each interleaved the same way.
``--profile`` adds one cProfile'd zoo run without plain steps and a table of the Python self time
per step of each package (cProfile inflates Python-heavy code, so read it as shares).

    python bench/lightning_overhead.py --runs 7 --steps 300 --ablations --profile
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, machine, markdown_table, write_json  # noqa: E402

from zoo.cli import main  # noqa: E402

# The zoo side without one of its parts at a time (``--ablations``): the extra command-line arguments of each.
ABLATIONS: dict[str, list[str]] = {
    "progress bar at 100 Hz (Lightning's default)": [
        '--trainer.callbacks=[{"class_path": "zoo.cli.ZooProgressBar", "init_args": {"refresh_rate": 100}}]'
    ],
    "no progress bar": ["--trainer.enable_progress_bar=false"],
    "no logger": ["--trainer.logger=false"],
    "no progress bar, no logger (loop, hooks, closure)": [
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        "--trainer.enable_model_summary=false",
    ],
}

# Where a function's self time goes in the ``--profile`` table: the first fragment of its file path that matches.
PROFILE_BUCKETS: list[tuple[str, str]] = [
    ("pytorch_lightning/callbacks/progress", "progress bar (Lightning + rich)"),
    ("/rich/", "progress bar (Lightning + rich)"),
    ("pytorch_lightning/loggers", "logger (TensorBoard)"),
    ("lightning_fabric/loggers", "logger (TensorBoard)"),
    ("tensorboard", "logger (TensorBoard)"),
    ("torchmetrics", "metrics (torchmetrics)"),
    ("pytorch_lightning/", "Lightning's loop, hooks, closure"),
    ("lightning_fabric/", "Lightning's loop, hooks, closure"),
    ("lightning_utilities/", "Lightning's loop, hooks, closure"),
    ("/zoo/", "the zoo's module code"),
    ("datamodules/", "data (batches, augmentation)"),
]


class PlainStep:
    """The hand-written training step: the config's network (a copy, from ``initial``), optimizer, one-cycle schedule,
    label smoothing, augmentation, precision and memory format, on its own iterator over the same training set."""

    def __init__(self, cli: Any, initial: dict, steps: int) -> None:
        self.net = copy.deepcopy(cli.model.net)
        self.net.load_state_dict(initial)
        self.net.train()
        # What the config runs on the zoo side: its precision as the CLI resolved it (auto: bf16 autocast where the
        # CPU computes bf16 natively) and its memory format.
        self.bf16 = str(cli.trainer.precision) == "bf16-mixed"
        init = cli.config["model"]["init_args"]
        self.channels_last = bool(init.get("channels_last"))
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.datamodule = cli.datamodule
        self.datamodule.setup("fit")
        self.optimizer = torch.optim.SGD(self.net.parameters(), **dict(init["optimizer"]["init_args"]))
        schedule = {k: v for k, v in dict(init["lr_scheduler"]["init_args"]).items() if v is not None}
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, total_steps=steps + 1, **schedule)
        self.smoothing = init["label_smoothing"]
        self.batches = iter(self.datamodule.train_dataloader())

    def __call__(self) -> float:
        """One step; returns its wall time."""
        start = time.perf_counter()
        images, labels = next(self.batches)[:2]
        images = self.datamodule.augment_batch(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.net(images), labels, label_smoothing=self.smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return time.perf_counter() - start


class Interleaver(pl.Callback):
    """After each zoo step, one plain step (when ``plain`` is given); records both sides' step times. With
    ``profile``, cProfile runs from the end of step ``warmup`` to the end of training."""

    def __init__(self, plain: PlainStep | None, profile: cProfile.Profile | None = None, warmup: int = 0) -> None:
        self.plain, self.profile, self.warmup = plain, profile, warmup
        self.zoo_times: list[float] = []
        self.plain_times: list[float] = []
        self._mark = 0.0

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.zoo_times.append(time.perf_counter() - self._mark)
        if self.plain is not None:
            self.plain_times.append(self.plain())
        if self.profile is not None and len(self.zoo_times) == self.warmup:
            self.profile.enable()
        self._mark = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self.profile is not None:
            self.profile.disable()


def interleaved_run(
    config: str,
    data: str,
    steps: int,
    warmup: int,
    initial: dict,
    log_dir: str,
    extra: list[str] | None = None,
    profile: cProfile.Profile | None = None,
) -> dict[str, float]:
    """One zoo ``fit`` of ``steps`` steps with a plain step after each (none when profiling): ms per step of
    each side after ``warmup`` steps, and their ratio."""
    callbacks = [] if any(a.startswith("--trainer.callbacks=") for a in extra or []) else ["--trainer.callbacks=null"]
    cli = main(
        [
            "--config",
            config,
            f"--data.init_args.data_dir={data}",
            "--trainer.max_epochs=1",
            f"--trainer.limit_train_batches={steps}",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_checkpointing=false",
            *callbacks,
            f"--trainer.logger.init_args.save_dir={log_dir}",
            *(extra or []),
        ],
        run=False,
    )
    cli.model.net.load_state_dict(initial)
    interleaver = Interleaver(None if profile is not None else PlainStep(cli, initial, steps), profile, warmup)
    cli.trainer.callbacks.append(interleaver)
    cli.trainer.fit(cli.model, cli.datamodule)
    zoo = sum(interleaver.zoo_times[warmup:]) / (steps - warmup)
    if profile is not None:
        return {"zoo_ms": zoo * 1e3}
    plain = sum(interleaver.plain_times[warmup:]) / (steps - warmup)
    return {"zoo_ms": zoo * 1e3, "plain_ms": plain * 1e3, "ratio": zoo / plain}


def profile_table(profile: cProfile.Profile, steps: int) -> dict[str, float]:
    """Python self time per training step (ms) of each bucket of ``PROFILE_BUCKETS``; the rest (torch's kernels,
    the optimizer, built-in functions whoever calls them) is "compute and the rest"."""
    buckets: dict[str, float] = {}
    for (path, _, _), (_, _, self_time, _, _) in pstats.Stats(profile).stats.items():
        name = next((bucket for fragment, bucket in PROFILE_BUCKETS if fragment in path), "compute and the rest")
        buckets[name] = buckets.get(name, 0.0) + self_time * 1e3 / steps
    return dict(sorted(buckets.items(), key=lambda item: -item[1]))


def main_bench(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/classification/mnist.yaml"))
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs of the shipped zoo side")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--ablations", action="store_true", help="also the zoo side without each of its parts")
    parser.add_argument("--profile", action="store_true", help="also a cProfile table of one zoo run")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the CLI below gets its arguments explicitly, not this script's
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    data = data_dir(args.data_dir)

    pl.seed_everything(0, verbose=False)
    initial = copy.deepcopy(main(["--config", args.config], run=False).model.net.state_dict())
    variants = {"as shipped": [], **(ABLATIONS if args.ablations else {})}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    profile = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as log_dir:
        for i in range(args.runs):
            for name, extra in variants.items():  # round-robin: every variant sees the same stretch of the machine
                run = interleaved_run(args.config, data, args.steps, args.warmup, initial, log_dir, extra)
                runs[name].append(run)
                print(
                    f"run {i + 1}, {name}: zoo {run['zoo_ms']:.2f} ms/step, plain {run['plain_ms']:.2f} ms/step, "
                    f"ratio {run['ratio']:.3f}",
                    flush=True,
                )
        if profile is not None:
            interleaved_run(args.config, data, args.steps, args.warmup, initial, log_dir, profile=profile)
    shipped = runs["as shipped"]
    median_ratio = statistics.median(r["ratio"] for r in shipped)
    rows = [[i + 1, r["plain_ms"], r["zoo_ms"], r["ratio"]] for i, r in enumerate(shipped)]
    rows.append(
        [
            "median",
            statistics.median(r["plain_ms"] for r in shipped),
            statistics.median(r["zoo_ms"] for r in shipped),
            median_ratio,
        ]
    )
    print(f"\nLightning overhead ({Path(args.config).name}, {args.steps} steps, interleaved, {machine()['cpu']})")
    print(markdown_table(["run", "plain ms/step", "zoo ms/step", "zoo / plain"], rows))
    payload: dict[str, Any] = {
        "config": args.config, "steps": args.steps, "warmup": args.warmup, "design": "interleaved per step",
        "runs": shipped, "median_ratio": median_ratio,
    }  # fmt: skip
    if args.ablations:
        medians = {name: statistics.median(r["ratio"] for r in runs[name]) for name in variants}
        payload["ablations"] = {name: runs[name] for name in ABLATIONS}
        payload["variant_median_ratios"] = medians
        print("\nThe zoo side without its parts (median over the runs of zoo / plain, interleaved)")
        print(markdown_table(["zoo side", "zoo / plain"], [[name, r] for name, r in medians.items()]))
    if profile is not None:
        table = profile_table(profile, args.steps - args.warmup)
        payload["profile_self_ms_per_step"] = table
        print("\nPython self time per step after the warm-up, one cProfile'd zoo run (cProfile inflates Python)")
        print(markdown_table(["part", "ms/step"], [[name, ms] for name, ms in table.items()]))
    path = write_json("lightning_overhead", payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main_bench()
