"""ResNet-50 training throughput on a GPU (issue 21): images/s at 224x224 with bf16-mixed and channels-last, eager
and compiled, against timm's published figure and against the GPU's own bf16 matrix-multiply peak; the image
loader's images/s beside it; 1 vs N GPU DDP scaling where the machine has several. About 3 minutes on one
H100 / H200 with the defaults (most of it the compilation).

1. **The matmul peak.** The best of ``--matmul-repeats`` rounds of ``--matmul-iters`` products of two
   ``--matmul-size`` square matrices (bf16 under a bf16 precision), 2 n^3 FLOPs each (a multiply and an add per
   term): the TFLOP/s the GPU reaches at all, against which the model's FLOP/s is a fraction.
2. **FLOPs per image.** One forward + backward of the network (cross-entropy loss) counted by
   ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (shapes only, nothing computed), with the
   matmul peak's convention of 2 FLOPs per multiply-add: ResNet-50 at 224 counts 24.3e9 (forward 8.2e9, backward
   about twice that; the first convolution computes no input gradient). The issue's "about 12.3 GFLOP per image"
   counts *multiply-adds* (3 x 4.1 G, the forward's 4.1 GMACs as timm and torchvision quote them), half the
   count: the fraction of peak with it is printed beside the counted one, and is half of it.
3. **Training throughput.** What a user trains: ``zoo.classification.ImageClassifier(network="resnet50",
   num_classes=1000)`` with SGD (momentum 0.9, weight decay 1e-4: timm's benchmark optimizer) under a Lightning
   Trainer (accelerator gpu, ``--precision`` default bf16-mixed, ``benchmark=True``: cuDNN picks its
   convolution algorithms, as timm's benchmark does), fed one synthetic batch that stays on the GPU (the same
   tensors every step: no loader, no host-to-device copy, so the network alone is timed). **Channels-last**: the
   module's ``channels_last=True`` (``--model.init_args.channels_last true``), and the batch made channels-last.
   First eager, then ``compile=True`` (ZooModule's ``torch.compile`` of the
   network, what ``--model.init_args.compile true`` runs; ``--compile-mode``). ``--warmup-steps`` untimed steps
   (the compiled run's first step compiles: its excess over a steady step is reported as ``compile_s``), then
   ``--steps`` timed ones between two ``torch.cuda.synchronize``: images/s and ms/step.
4. **The loader.** Images/s of the zoo's training loader for a user's folder of photographs
   (``datamodules.ImageFolderDataModule``: JPEG decoding by torchvision, RandomResizedCrop to the image size,
   horizontal flip, ImageNet normalization, pinned batches) over ``--loader-files`` JPEGs of ``--jpeg-size``
   written into a temporary folder (smooth random colour fields with noise: about 54 kB at 500x375, a typical
   ImageNet size; ImageNet's own JPEGs average about 110 kB, so they decode somewhat slower),
   ``--loader-workers`` worker processes (default: every core this process may use). Measured alone, feeding
   nothing: whether it could keep up with the GPU is the ratio to the faster training run.
5. **DDP scaling.** With several GPUs (``torch.cuda.device_count() > 1``; ``--ddp-devices``) the eager (or
   ``--ddp-compile``) run again on N GPUs, ``strategy="ddp"``, in a subprocess (Lightning's DDP launcher re-runs
   this script's command for the other ranks): global images/s = N x batch x steps / seconds, the efficiency
   images/s(N) / (N x images/s(1)). One GPU: no scaling measured. On a CPU it is skipped (processes there would
   share the same cores; ``bench/ddp_scaling.py`` measures that) unless ``--ddp-devices`` asks for it, which
   runs gloo processes: a check of the path, not a measurement.

References: timm's ``resnet50`` trains at 826 images/s on an RTX 3090 with AMP (float16), NCHW, batch 512
(``results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv`` of pytorch-image-models); the issue's target is
>= 3,000 images/s on one H100 / H200.

    python bench/gpu.py                          # one GPU: all of the above, bench/results/gpu.json
    python bench/gpu.py --batch-size 512 --steps 100 --ddp-devices 8
    python bench/gpu.py --cpu-smoke --out /tmp/gpu_smoke.json    # every path on the CPU, tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_note, machine, markdown_table, train_only_trainer, write_json  # noqa: E402

from zoo.core.precision import preferred_precision  # noqa: E402

TIMM_RTX3090_AMP_IMAGES_PER_S = 826.06  # resnet50, batch 512, 224 px, NCHW (the csv above)
TARGET_IMAGES_PER_S = 3000.0  # issue 21, one H100 / H200
ISSUE_FLOPS_PER_IMAGE = 12.3e9  # the issue's figure: multiply-adds of forward + backward at 224 (see the docstring)
NUM_CLASSES = 1000
RUNS = ("eager", "compiled")
# torch.compile on a CPU builds ResNet-50's C++ kernels for minutes on a small machine: the smoke run leaves it out
# unless --runs names it.
SMOKE = dict(image_size=32, batch_size=2, steps=2, warmup_steps=1, matmul_size=128, matmul_iters=2, matmul_repeats=1,
             loader_files=8, loader_images=8, loader_warmup=1, loader_workers=1, jpeg_size=[64, 48],
             runs=["eager"])  # fmt: skip
QUIET = (".*does not have many workers.*", ".*Tensor Cores.*", ".*GPU available.*", ".*TPU available.*")


# -- arithmetic ----------------------------------------------------------------------------------------------------
def matmul_flops(n: int) -> float:
    """FLOPs of one product of two ``n x n`` matrices: ``n^2`` outputs of ``n`` multiply-adds, 2 FLOPs each."""
    return 2.0 * n**3


def flop_rate(flops: float, seconds: float) -> float:
    """FLOP/s of ``flops`` done in ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"a timing of {seconds} s cannot give a rate: the clock did not advance")
    return flops / seconds


def fraction_of_peak(images_per_s: float, flops_per_image: float, peak_flops_per_s: float) -> float:
    """The model's FLOP/s (``images_per_s x flops_per_image``) as a fraction of the measured matmul peak."""
    return images_per_s * flops_per_image / peak_flops_per_s


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a clock read alone times the launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 1. the matmul peak --------------------------------------------------------------------------------------------
def matmul_peak(
    n: int, iters: int, repeats: int, device: torch.device, dtype: torch.dtype,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:  # fmt: skip
    """The best FLOP/s of ``repeats`` rounds of ``iters`` ``n x n`` products (after three untimed ones)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):  # cuBLAS picks its kernel and the clocks ramp up
        torch.matmul(a, b, out=out)
    rates = []
    for _ in range(repeats):
        sync(device)
        start = clock()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        sync(device)
        rates.append(flop_rate(matmul_flops(n) * iters, clock() - start))
    return {"n": n, "iters": iters, "repeats": repeats, "dtype": str(dtype).removeprefix("torch."),
            "tflops": max(rates) / 1e12, "tflops_rounds": [r / 1e12 for r in rates]}  # fmt: skip


# -- 2. FLOPs per image --------------------------------------------------------------------------------------------
def training_flops_per_image(network: str, image_size: int, num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """FLOPs of one image's forward and forward + backward through the registered classification ``network``,
    counted on the meta device (2 per multiply-add, as :func:`matmul_flops`)."""
    import zoo.classification  # noqa: F401  (registers the classification networks)
    from zoo.core.registry import create_model

    with torch.device("meta"):
        net = create_model(network, family="classification", num_classes=num_classes, in_channels=3)
    # Two images: batch norm refuses one value per channel in training (ResNet-50's last block at 32 px is 1 x 1).
    batch = 2
    x = torch.empty(batch, 3, image_size, image_size, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    forward = FlopCounterMode(display=False)
    with forward:
        net(x)
    total = FlopCounterMode(display=False)
    with total:
        F.cross_entropy(net(x), y).backward()
    return {"forward": forward.get_total_flops() / batch, "forward_backward": total.get_total_flops() / batch}


# -- 3. training throughput ----------------------------------------------------------------------------------------
class SyntheticBatches(Dataset):
    """``length`` times the same ``(images, labels)`` batch, made on first use on the device the trainer set
    (``torch.cuda.current_device()`` under DDP is each rank's own GPU), channels-last when asked."""

    def __init__(self, length: int, batch_size: int, image_size: int, cuda: bool, channels_last: bool) -> None:
        self.length, self.batch_size, self.image_size = length, batch_size, image_size
        self.cuda, self.channels_last = cuda, channels_last
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch is None:
            device = torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")
            generator = torch.Generator().manual_seed(0)
            images = torch.randn(self.batch_size, 3, self.image_size, self.image_size, generator=generator)
            labels = torch.randint(0, NUM_CLASSES, (self.batch_size,), generator=generator)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.batch = images.to(device), labels.to(device)
        return self.batch


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a count that grows in the timed window means a
    recompilation was timed)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


class StepTimer(pl.Callback):
    """Times the first step, the warm-up and ``steps`` steps after ``warmup`` ones (the device synchronized at every
    clock read), then stops the fit. The device is the module's once training starts (each rank's own GPU)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.device = torch.device("cpu")
        self.fit_start = self.window_start = math.nan
        self.first_step_s = self.warmup_s = self.seconds = math.nan
        self.graphs_at_start = self.graphs_at_end = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.device = pl_module.device
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.warmup and math.isnan(self.window_start):
            sync(self.device)
            self.window_start = time.perf_counter()
            self.warmup_s = self.window_start - self.fit_start
            self.graphs_at_start = compiled_graphs()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == 1:
            sync(self.device)
            self.first_step_s = time.perf_counter() - self.fit_start
        if trainer.global_step >= self.warmup + self.steps and math.isnan(self.seconds):
            sync(self.device)
            self.seconds = time.perf_counter() - self.window_start
            self.graphs_at_end = compiled_graphs()
            trainer.should_stop = True

    def peak_memory_gib(self) -> float | None:
        """The most memory the device's tensors held during the fit (None off CUDA)."""
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None


def build_classifier(network: str, compile: bool, compile_mode: str, channels_last: bool) -> pl.LightningModule:
    from zoo.classification import ImageClassifier

    # channels_last: what --model.init_args.channels_last true runs (NHWC weights and inputs: cuDNN's tensor-core
    # convolutions skip the layout transposes around every convolution)
    return ImageClassifier(
        network=network, num_classes=NUM_CLASSES, in_channels=3, compile=compile, compile_mode=compile_mode,
        channels_last=channels_last,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-4),
    )  # fmt: skip


def train_throughput(args: argparse.Namespace, compile: bool, devices: int = 1) -> dict[str, Any]:
    """Images/s of ``args.steps`` training steps of the classifier on synthetic batches, on ``devices`` devices
    (``strategy="ddp"`` when more than one)."""
    cuda = args.accelerator == "gpu"
    pl.seed_everything(0, verbose=False)
    model = build_classifier(args.network, compile, args.compile_mode, args.channels_last)
    total = args.warmup_steps + args.steps
    data = SyntheticBatches(total + 1, args.batch_size, args.image_size, cuda, args.channels_last)
    timer = StepTimer(args.warmup_steps, args.steps)
    graphs_before = compiled_graphs()  # dynamo's counters are per process: an earlier run's graphs are in them
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message)
        trainer = train_only_trainer(
            accelerator=args.accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto",
            precision=args.precision, max_steps=total, benchmark=cuda or None, use_distributed_sampler=False,
            enable_progress_bar=False, callbacks=[timer], default_root_dir=tmp,
        )  # fmt: skip
        # batch_size=None: the dataset's items are whole batches, handed over as they are
        trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=None))
    if math.isnan(timer.seconds):
        raise RuntimeError(f"the fit stopped before the timed window ended ({trainer.global_step} of {total} steps)")
    world = trainer.world_size
    step_s = timer.seconds / args.steps
    result = {
        "run": "compiled" if compile else "eager",
        "devices": world,
        "rank": trainer.global_rank,
        "batch_per_device": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "seconds": timer.seconds,
        "images_per_s": world * args.batch_size * args.steps / timer.seconds,
        "ms_per_step": 1000 * step_s,
        "first_step_s": timer.first_step_s,
        "warmup_s": timer.warmup_s,
        # The first step's excess over a steady one: dynamo's tracing and inductor's compilation and autotuning.
        "compile_s": timer.first_step_s - step_s if compile else None,
        "graphs_compiled": timer.graphs_at_end - graphs_before,
        "recompiled_in_window": timer.graphs_at_end > timer.graphs_at_start,
        "peak_memory_gib": timer.peak_memory_gib(),
    }
    del trainer, model, data
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def ddp_run(args: argparse.Namespace, devices: int) -> dict[str, Any]:
    """:func:`train_throughput` on ``devices`` devices, in a fresh process tree (Lightning's DDP launcher starts
    ranks 1.. by re-running the command of rank 0)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "ddp.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), "--worker", "--result", str(result),
            "--devices", str(devices), "--device", "cpu" if args.accelerator == "cpu" else "gpu",
            "--network", args.network, "--precision", args.precision, "--image-size", str(args.image_size),
            "--batch-size", str(args.batch_size), "--steps", str(args.steps),
            "--warmup-steps", str(args.warmup_steps), "--compile-mode", args.compile_mode,
            "--channels-last" if args.channels_last else "--no-channels-last",
            "--ddp-compile" if args.ddp_compile else "--no-ddp-compile",
        ]  # fmt: skip
        subprocess.run(command, check=True)
        return json.loads(result.read_text())


def worker(args: argparse.Namespace) -> None:
    """One DDP configuration; every rank runs it, rank 0 writes ``args.result``."""
    if args.accelerator == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.devices))
    result = train_throughput(args, compile=args.ddp_compile, devices=args.devices)
    if result["rank"] == 0:
        Path(args.result).write_text(json.dumps(result))


# -- 4. the loader -------------------------------------------------------------------------------------------------
def write_jpegs(root: Path, count: int, size: tuple[int, int], classes: int = 4, seed: int = 0) -> dict[str, Any]:
    """``count`` JPEGs of ``size`` (width, height) in ``root/<class>/``: smooth random colour fields (a 12 x 9
    grid of random colours, bilinearly enlarged) with pixel noise, so that they compress like photographs rather
    than like flat colour or pure noise. Written by threads (PIL releases the GIL while encoding)."""
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    grids = rng.integers(0, 256, (count, 9, 12, 3), dtype=np.uint8)
    noise_seeds = rng.integers(0, 2**32, count)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> int:
        field = np.asarray(Image.fromarray(grids[i]).resize((width, height), Image.Resampling.BILINEAR), np.int16)
        noise = np.random.default_rng(noise_seeds[i]).integers(-12, 13, field.shape, dtype=np.int16)
        path = root / f"class_{i % classes}" / f"{i:06d}.jpg"
        Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
        return path.stat().st_size

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0)))) as pool:
        sizes = list(pool.map(write, range(count)))
    return {"files": count, "width": width, "height": height, "mean_kb": float(np.mean(sizes)) / 1024,
            "write_s": time.perf_counter() - start}  # fmt: skip


def endless(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (persistent workers carry on across the epochs)."""
    while True:
        yield from loader


def loader_throughput(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of ImageFolderDataModule's training loader over the JPEGs in ``root``: ``args.loader_images``
    images after ``args.loader_warmup`` batches (the workers' start-up), across epochs (persistent workers)."""
    from datamodules import ImageFolderDataModule

    dm = ImageFolderDataModule(
        data_dir=str(root), image_size=args.image_size, val_size=0, test_size=0, batch_size=args.batch_size,
        num_workers=args.loader_workers,
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()

    stream = endless(loader)
    start = time.perf_counter()
    for _ in range(args.loader_warmup):
        next(stream)
    startup_s = time.perf_counter() - start
    images, start = 0, time.perf_counter()
    while images < args.loader_images:
        x, _y = next(stream)
        images += len(x)
    seconds = time.perf_counter() - start
    shape = list(x.shape)
    del stream, loader
    return {"workers": args.loader_workers, "batch_size": args.batch_size, "images": images, "seconds": seconds,
            "images_per_s": images / seconds, "startup_s": startup_s, "batch_shape": shape,
            "pin_memory": dm.pin_memory}  # fmt: skip


# -- the command ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="every measurement on the CPU at tiny sizes (a check of the script, not a benchmark): "
                        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in SMOKE.items()))  # fmt: skip
    parser.add_argument("--device", choices=("gpu", "cpu"), help="default: gpu (cpu with --cpu-smoke)")
    parser.add_argument("--network", default="resnet50", help="registered classification network")
    parser.add_argument("--precision", default="auto",
                        help="Lightning precision; auto: bf16-mixed where the device computes bf16 natively "
                        "(zoo.core.precision.preferred_precision)")  # fmt: skip
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int, help="per device (default 256)")
    parser.add_argument("--steps", type=int, help="timed training steps (default 50)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps first (default 15; the compiled run's first "
                        "compiles)")  # fmt: skip
    parser.add_argument("--runs", nargs="+", choices=RUNS, help="default: eager compiled")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--matmul-size", type=int, help="default 8192")
    parser.add_argument("--matmul-iters", type=int, help="default 50")
    parser.add_argument("--matmul-repeats", type=int, help="default 5")
    parser.add_argument("--loader-files", type=int, help="JPEGs written (default 2048)")
    parser.add_argument("--loader-images", type=int, help="images timed (default 4096)")
    parser.add_argument("--loader-warmup", type=int, help="untimed batches first (default 2)")
    parser.add_argument("--loader-workers", type=int, help="default: the cores this process may use")
    parser.add_argument("--jpeg-size", type=int, nargs=2, metavar=("W", "H"), help="default 500 375")
    parser.add_argument(
        "--ddp-devices",
        type=int,
        help="N of the 1 vs N comparison (default: every visible GPU; on a CPU: skipped unless given)",
    )
    parser.add_argument(
        "--ddp-compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="DDP runs compiled (default eager: N processes would each compile)",
    )
    parser.add_argument("--out", help="JSON path (default bench/results/gpu.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    defaults = dict(image_size=224, batch_size=256, steps=50, warmup_steps=15, matmul_size=8192, matmul_iters=50,
                    matmul_repeats=5, loader_files=2048, loader_images=4096, loader_warmup=2,
                    loader_workers=len(os.sched_getaffinity(0)), jpeg_size=[500, 375], runs=list(RUNS))  # fmt: skip
    if args.cpu_smoke:
        defaults.update(SMOKE)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.accelerator = args.device or ("cpu" if args.cpu_smoke else "gpu")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible. Fix: run on a GPU machine, or pass --cpu-smoke to check the script")
    if args.precision == "auto":
        args.precision = preferred_precision(args.accelerator)
    return args


def matmul_dtype(precision: str) -> torch.dtype:
    """The dtype whose matmuls the training precision runs: bf16 / fp16 under mixed precision, else float32."""
    if "bf16" in precision:
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def ddp_plan(args: argparse.Namespace) -> tuple[int | None, str | None]:
    """The N of the DDP comparison, or None and the reason it is not measured."""
    if args.accelerator == "cpu":
        if args.ddp_devices and args.ddp_devices > 1:
            return args.ddp_devices, None
        return None, ("CPU: processes would share the same cores (bench/ddp_scaling.py measures that); "
                      "--ddp-devices N runs gloo processes as a check of the path")  # fmt: skip
    visible = torch.cuda.device_count()
    n = args.ddp_devices or visible
    if n > visible:
        raise SystemExit(f"--ddp-devices {n}, but {visible} GPU(s) are visible. Fix: --ddp-devices {visible} or less.")
    if n <= 1:
        return None, f"{visible} GPU: no scaling measured"
    return n, None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.cpu_smoke:
        torch.set_num_threads(1)  # a check of the script: no more of a shared machine than it needs
    device = torch.device("cuda", 0) if args.accelerator == "gpu" else torch.device("cpu")
    gpu = torch.cuda.get_device_name(0) if args.accelerator == "gpu" else None
    print(f"{args.network} at {args.image_size} px, batch {args.batch_size}, {args.precision}, channels-last "
          f"{args.channels_last}, on {gpu or 'the CPU'}", flush=True)  # fmt: skip
    payload: dict[str, Any] = {
        "gpus_visible": torch.cuda.device_count(),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "worker", "result", "devices")},
        "load_at_start": load_note(),
        "channels_last": "the zoo has no channels-last setting: this script converts the module "
        "(model.to(memory_format=torch.channels_last)) and makes the batch channels-last" if args.channels_last
        else "off (--no-channels-last)",
        "reference": {"timm_rtx3090_amp_images_per_s": TIMM_RTX3090_AMP_IMAGES_PER_S,
                      "timm_source": "pytorch-image-models results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv "
                      "(resnet50, batch 512, 224 px, NCHW, float16 AMP)",
                      "target_images_per_s": TARGET_IMAGES_PER_S},
    }  # fmt: skip

    dtype = matmul_dtype(args.precision)
    peak = matmul_peak(args.matmul_size, args.matmul_iters, args.matmul_repeats, device, dtype)
    payload["matmul_peak"] = peak
    print(f"matmul peak: {peak['tflops']:.1f} TFLOP/s ({peak['dtype']}, n={peak['n']})", flush=True)

    counted = training_flops_per_image(args.network, args.image_size)
    at_224 = counted if args.image_size == 224 else training_flops_per_image(args.network, 224)
    payload["flops_per_image"] = {
        "counted_forward": counted["forward"], "counted_forward_backward": counted["forward_backward"],
        "counted_forward_backward_224": at_224["forward_backward"], "issue_forward_backward_224": ISSUE_FLOPS_PER_IMAGE,
        "note": "FlopCounterMode counts 2 FLOPs per multiply-add (as the matmul peak); the issue's 12.3e9 counts "
        "multiply-adds",
    }  # fmt: skip
    print(f"FLOPs per image (forward + backward, {args.image_size} px): {counted['forward_backward'] / 1e9:.2f} G "
          f"counted; at 224: {at_224['forward_backward'] / 1e9:.2f} G counted, the issue's "
          f"{ISSUE_FLOPS_PER_IMAGE / 1e9:.1f} G (multiply-adds)", flush=True)  # fmt: skip

    peak_flops = peak["tflops"] * 1e12
    errors: list[dict[str, str]] = []  # a part that fails is recorded and the others still run: GPU time is scarce
    runs = []
    for name in args.runs:
        result = attempt(f"training ({name})", errors, lambda name=name: train_throughput(args, name == "compiled"))
        if result is None:
            continue
        result["model_tflops"] = result["images_per_s"] * counted["forward_backward"] / 1e12
        result["fraction_of_peak"] = fraction_of_peak(result["images_per_s"], counted["forward_backward"], peak_flops)
        result["fraction_of_peak_issue_flops"] = fraction_of_peak(
            result["images_per_s"], ISSUE_FLOPS_PER_IMAGE * (args.image_size / 224) ** 2, peak_flops
        )
        result["vs_timm_rtx3090"] = result["images_per_s"] / TIMM_RTX3090_AMP_IMAGES_PER_S
        result["meets_target"] = result["images_per_s"] >= TARGET_IMAGES_PER_S
        runs.append(result)
        print(f"{name}: {result['images_per_s']:.1f} images/s, {result['ms_per_step']:.1f} ms/step", flush=True)
    payload["training"] = runs
    best = max(runs, key=lambda r: r["images_per_s"], default=None)

    def measure_loader() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            jpegs = write_jpegs(Path(tmp), args.loader_files, tuple(args.jpeg_size))
            return {**loader_throughput(Path(tmp), args), "jpegs": jpegs}

    loader = attempt("loader", errors, measure_loader)
    if loader is not None:
        loader["training_run"] = best["run"] if best else None
        loader["ratio_to_training"] = loader["images_per_s"] / best["images_per_s"] if best else None
        loader["can_feed"] = loader["ratio_to_training"] >= 1.0 if best else None
        print(f"loader: {loader['images_per_s']:.1f} images/s with {loader['workers']} workers", flush=True)
    payload["loader"] = loader

    n, reason = ddp_plan(args)
    ddp: dict[str, Any] = {"measured": False, "reason": reason}
    if n is not None:
        multi = attempt(f"DDP ({n} devices)", errors, lambda: ddp_run(args, n))
        single = next((r for r in runs if multi and r["run"] == multi["run"]), None)
        if multi is not None and single is None:
            single = attempt("DDP (1 device)", errors, lambda: train_throughput(args, args.ddp_compile))
        if multi is not None and single is not None:
            speedup = multi["images_per_s"] / single["images_per_s"]
            ddp = {"measured": True, "reason": None, "devices": n, "single": single, "multi": multi,
                   "speedup": speedup, "efficiency": speedup / n}  # fmt: skip
            if args.accelerator == "cpu":
                ddp["note"] = "gloo processes sharing the CPU's cores: a check of the DDP path, not a measurement"
        else:
            ddp["reason"] = "failed: see errors"
    payload["ddp"] = ddp
    payload["errors"] = errors
    payload["load_at_end"] = load_note()
    path = write_json("gpu", payload, args.out)
    print_report(args, payload, gpu)
    print(f"\nwrote {path}")
    if errors:
        print(f"{len(errors)} part(s) failed: " + "; ".join(f"{e['part']}: {e['error']}" for e in errors))
        raise SystemExit(1)
    return payload


def attempt(part: str, errors: list[dict[str, str]], measure: Callable[[], Any]) -> Any:
    """``measure()``, or None with the failure printed (traceback) and recorded in ``errors``."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001  (recorded, printed, and the exit status says so)
        traceback.print_exc()
        errors.append({"part": part, "error": f"{type(error).__name__}: {error}"})
        print(f"{part} failed: {type(error).__name__}: {error}", flush=True)
        return None


def print_report(args: argparse.Namespace, payload: dict[str, Any], gpu: str | None) -> None:
    """The tables of the measurements in ``payload``."""
    info, peak, flops = machine(), payload["matmul_peak"], payload["flops_per_image"]
    print(f"\n{args.network} training, {args.image_size} px, batch {args.batch_size}/device, {args.precision}, "
          f"channels-last {args.channels_last}: {gpu or info['cpu']} ({info['date']}); matmul peak "
          f"{peak['tflops']:.1f} TFLOP/s {peak['dtype']}; {flops['counted_forward_backward'] / 1e9:.2f} GFLOP/image "
          f"counted (issue: {ISSUE_FLOPS_PER_IMAGE / 1e9:.1f} G at 224, multiply-adds)")  # fmt: skip
    rows = [[r["run"], r["devices"], r["images_per_s"], r["ms_per_step"], r["first_step_s"], r["compile_s"],
             r["vs_timm_rtx3090"], r["model_tflops"], r["fraction_of_peak"], r["fraction_of_peak_issue_flops"],
             "yes" if r["meets_target"] else "no", r["peak_memory_gib"]] for r in payload["training"]]  # fmt: skip
    headers = ["run", "devices", "images/s", "ms/step", "first step s", "compile s", "x timm 3090", "model TFLOP/s",
               "of peak", "of peak (issue FLOPs)", ">= 3,000", "peak GiB"]  # fmt: skip
    print(markdown_table(headers, rows))
    loader = payload["loader"]
    if loader is not None:
        jpegs = loader["jpegs"]
        print(f"\nLoader (ImageFolderDataModule, {jpegs['width']}x{jpegs['height']} JPEGs of {jpegs['mean_kb']:.0f} "
              f"kB, decode + RandomResizedCrop {args.image_size} + flip), measured alone")  # fmt: skip
        feeds = {True: "yes", False: "NO", None: None}[loader["can_feed"]]
        row = [loader["workers"], loader["images_per_s"], loader["ratio_to_training"], feeds]
        print(markdown_table(["workers", "images/s", f"/ {loader['training_run']} training", "could feed it"], [row]))
    ddp = payload["ddp"]
    if not ddp["measured"]:
        print(f"\nDDP: {ddp['reason']}")
    else:
        note = f": {ddp['note']}" if "note" in ddp else ""
        print(f"\nDDP ({ddp['multi']['run']}, batch {args.batch_size}/device){note}")
        rows = [[1, ddp["single"]["images_per_s"], 1.0, 1.0],
                [ddp["devices"], ddp["multi"]["images_per_s"], ddp["speedup"], ddp["efficiency"]]]  # fmt: skip
        print(markdown_table(["devices", "images/s", "speedup", "efficiency"], rows))


if __name__ == "__main__":
    main()
