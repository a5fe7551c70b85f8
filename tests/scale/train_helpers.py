"""Callbacks the scale tests add to ``train.py`` runs (``PYTHONPATH`` holds this folder in those subprocesses)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class StepThrottle(pl.Callback):
    """Slow training down (``delay`` seconds after every step) and write ``<marker_dir>/step_<n>`` after step
    ``n``, so that a test can kill the run at a known point. Changes no number of the run."""

    def __init__(self, marker_dir: str, delay: float = 0.1) -> None:
        self.marker_dir = Path(marker_dir)
        self.delay = delay

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        (self.marker_dir / f"step_{trainer.global_step}").touch()
        time.sleep(self.delay)
