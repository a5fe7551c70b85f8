"""Shared bits of the benchmarks: data location, machine description, table and JSON output."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from zoo.core.precision import cpu_has_native_bf16, preferred_precision

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def data_dir(explicit: str | None = None) -> str:
    """``--data-dir``, else ``$ZOO_DATA_DIR``, else ``../shared/data`` beside the project."""
    if explicit:
        return explicit
    if os.environ.get("ZOO_DATA_DIR"):
        return os.environ["ZOO_DATA_DIR"]
    shared = ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return str(shared)
    sys.exit("No data: pass --data-dir or set ZOO_DATA_DIR to the folder holding mnist/ (IDX files).")


def cache_dir() -> Path:
    """Where benchmarks write derived data sets (PNG folders, CSVs): ``$ZOO_CACHE_DIR``, else ~/.cache/vision-zoo."""
    return Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "vision-zoo").expanduser()


def load_note() -> dict:
    """The load average, and a note when other processes compete for the cores (recorded with the figures)."""
    load = os.getloadavg()
    busy = load[0] > (os.cpu_count() or 1)
    return {"loadavg_1_5_15": [round(v, 2) for v in load],
            "note": "machine busy: other processes running" if busy else None}  # fmt: skip


def default_precision() -> str:
    """The benchmarks' ``--precision auto``: :func:`zoo.core.precision.preferred_precision` of the accelerator
    Lightning picks (``bf16-mixed`` on a CPU or CUDA GPU that computes bf16 natively, else ``32-true``)."""
    return preferred_precision("auto")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """The training benchmarks' ``--precision`` (default ``auto``, resolved by :func:`default_precision` on parsing)."""
    parser.add_argument(
        "--precision", default="auto", type=lambda p: default_precision() if p == "auto" else p,
        help="Lightning precision; auto: bf16-mixed where the CPU has native bf16 (AVX512-BF16/AMX: nearly halves "
        "a step), else 32-true (emulated bf16 is many times slower)",
    )  # fmt: skip


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_has_native_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
    }


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path


class TimeBudget(pl.Callback):
    """Stops training after ``seconds`` of wall time and, when ``max_lr`` is given, sets every
    optimizer group's learning rate from the elapsed *fraction* of the budget: linear warm-up over
    the first ``warmup`` fraction, then cosine decay to zero at the end. A schedule over time gives
    every model a complete schedule whatever its speed. ``steps`` counts the optimizer steps taken.

    ``clock="cpu"`` counts this process's CPU seconds (``time.process_time``: every thread of the process, not
    its data-loader workers, so use ``num_workers=0`` with it) instead of wall seconds: a budget in CPU minutes
    that other jobs on the machine do not eat into, for routes that share the cores.
    """

    def __init__(
        self, seconds: float, max_lr: float | None = None, warmup: float = 0.15, clock: Literal["wall", "cpu"] = "wall"
    ) -> None:
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
        self.seconds, self.max_lr, self.warmup = seconds, max_lr, warmup
        self.clock = time.process_time if clock == "cpu" else time.perf_counter
        self.start = 0.0
        self.steps = 0

    def elapsed(self) -> float:
        """Seconds of the budget's clock since training started."""
        return self.clock() - self.start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = self.clock()

    def lr_at(self, fraction: float) -> float:
        assert self.max_lr is not None
        if fraction < self.warmup:
            return self.max_lr * max(fraction / self.warmup, 0.04)
        return self.max_lr * 0.5 * (1 + math.cos(math.pi * (fraction - self.warmup) / (1 - self.warmup)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> int | None:  # noqa: ANN001
        fraction = self.elapsed() / self.seconds
        if fraction >= 1:
            trainer.should_stop = True
            return -1  # Lightning: skip the rest of the epoch
        if self.max_lr is not None:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr_at(fraction)
        self.steps += 1
        return None

    def fit(
        self, model: pl.LightningModule, datamodule: pl.LightningDataModule, **trainer_kwargs: Any
    ) -> tuple[pl.Trainer, float]:
        """Train ``model`` until this budget stops it, with a :func:`train_only_trainer` (``trainer_kwargs``: its
        other arguments); returns the trainer and the wall seconds of the fit."""
        trainer = train_only_trainer(callbacks=[self], **trainer_kwargs)
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        return trainer, time.perf_counter() - start


def train_only_trainer(**kwargs: Any) -> pl.Trainer:
    """A Trainer that only trains, as the benchmarks time it: no validation loop or sanity check, no logger,
    checkpoints or model summary. ``kwargs``: the other ``pl.Trainer`` arguments (``callbacks``, ``precision``...)."""
    return pl.Trainer(
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_model_summary=False, **kwargs,
    )  # fmt: skip


def validation_metrics(model: pl.LightningModule, datamodule: pl.LightningDataModule, **trainer_kwargs: Any) -> dict:
    """The metrics of one validation pass, by a fresh quiet Trainer (no logger, checkpoints, model summary or
    progress bar) in float32 whatever the training precision was (for detection: bf16 boxes lose ~0.5 px)."""
    evaluator = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        **trainer_kwargs,
    )  # fmt: skip
    return evaluator.validate(model, datamodule=datamodule, verbose=False)[0]
