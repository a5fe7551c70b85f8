"""``compile: true`` measured: training and inference speed of torch.compile against eager, its compile time, the
step where it pays off, and how far its loss curve strays from eager's.

Each route is a shipped config run as a user runs it (``python train.py fit --config ...``, through
``zoo.cli``), once eager and once with ``--model.init_args.compile=true``, from the same seed (same initial
weights, same batches) for ``--steps`` optimizer steps, without validation, logger or progress bar:

* ``convnet``: ``configs/classification/mnist.yaml`` (the 29k-parameter conv net, batch 128);
* ``resnet20``: the same config with ``network: resnet20`` (He et al. 2016, sec. 4.2);
* ``unet16``: ``configs/segmentation/isbi_unet.yaml`` at width 16 (572x572 tiles, batch 1);
* ``vae_conv``: ``configs/generative/mnist_vae.yaml`` (the conv VAE, batch 128).

Training: a step's time runs from Lightning's ``on_train_batch_start`` to ``on_train_batch_end`` (forward,
backward, optimizer; data loading and augmentation are outside it, alike for both). The steady step time is the
median over the second half of the run. Compile time: the compiled run's extra time over the eager run in its
first ``--warm`` steps (the compilations of forward and backward happen there). Pay-off step: the first step at
which the compiled run's cumulative step time falls below the eager run's, measured when it happens within the
run, else extrapolated from the steady times ("never" when compiled is not faster). Each route trains
``--repeats`` times each way, alternating, and the step times are medians over them. Compilations are cold
(inductor's on-disk caches off), as in a user's first run. Loss curve: |compiled - eager| / |eager| of the
10-step moving averages of the first pair's curves, its largest value over the steps against the stated
``LOSS_TOLERANCE`` (float reassociation in the fused kernels, and dropout whose random stream differs between
inductor and eager, make single steps drift apart; the raw per-step maximum is in the JSON, beside how far two
eager runs of the same seed stray from each other).

Inference: the module in eval mode (in the config's memory format) and a copy compiled by
``compile_networks()`` (what ``compile: true`` does when a Trainer runs it), under ``torch.inference_mode``, on
one training batch at the training size (the U-Net's 572x572 tile): the network's call (the VAE's: encoder then
decoder), the first call (compilation), the median of ``--calls`` calls after it, and the largest
|compiled - eager| of the outputs.

    python bench/compile_speed.py --steps 60
    python bench/compile_speed.py --routes convnet --steps 30   # one route
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Every compilation cold, as a user's first run: inductor's on-disk caches would turn a second run's compile
# into a cache read (measured here: the VAE's 13.5 s into 1.0 s).
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, machine, markdown_table, write_json  # noqa: E402

from zoo.cli import main  # noqa: E402

ROUTES: dict[str, tuple[str, list[str]]] = {
    "convnet": ("configs/classification/mnist.yaml", []),
    "resnet20": (
        "configs/classification/mnist.yaml",
        ["--model.init_args.network=resnet20", "--model.init_args.network_kwargs={}"],
    ),
    "unet16": ("configs/segmentation/isbi_unet.yaml", ["--model.init_args.network_kwargs.base_channels=16"]),
    "vae_conv": ("configs/generative/mnist_vae.yaml", ["--model.init_args.fid_classifier=null"]),
}
# The stated tolerance of the loss curves: the largest relative difference of compiled and eager losses.
LOSS_TOLERANCE = 0.05


class StepRecorder(pl.Callback):
    """Each training step's time (batch start to batch end) and loss."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.times.append(time.perf_counter() - self._start)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))


def build_cli(route: str, data: str, steps: int, compile: bool, extra: list[str] | None = None) -> Any:
    config, overrides = ROUTES[route]
    return main(
        [
            "--config",
            str(ROOT / config),
            f"--data.init_args.data_dir={data}",
            f"--trainer.max_steps={steps}",
            "--trainer.max_epochs=-1",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.logger=false",
            "--trainer.callbacks=null",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--model.init_args.compile={str(compile).lower()}",
            *overrides,
            *(extra or []),
        ],
        run=False,
    )


def train_run(route: str, data: str, steps: int, compile: bool, initial: dict) -> StepRecorder:
    cli = build_cli(route, data, steps, compile)
    cli.model.load_state_dict(initial)
    pl.seed_everything(cli.config["seed_everything"], verbose=False)  # the same batches for both runs
    recorder = StepRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule)
    torch._dynamo.reset()  # the next run compiles afresh (its compile time is its own)
    return recorder


def payoff_step(eager: list[float], compiled: list[float], eager_steady: float, compiled_steady: float) -> float | None:
    """The first step (1-based) at which the compiled run's cumulative step time is below the eager run's: measured
    within the run, else extrapolated with the steady step times; None when compiled is not faster."""
    total_eager = total_compiled = 0.0
    for step, (e, c) in enumerate(zip(eager, compiled, strict=True), start=1):
        total_eager, total_compiled = total_eager + e, total_compiled + c
        if step > 1 and total_compiled <= total_eager:
            return float(step)
    if compiled_steady >= eager_steady:
        return None
    return len(eager) + (total_compiled - total_eager) / (eager_steady - compiled_steady)


def _relative_differences(a: list[float], b: list[float], window: int = 1) -> list[float]:
    """|b - a| / |a| step by step, of the ``window``-step moving averages of the two loss curves."""

    def smooth(x: list[float]) -> list[float]:
        return [statistics.fmean(x[max(0, i - window + 1) : i + 1]) for i in range(len(x))]

    return [abs(q - p) / max(abs(p), 1e-12) for p, q in zip(smooth(a), smooth(b), strict=True)]


def measure_training(route: str, data: str, steps: int, warm: int, repeats: int) -> dict[str, Any]:
    pl.seed_everything(0, verbose=False)
    initial = copy.deepcopy(build_cli(route, data, steps, False).model.state_dict())
    eager_runs, compiled_runs = [], []
    for repeat in range(repeats):  # eager, compiled, compiled, eager, ...: a drift of the machine hits both alike
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for compile in order:
            (compiled_runs if compile else eager_runs).append(train_run(route, data, steps, compile, initial))
    half = steps // 2
    eager_steady = statistics.median(statistics.median(r.times[half:]) for r in eager_runs)
    compiled_steady = statistics.median(statistics.median(r.times[half:]) for r in compiled_runs)
    compile_s = statistics.median(
        sum(c.times[:warm]) - sum(e.times[:warm]) for e, c in zip(eager_runs, compiled_runs, strict=True)
    )
    eager, compiled = eager_runs[0], compiled_runs[0]
    window = max(1, min(10, steps // 4))
    smoothed = max(_relative_differences(eager.losses, compiled.losses, window))
    result = {
        "repeats": repeats, "eager_step_ms": eager_steady * 1e3, "compiled_step_ms": compiled_steady * 1e3,
        "train_speedup": eager_steady / compiled_steady, "compile_s": compile_s,
        "payoff_step": payoff_step(eager.times, compiled.times, eager_steady, compiled_steady),
        "loss_max_rel_diff": max(_relative_differences(eager.losses, compiled.losses)),
        "loss_smoothing_window": window, "loss_smoothed_max_rel_diff": smoothed,
        "loss_within_tolerance": smoothed <= LOSS_TOLERANCE,
        "eager_losses": eager.losses, "compiled_losses": compiled.losses,
        "eager_step_times_s": [r.times for r in eager_runs], "compiled_step_times_s": [r.times for r in compiled_runs],
    }  # fmt: skip
    if repeats > 1:  # how far eager strays from itself with the same seed (0 when its kernels are deterministic)
        result["eager_repeat_max_rel_diff"] = max(_relative_differences(eager.losses, eager_runs[1].losses))
    return result


def measure_inference(route: str, data: str, calls: int) -> dict[str, Any]:
    pl.seed_everything(0, verbose=False)
    eager = build_cli(route, data, 1, False).model.eval()
    dm = build_cli(route, data, 1, False).datamodule
    dm.setup("fit")
    # a training batch as the loader gives it (not augmented: that happens after the transfer), at the training
    # size: the U-Net's 572x572 tile, which its valid convolutions take whole
    batch = next(iter(dm.train_dataloader()))
    images = batch["image"] if isinstance(batch, dict) else batch[0]
    if eager.channels_last:
        eager.use_channels_last()
    compiled = copy.deepcopy(eager)
    compiled.compile_networks()  # what compile: true does when a Trainer runs the module
    # the classifier's and segmenter's network; the VAE's forward (encoder, then decoder of the posterior mean)
    call = (lambda m: m(images)) if route == "vae_conv" else (lambda m: m.net(images))

    def timed(module: pl.LightningModule) -> tuple[float, list[float], torch.Tensor]:
        with torch.inference_mode():
            start = time.perf_counter()
            out = call(module)
            first = time.perf_counter() - start
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                call(module)
                times.append(time.perf_counter() - start)
        return first, times, out

    eager_first, eager_times, eager_out = timed(eager)
    compiled_first, compiled_times, compiled_out = timed(compiled)
    torch._dynamo.reset()
    max_diff = float((eager_out.float() - compiled_out.float()).abs().max())
    eager_ms, compiled_ms = statistics.median(eager_times) * 1e3, statistics.median(compiled_times) * 1e3
    return {
        "batch": list(images.shape),
        "eager_call_ms": eager_ms,
        "compiled_call_ms": compiled_ms,
        "inference_speedup": eager_ms / compiled_ms,
        "compile_s": compiled_first - eager_first,
        "output_max_abs_diff": max_diff,
        "payoff_call": (
            (compiled_first - eager_first) * 1e3 / (eager_ms - compiled_ms) if compiled_ms < eager_ms else None
        ),
    }


def main_bench(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", nargs="+", choices=list(ROUTES), default=list(ROUTES))
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="eager / compiled training runs of each route")
    parser.add_argument("--warm", type=int, default=3, help="first steps that hold the compilations")
    parser.add_argument("--calls", type=int, default=20, help="timed inference calls after the first")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the CLI below gets its arguments explicitly, not this script's
    if args.steps < 2 * args.warm:
        parser.error(f"--steps ({args.steps}) must be at least twice --warm ({args.warm})")
    data = data_dir(args.data_dir)
    results: dict[str, Any] = {}
    for route in args.routes:
        print(f"{route}: training, eager then compiled ({args.steps} steps each)", flush=True)
        training = measure_training(route, data, args.steps, args.warm, args.repeats)
        print(f"{route}: inference", flush=True)
        results[route] = {"training": training, "inference": measure_inference(route, data, args.calls)}
        write_json("compile_speed", {"partial": True, "routes": results}, args.out)  # a later crash keeps these
    rows = []
    for route, r in results.items():
        t, i = r["training"], r["inference"]
        rows.append(
            [
                route,
                t["eager_step_ms"],
                t["compiled_step_ms"],
                t["train_speedup"],
                t["compile_s"],
                t["payoff_step"] if t["payoff_step"] is not None else "never",
                t["loss_smoothed_max_rel_diff"],
                i["eager_call_ms"],
                i["compiled_call_ms"],
                i["inference_speedup"],
                i["compile_s"],
                i["output_max_abs_diff"],
            ]
        )
    print(
        f"\ncompile: true against eager ({args.steps} training steps, {machine()['cpu']}, "
        f"{torch.get_num_threads()} threads)"
    )
    print(
        markdown_table(
            [
                "route",
                "train eager ms",
                "train compiled ms",
                "train speedup",
                "train compile s",
                "pays off at step",
                "loss rel. diff (smoothed max)",
                "infer eager ms",
                "infer compiled ms",
                "infer speedup",
                "infer compile s",
                "output max abs diff",
            ],
            rows,
        )
    )
    payload = {
        "caches": "inductor caches disabled (TORCHINDUCTOR_FORCE_DISABLE_CACHES=1): every compilation is cold",
        "steps": args.steps,
        "repeats": args.repeats,
        "warm": args.warm,
        "calls": args.calls,
        "loss_tolerance": LOSS_TOLERANCE,
        "threads": torch.get_num_threads(),
        "routes": results,
    }
    path = write_json("compile_speed", payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main_bench()
